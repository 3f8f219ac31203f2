"""The fair test of a controller against the tuned baselines: what runs, on which seeds, and its stored results.

The paper's protocol (Xu et al., 2019, Sec. 4): each schedule trains the child for the full
episode; the checkpoint with the best validation loss is evaluated once on the test set;
schedules are compared over 10 runs with an independent two-sample t-test (Welch's here).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alrs.env import LREnv
from alrs.episodes import run_jobs
from alrs.errors import UserError
from alrs.grid import BASELINE_KEYS, best_keys, best_of_family, schedule_from_record
from alrs.io import load_json, load_torch, save_json
from alrs.parallel import WorkerPool
from alrs.peers import PEER_FAMILIES
from alrs.results import EpisodeResult, ResultStore, check_record, result_key
from alrs.runfolder import checkpoint_file
from alrs.schedules import HandMadeSchedule, Learned, Peer, Schedule, StepDecay
from alrs.stats import result_title


@dataclass
class TestPlan:
    """What test.py runs: schedules by stable key, their labels, and the pairs to compare.

    Keys: ``constant``, ``step-decay``, ``cosine``, ``linear`` and each peer family of
    :data:`~alrs.peers.PEER_FAMILIES` (the grid's tuned schedules and peers),
    ``learned@<lr>`` (the controller started from ``lr``) and ``step-decay@<lr>`` (the grid's
    best step decay among those that start from ``lr``).
    """

    schedules: dict[str, Schedule]
    labels: dict[str, str]
    comparisons: list[tuple[str, str]]
    reference: str = "step-decay"


def describe_schedule(schedule: HandMadeSchedule) -> str:
    """A table label such as ``step decay (lr=0.01 every 10 x0.99)`` or ``cosine (lr=0.01)``."""
    if isinstance(schedule, Peer):
        return schedule.label
    if isinstance(schedule, StepDecay):
        return f"step decay (lr={schedule.initial_lr:g} every {schedule.discount_step} x{schedule.factor:g})"
    return f"{schedule.family} (lr={schedule.initial_lr:g})"


def plan_test(grid: dict[str, Any], learned: Schedule | None = None, start_lrs: Sequence[float] = ()) -> TestPlan:
    """The fair protocol: the grid's tuned schedules of each family; the controller started from each
    of ``start_lrs`` and from the tuned step decay's LR; each start compared with the tuned step
    decay, cosine and linear, each tuned peer, and with the best step decay from the same LR.

    A grid file from before the cosine and linear families has no rows for them (baselines.py adds them).
    """
    results = {k: EpisodeResult(**v) for k, v in grid["results"].items()}
    tuned = {
        family: schedule_from_record(results[grid[best]].schedule)
        for family, best in best_keys().items()
        if best in grid
    }
    order = [f for f in ("constant", "step-decay", "cosine", "linear", *PEER_FAMILIES) if f in tuned]
    schedules: dict[str, Schedule] = {f: tuned[f] for f in order}
    labels = {f: describe_schedule(tuned[f]) for f in order}
    comparisons: list[tuple[str, str]] = []
    if learned is None:
        return TestPlan(schedules, labels, comparisons)
    lrs = sorted({float(x) for x in start_lrs} | {tuned["step-decay"].initial_lr}, reverse=True)
    for lr in lrs:
        key = f"learned@{lr:g}"
        schedules[key] = learned.starting_at(lr)
        labels[key] = f"{learned.name} from lr={lr:g}"
        comparisons += [(key, f) for f in ("step-decay", "cosine", "linear", *PEER_FAMILIES) if f in tuned]
        if not math.isclose(lr, tuned["step-decay"].initial_lr):
            try:
                same = schedule_from_record(results[best_of_family(results, "step-decay", lr)].schedule)
            except ValueError:
                continue  # the grid has no step decay from this LR
            schedules[f"step-decay@{lr:g}"], labels[f"step-decay@{lr:g}"] = (
                same,
                f"{describe_schedule(same)}, best from lr={lr:g}",
            )
            comparisons.append((key, f"step-decay@{lr:g}"))
    return TestPlan(schedules, labels, comparisons)


TEST_SEED_OFFSET = 1000
"""Test seeds are seed + 1000 + i: apart from the seed the baseline grid was chosen on."""


def seeds_for_test(seed: int, num_seeds: int) -> list[int]:
    """The paired seeds every schedule of a test runs on."""
    return [seed + TEST_SEED_OFFSET + i for i in range(num_seeds)]


def check_test_seeds(seeds: Sequence[int], grid_seed: int, selection_seeds: Sequence[int] = ()) -> None:
    """Refuse a test on a seed that something under test was chosen on: the baseline grid's seed, or
    the seeds of the evaluations that chose the controller's checkpoint (``selection_seeds``)."""
    chosen_on = {int(s): "an evaluation seed the controller was chosen on" for s in selection_seeds}
    chosen_on[int(grid_seed)] = "the seed the baseline grid was chosen on"
    clash = sorted(set(seeds) & chosen_on.keys())
    if clash:
        raise UserError(
            f"test seed {clash[0]} is {chosen_on[clash[0]]}; pick another --seed "
            f"(the test runs on seed + {TEST_SEED_OFFSET} + i)"
        )


def load_learned(
    run_dir: str | Path, checkpoint: str, env: LREnv, policy: str = "mode"
) -> tuple[Learned, bool, Path, str]:
    """The controller of a run as a schedule acting by ``policy`` (see :class:`~alrs.schedules.Learned`),
    checked against ``env``.

    Returns the schedule, whether it is tested on another dataset or child than it was trained on
    (a transfer; its name says so), its file, and the file's hash (part of a test's settings, so
    results of another controller are never reused).
    """
    path = checkpoint_file(run_dir, checkpoint)
    saved = load_torch(path)
    if checkpoint == "last":  # a training checkpoint: the controller is one of its parts
        saved = saved.get("controller") if isinstance(saved, dict) else None
    try:
        learned = Learned(saved, policy=policy)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from exc
    trained_on = learned.metadata.get("env", {})
    config = env.config
    transfer = (trained_on.get("dataset"), trained_on.get("architecture")) != (config.dataset, config.architecture)
    if transfer:
        learned.name = f"learned (transfer from {trained_on.get('dataset')}/{trained_on.get('architecture')})"
    if policy == "sample":
        learned.name += " (sampled actions)"
    learned.check(env)
    return learned, transfer, path, hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def reuse_results(store: ResultStore, source: Path, keys: Sequence[str]) -> list[str]:
    """Copy into ``store`` the results of ``keys`` that it lacks and that the result store ``source`` holds;
    return the keys copied. Both must be made with the same :data:`~alrs.grid.BASELINE_KEYS` settings.

    A hand-made schedule's run depends on those settings and its seed alone, not on the controller's, so
    a second test of a controller takes the baselines' runs from an earlier test instead of repeating them.
    """
    if not source.exists() or source.resolve() == store.path.resolve():
        return []
    data = load_json(source)
    theirs, results = data.get("settings", {}), data.get("results", {})
    if differ := [k for k in BASELINE_KEYS if theirs.get(k) != store.settings.get(k)]:
        raise UserError(f"{source} was made with other child settings ({', '.join(differ)}); name a test of this child")
    copied = [key for key in keys if key not in store and key in results]
    for key in copied:
        check_record(results[key], f"{source}: result {key!r}")
        store.data["results"][key] = results[key]
    if copied:
        save_json(store.data, store.path)
    return copied


def plan_jobs(plan: TestPlan, seeds: Sequence[int]) -> list[tuple[str, Schedule, int]]:
    """The runs of a test as ``(key, schedule, seed)``: every schedule of ``plan`` on every seed.

    Keys are the schedules' labels, as before stable keys existed, so earlier stores stay reusable.
    """
    return [
        (result_key(plan.labels[key], seed), schedule, seed)
        for seed in seeds
        for key, schedule in plan.schedules.items()
    ]


def run_test(
    env: LREnv,
    plan: TestPlan,
    seeds: Sequence[int],
    store: ResultStore,
    progress: bool = True,
    pool: WorkerPool | None = None,
) -> dict[str, list[EpisodeResult]]:
    """Every schedule of ``plan`` on every seed (those not yet in ``store``); each schedule's results in
    seed order."""
    results = run_jobs(env, plan_jobs(plan, seeds), store, progress=progress, desc="test", pool=pool)
    return {key: [results[result_key(plan.labels[key], seed)] for seed in seeds] for key in plan.schedules}


def stored_curves(folder: str | Path) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """A finished test's curves and title, read back from its ``summary.json``.

    Args:
        folder: the test's result folder (``results/<dataset>_<child>/<name>``).

    Returns:
        Schedule label -> one curves mapping per test seed, in the table's order; and the title.
    """
    path = Path(folder) / "summary.json"
    if not path.is_file():
        raise UserError(f"{folder}: no summary.json there; name a test's folder, results/<dataset>_<child>/<name>")
    store = ResultStore(path)
    settings, summary = store.settings, store.data.get("summary")
    if (
        not isinstance(settings, dict)
        or not isinstance(summary, dict)
        or not isinstance(summary.get("schedules"), dict)
    ):
        raise UserError(f"{path}: not a finished test (no summary); rerun the test's command to finish it")
    seeds = settings.get("seeds", [])
    labels = [entry["label"] for entry in summary["schedules"].values()]
    keys = {label: [result_key(label, seed) for seed in seeds] for label in labels}
    if missing := [key for label in labels for key in keys[label] if key not in store]:
        raise UserError(f"{path}: no stored run {missing[0]!r}; rerun the test's command to finish it")
    runs = {label: [store[key].curves for key in keys[label]] for label in labels}
    name, transfer = Path(folder).name, bool(store.data.get("transfer"))
    title = result_title(settings["dataset"], settings["architecture"], name, len(seeds), transfer)
    return runs, title


__all__ = [
    "TEST_SEED_OFFSET",
    "TestPlan",
    "check_test_seeds",
    "describe_schedule",
    "load_learned",
    "plan_jobs",
    "plan_test",
    "reuse_results",
    "run_test",
    "seeds_for_test",
    "stored_curves",
]
