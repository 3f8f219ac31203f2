"""A held-out suite: how a controller does on tasks it never saw, against what a user would type (ours).

For every held-out task of an instance set (:mod:`alrs.tasks`) and every test seed, the suite runs:

- the controller, from the task's initial LR;
- untuned defaults a user would type: Adam at 1e-3, constant and cosine to 0; Adam at the task's own
  LR with a linear decay to 0 (the untuned base of a residual controller); Schedule-Free AdamW and
  Prodigy at their packages' defaults (lr 0.0025 without warm-up; lr 1, d_coef 1), and Prodigy with a
  linear decay to 0;
- per-task tuned Adam schedules, each the best of a small grid on the grid seed by final validation
  loss (the baselines' rule): linear decay to 0 from {0.1, 0.03, 0.01, 0.003, 0.001, 0.0001}, and step
  decay from {0.03, 0.01, 0.003, 0.001} by x0.9 or x0.99 every controller step.

Every run is kept in one result store per suite, keyed by task, schedule and seed, so an interrupted
suite resumes, and a second controller reuses the baselines' runs. The report: one row per task
(each schedule's mean test loss, the controller's rank), the controller's win rate against each
comparator over tasks with a two-sided sign test, its median test loss relative to the tuned linear, and
its speed-up over the tuned linear (:func:`speedup`: the steps each needs to reach the validation loss both
reach; VeLO and Celo report speed-ups so).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from alrs.config import EnvConfig
from alrs.episodes import run_jobs
from alrs.errors import UserError
from alrs.grid import best_of_family, schedule_from_record
from alrs.parallel import WorkerPool
from alrs.peers import prodigy, schedule_free
from alrs.protocol import seeds_for_test
from alrs.results import EpisodeResult, ResultStore
from alrs.schedules import (
    Constant,
    Cosine,
    HandMadeSchedule,
    Learned,
    Linear,
    Schedule,
    StepDecay,
)
from alrs.tasks import InstanceSet, Task

SUITE_SEEDS = 5
"""Test seeds per task (seed + 1000 + i, as test.py's)."""

LINEAR_LRS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4)
STEP_DECAY_LRS, STEP_DECAY_FACTORS = (3e-2, 1e-2, 3e-3, 1e-3), (0.9, 0.99)

DEFAULTS = (
    "adam 1e-3",
    "adam 1e-3 cosine",
    "adam task lr linear",
    "schedule-free adamw default",
    "prodigy default",
    "prodigy linear",
)
TUNED = ("linear, tuned", "step decay, tuned")


def default_schedules(task: Task) -> dict[str, HandMadeSchedule]:
    """The untuned defaults a user would type, by label."""
    return {
        "adam 1e-3": Constant(1e-3),
        "adam 1e-3 cosine": Cosine(1e-3, task.num_train_steps),
        "adam task lr linear": Linear(task.initial_lr, task.num_train_steps),
        "schedule-free adamw default": schedule_free(0.0025, 0),
        "prodigy default": prodigy(1.0, "constant", task.num_train_steps),
        "prodigy linear": prodigy(1.0, "linear", task.num_train_steps),
    }


def task_grid(task: Task, update_freq: int) -> list[HandMadeSchedule]:
    """The small per-task grid the tuned linear and step decay are chosen from."""
    linear = [Linear(lr, task.num_train_steps) for lr in LINEAR_LRS]
    steps = [StepDecay(lr, update_freq, f) for lr in STEP_DECAY_LRS for f in STEP_DECAY_FACTORS]
    return [*linear, *steps]


def suite_key(task: Task, label: str, seed: int) -> str:
    """A suite run's key in the store."""
    return f"{task.name} | {label} | seed {seed}"


def run_suite(
    instance_set: InstanceSet,
    base: EnvConfig,
    learned: Learned | None,
    store: ResultStore,
    pool: WorkerPool,
    seed: int = 0,
    num_seeds: int = SUITE_SEEDS,
    progress: bool = True,
) -> dict[str, dict[str, list[EpisodeResult]]]:
    """Every held-out task's grid (on ``seed``) and schedules (on the test seeds); returns, per task name,
    each schedule label's results in seed order."""
    seeds = seeds_for_test(seed, num_seeds)
    tasks = instance_set.heldout
    grid_size = len(task_grid(tasks[0], 1)) if tasks else 0
    per_task = grid_size + num_seeds * (len(DEFAULTS) + len(TUNED) + (learned is not None))
    out: dict[str, dict[str, list[EpisodeResult]]] = {}
    with tqdm(total=len(tasks) * per_task, desc="suite", unit="run", disable=not progress, dynamic_ncols=True) as bar:
        for task in tasks:
            config = task.env_config(base, instance_set.decisions)
            grid = task_grid(task, config.update_freq)
            grid_jobs = [(suite_key(task, s.name, seed), s, seed) for s in grid]
            done = run_jobs(config, grid_jobs, store, test=False, pool=pool, bar=bar)
            grid_results = {s.name: done[suite_key(task, s.name, seed)] for s in grid}
            tuned = {
                "linear, tuned": schedule_from_record(grid_results[best_of_family(grid_results, "linear")].schedule),
                "step decay, tuned": schedule_from_record(
                    grid_results[best_of_family(grid_results, "step-decay")].schedule
                ),
            }
            schedules: dict[str, Schedule] = {**default_schedules(task), **tuned}
            if learned is not None:
                schedules[learned.name] = learned.starting_at(task.initial_lr)
            jobs = [(suite_key(task, label, s), sch, s) for label, sch in schedules.items() for s in seeds]
            done = run_jobs(config, jobs, store, pool=pool, bar=bar)
            out[task.name] = {label: [done[suite_key(task, label, s)] for s in seeds] for label in schedules}
    return out


def sign_test(wins: int, losses: int) -> float:
    """Two-sided p-value of the sign test (ties dropped); NaN with no decided pair."""
    n = wins + losses
    return float(stats.binomtest(wins, n, 0.5).pvalue) if n else math.nan


def steps_to_reach(result: EpisodeResult, loss: float) -> float:
    """The first optimizer step of ``result``'s recorded validation curve at or below ``loss`` (inf: never)."""
    curves = result.curves
    return next((s for s, v in zip(curves["step"], curves["val_loss"], strict=False) if v <= loss), math.inf)


def speedup(run: EpisodeResult, reference: EpisodeResult) -> float:
    """How many times fewer optimizer steps ``run`` needs than ``reference`` (the same task and seed) to reach the
    validation loss both reach, the worse of their two best: above 1 ``run`` gets there sooner.

    Both runs are the task's full horizon; a step count is at least one controller step (the curves' spacing),
    so two runs that start at or below that loss tie. NaN where either has no finite best or no curves.
    """
    level = max(run.best_val_loss, reference.best_val_loss)
    if not math.isfinite(level) or not all("val_loss" in r.curves for r in (run, reference)):
        return math.nan
    floor = run.curves["step"][1] if len(run.curves["step"]) > 1 else 1
    return max(steps_to_reach(reference, level), floor) / max(steps_to_reach(run, level), floor)


def summarize_suite(results: dict[str, dict[str, list[EpisodeResult]]], controller: str | None) -> dict[str, Any]:
    """Per task, each schedule's mean test loss (best-validation checkpoint) and the controller's rank; and,
    over tasks, the controller's wins and losses against each comparator with the sign test, and its test
    loss relative to the tuned linear and :func:`speedup` over it (median and per task)."""
    rows: dict[str, Any] = {}
    for task, by_label in results.items():
        # A diverged run (no test loss) counts as an infinite loss: a schedule that diverges never wins.
        means = {
            label: float(np.mean([r.test_loss_best if math.isfinite(r.test_loss_best) else math.inf for r in runs]))
            for label, runs in by_label.items()
        }
        row: dict[str, Any] = {"test_loss": means}
        if controller is not None:
            order = sorted(means, key=means.get)
            row["controller_rank"] = order.index(controller) + 1
            row["relative_to_linear"] = means[controller] / means["linear, tuned"] - 1
            # paired by seed; the geometric mean over seeds, as speed-ups multiply
            ratios = [speedup(c, t) for c, t in zip(by_label[controller], by_label["linear, tuned"], strict=True)]
            finite = [r for r in ratios if math.isfinite(r)]
            row["speedup_vs_linear"] = float(np.exp(np.mean(np.log(finite)))) if finite else math.nan
        row["diverged"] = {label: sum(r.diverged for r in runs) for label, runs in by_label.items()}
        rows[task] = row
    summary: dict[str, Any] = {"tasks": rows}
    if controller is None or not rows:
        return summary
    comparators = [label for label in next(iter(rows.values()))["test_loss"] if label != controller]
    against = {}
    for label in comparators:
        diffs = [row["test_loss"][controller] - row["test_loss"][label] for row in rows.values()]
        wins, losses = sum(d < 0 for d in diffs), sum(d > 0 for d in diffs)
        against[label] = {
            "wins": wins,
            "losses": losses,
            "win_rate": wins / len(diffs),
            "sign_p": sign_test(wins, losses),
        }
    relative = [row["relative_to_linear"] for row in rows.values()]
    speedups = [row["speedup_vs_linear"] for row in rows.values() if math.isfinite(row["speedup_vs_linear"])]
    summary.update(
        controller=controller,
        against=against,
        median_relative_to_linear=float(np.median(relative)),
        median_speedup_vs_linear=float(np.median(speedups)) if speedups else math.nan,
        mean_rank=float(np.mean([row["controller_rank"] for row in rows.values()])),
    )
    return summary


def format_suite(summary: dict[str, Any], title: str) -> str:
    """The suite's tables in Markdown: one row per task, then the controller against each comparator."""
    rows = summary["tasks"]
    labels = list(next(iter(rows.values()))["test_loss"]) if rows else []
    controller = summary.get("controller")
    lines = [f"### {title}", "", "Test loss of the best-validation checkpoint, mean over the test seeds.", ""]
    head = "| task | " + " | ".join(labels) + (" | controller's rank | speed-up |" if controller else " |")
    lines += [head, "|" + "---|" * (len(labels) + 1 + 2 * bool(controller))]
    for task, row in rows.items():
        best = min(row["test_loss"].values())
        cells = [
            f"**{row['test_loss'][label]:.4f}**"
            if row["test_loss"][label] == best
            else f"{row['test_loss'][label]:.4f}"
            for label in labels
        ]
        rank = f" | {row['controller_rank']} of {len(labels)} | x{row['speedup_vs_linear']:.2f}" if controller else ""
        lines.append(f"| {task} | " + " | ".join(cells) + rank + " |")
    if controller:
        lines += [
            "",
            f"**{controller}** against each comparator over {len(rows)} tasks (a win: a lower mean test loss):",
            "",
            "| comparator | wins | losses | win rate | sign test p |",
            "|---|---|---|---|---|",
        ]
        for label, a in summary["against"].items():
            lines.append(f"| {label} | {a['wins']} | {a['losses']} | {a['win_rate']:.0%} | {a['sign_p']:.3g} |")
        lines += [
            "",
            f"Median test loss relative to the tuned linear: {summary['median_relative_to_linear']:+.2%}; "
            f"mean rank {summary['mean_rank']:.2f} of {len(labels)}.",
        ]
        faster = sum(row["speedup_vs_linear"] > 1 for row in rows.values())
        lines += [
            "",
            f"Speed-up over the tuned linear (the steps each needs to reach the validation loss both reach, "
            f"geometric mean over seeds): median x{summary['median_speedup_vs_linear']:.2f}; faster on {faster} "
            f"of {len(rows)} tasks.",
        ]
    return "\n".join(lines) + "\n"


def suite_settings(instance_set: InstanceSet, seed: int, num_seeds: int) -> dict[str, Any]:
    """What decides a suite's hand-made runs: the held-out tasks, the decisions, the seeds."""
    return {
        "heldout": [asdict(t) for t in instance_set.heldout],
        "decisions": instance_set.decisions,
        "grid_seed": seed,
        "seeds": seeds_for_test(seed, num_seeds),
    }


def suite_folder(results_dir: str | Path, instance_set_path: str | Path) -> Path:
    """``<results>/suites/<instance set's file name>``; a name that is no folder name of its own is refused."""
    name = Path(instance_set_path).stem
    if name in ("", ".", "..") or "\x00" in name:
        raise UserError(f"--suite {instance_set_path!r}: name an instance-set file (its name names the result folder)")
    return Path(results_dir) / "suites" / name


__all__ = [
    "DEFAULTS",
    "SUITE_SEEDS",
    "TUNED",
    "default_schedules",
    "format_suite",
    "run_suite",
    "sign_test",
    "suite_folder",
    "suite_key",
    "suite_settings",
    "summarize_suite",
    "task_grid",
]
