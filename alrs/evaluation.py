"""Running schedules on the LR environment: episodes, the baseline grid, paired comparisons, tables.

The paper's protocol (Xu et al., 2019, Sec. 4): each schedule trains the child for the full
episode; the checkpoint with the best validation loss is evaluated once on the test set;
schedules are compared over 10 runs with an independent two-sample t-test (Welch's here).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from alrs.env import EnvConfig, LREnv, episode_curves
from alrs.errors import UserError
from alrs.io import FolderLock, load_json, load_torch, save_json
from alrs.optim import OPTIMIZER_FIELDS
from alrs.parallel import WorkerPool
from alrs.runfolder import checkpoint_file
from alrs.schedules import (
    Constant,
    Cosine,
    HandMadeSchedule,
    Learned,
    Linear,
    Peer,
    Schedule,
    StepDecay,
    annealing_grid,
    paper_grid,
    peer_from_record,
    peer_grid,
)


@dataclass
class EpisodeResult:
    """One child training under one schedule and seed."""

    schedule: dict[str, Any]
    seed: int
    final_val_loss: float
    best_val_loss: float
    best_step: int
    diverged: bool
    test_loss_best: float
    test_acc_best: float
    test_loss_final: float
    test_acc_final: float
    curves: dict[str, list[float]] = field(default_factory=dict)


def run_episode(env: LREnv, schedule: Schedule, seed: int, test: bool = True) -> EpisodeResult:
    """Train one child under ``schedule`` from the env's reset with ``seed``; optionally test it.

    The seed alone fixes the child's initialization and batch order, so runs of different
    schedules on one seed are paired.
    """
    schedule.check(env)
    obs, info = env.reset(seed=seed, options=schedule.reset_options())
    schedule.start(seed)
    infos = [info]
    terminated = truncated = False
    while not (terminated or truncated):
        obs, _, terminated, truncated, info = schedule.step(env, obs, info)
        infos.append(info)
    curves = episode_curves(infos)
    test_best = env.evaluate_test("best") if test else (math.nan, math.nan)
    test_final = env.evaluate_test("current") if test and not info["diverged"] else (math.nan, math.nan)
    return EpisodeResult(
        schedule.describe(),
        seed,
        info["val_loss"],
        env.best_val_loss,
        env.best_step,
        info["diverged"],
        *test_best,
        *test_final,
        curves,
    )


_FLOAT_FIELDS = {f.name for f in fields(EpisodeResult) if f.type == "float"}


def _check_record(record: Any, where: str) -> None:
    """A one-line error unless ``record`` is a stored :class:`EpisodeResult` (every field, each of its type)."""
    if not isinstance(record, dict):
        raise UserError(f"{where} is not an object; the file is damaged: delete it (or the entry) and rerun")
    for f in fields(EpisodeResult):
        value = record.get(f.name)
        ok = {
            "float": value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
        }.get(str(f.type), isinstance(value, dict))
        if f.name not in record or not ok:
            raise UserError(
                f"{where}: {f.name} = {value!r} is missing or of the wrong type; the file is damaged: "
                "delete it (or the entry) and rerun"
            )


class ResultStore:
    """Episode results kept in a JSON file as they finish, so an interrupted evaluation resumes.

    The file also records the env settings; reusing it with other settings is refused. With
    ``settings=None`` an existing file is read as it is, with the settings it records.
    """

    def __init__(self, path: str | Path, settings: dict[str, Any] | None = None):
        self.path, self.settings = Path(path), settings if settings is not None else {}
        self.data: dict[str, Any] = {"settings": self.settings, "results": {}}
        if self.path.exists():
            data = load_json(self.path)
            if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
                raise UserError(
                    f'{self.path}: not a result store of alrs (no "results" object); delete it or write elsewhere'
                )
            for key, record in data["results"].items():
                _check_record(record, f"{self.path}: result {key!r}")
            if settings is None:
                self.settings = data.get("settings", {})
            elif data.get("settings") != settings:
                diff = sorted(
                    k
                    for k in set(settings) | set(data.get("settings", {}))
                    if settings.get(k) != data.get("settings", {}).get(k)
                )
                raise UserError(
                    f"{self.path} was made with other settings ({', '.join(diff)}); delete it or write elsewhere"
                )
            self.data = data

    def __contains__(self, key: str) -> bool:
        return key in self.data["results"]

    def __getitem__(self, key: str) -> EpisodeResult:
        record = self.data["results"][key]
        # Strict JSON stores an undefined figure (a diverged child's test loss) as null.
        return EpisodeResult(**{k: math.nan if v is None and k in _FLOAT_FIELDS else v for k, v in record.items()})

    def add(self, key: str, result: EpisodeResult, **extra: Any) -> None:
        self.data["results"][key] = asdict(result)
        self.data.update(extra)
        save_json(self.data, self.path)

    def update(self, **extra: Any) -> None:
        self.data.update(extra)
        save_json(self.data, self.path)


def run_jobs(
    env: LREnv,
    jobs: Sequence[tuple[str, Schedule, int]],
    store: ResultStore,
    test: bool = True,
    progress: bool = True,
    desc: str = "",
    pool: WorkerPool | None = None,
) -> dict[str, EpisodeResult]:
    """Run each ``(key, schedule, seed)`` not yet in ``store``, saving each as it finishes; return all results.

    Without ``pool`` the jobs run one by one on ``env``; with one, on its workers (envs of ``env.config``),
    in any order: the store is written by this process alone, so an interruption keeps every finished job.
    """
    todo = [job for job in jobs if job[0] not in store]
    args = [(schedule, seed, test) for _, schedule, seed in todo]
    finished = (
        pool.run(run_episode, env.config, args) if pool else ((i, run_episode(env, *a)) for i, a in enumerate(args))
    )
    with tqdm(
        total=len(jobs), initial=len(jobs) - len(todo), desc=desc, unit="run", disable=not progress, dynamic_ncols=True
    ) as bar:
        for i, result in finished:
            key, schedule, _ = todo[i]
            store.add(key, result)
            bar.set_postfix_str(schedule.name, refresh=False)
            bar.update()
    return {key: store[key] for key, _, _ in jobs}


BASELINE_KEYS = ("dataset", "architecture", "batch_size", "update_freq", "num_train_steps", "val_size")
"""The env settings that decide a hand-made schedule's results (the rest concern the controller)."""


LATER_SETTINGS = ("reward", "lr_feature", "time_feature", "feature_scale", "instance_set", *OPTIMIZER_FIELDS)
"""EnvConfig fields added after the first committed results."""


def evaluation_settings(config: EnvConfig, keys: Sequence[str] | None = None) -> dict[str, Any]:
    """The env settings that decide a result: ``keys``, or all but where the data are and what ran it."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("data_dir", "device", "eval_batch_size")}
    # Settings added after results were first stored are recorded only where they differ from their
    # default, so that stored results of the default stay valid.
    for key in LATER_SETTINGS:
        if settings[key] == getattr(EnvConfig, key):
            del settings[key]
    return settings if keys is None else {k: settings[k] for k in keys}


def baseline_file(results_dir: str | Path, config: EnvConfig) -> Path:
    """``<results>/baselines/<dataset>_<architecture>.json``; settings other than the paper's
    (batch 1000, 1000 steps, K = 10, full validation) are added to the name, e.g. ``_steps200_val2000``."""
    tag = ""
    for key, short, paper in (
        ("batch_size", "bs", 1000),
        ("num_train_steps", "steps", 1000),
        ("update_freq", "k", 10),
        ("val_size", "val", None),
    ):
        if getattr(config, key) != paper:
            tag += f"_{short}{getattr(config, key)}"
    return Path(results_dir) / "baselines" / f"{config.dataset}_{config.architecture}{tag}.json"


DECAYS_TO_ZERO = {kind.family: kind for kind in (Cosine, Linear)}

BEST_KEYS = {
    "step-decay": "best_step_decay",
    "constant": "best_constant",
    "cosine": "best_cosine",
    "linear": "best_linear",
    "schedule-free": "best_schedule_free",
    "prodigy": "best_prodigy",
    "adam-ema": "best_adam_ema",
}
"""Where a grid file names the best point of each family (the last three: the peers)."""

PEER_FAMILIES = ("schedule-free", "prodigy", "adam-ema")


def grid_schedules(config: EnvConfig) -> list[HandMadeSchedule]:
    """The baseline grid: the paper's 48 step decays, a constant at each of their initial LRs, and
    (ours) cosine and linear decays to 0 from each of six initial LRs, and the peers' grids."""
    grid = paper_grid()
    constants = [Constant(lr) for lr in sorted({s.initial_lr for s in grid}, reverse=True)]
    return [*grid, *constants, *annealing_grid(config.num_train_steps), *peer_grid(config.num_train_steps)]


GRID_NOTE = "test figures are null: the grid ranks schedules by validation loss and never touches the test set"


def baseline_grid_search(
    env: LREnv, seed: int, path: str | Path, progress: bool = True, pool: WorkerPool | None = None
) -> dict[str, Any]:
    """The paper's 48 step-decay points, a constant schedule at each of their initial LRs, and
    (ours) cosine and linear decay to 0 from each of six initial LRs; one seed each.

    Picks the best point of each family by final validation loss (as the seed does), records each
    point's best validation loss too, and keeps everything in ``path`` (resumable: a grid file
    from before the cosine, linear or peer families gains their points on the next run). With ``pool``
    the points run on its workers.
    """
    path = Path(path)
    with FolderLock(path.with_name(f".{path.name}.lock"), f"grid file {path}"):  # one writer at a time
        store = ResultStore(path, {**evaluation_settings(env.config, BASELINE_KEYS), "seed": seed})
        jobs = [(s.name, s, seed) for s in grid_schedules(env.config)]
        results = run_jobs(env, jobs, store, test=False, progress=progress, desc="grid", pool=pool)
        families = {schedule_from_record(r.schedule).family for r in results.values()}
        best = {BEST_KEYS[family]: best_of_family(results, family) for family in BEST_KEYS if family in families}
        store.update(**best, note=GRID_NOTE)
        return store.data


def best_of_family(results: dict[str, EpisodeResult], family: str, initial_lr: float | None = None) -> str:
    """Key of the grid point of ``family`` (optionally starting at ``initial_lr``) with the lowest final
    validation loss."""
    keys = [
        k
        for k, r in results.items()
        if schedule_from_record(r.schedule).family == family
        and (initial_lr is None or math.isclose(r.schedule["initial_lr"], initial_lr))
    ]
    if not keys:
        raise UserError(
            f"the grid has no {family} schedule" + (f" from lr={initial_lr:g}" if initial_lr is not None else "")
        )
    return min(keys, key=lambda k: _finite(results[k].final_val_loss))


def schedule_from_record(record: dict[str, Any]) -> HandMadeSchedule:
    """Rebuild a hand-made schedule from its ``describe()`` record (records from before ``family``
    existed are step decays or constants)."""
    family = record.get("family") or ("step-decay" if "discount_step" in record else "constant")
    if family in PEER_FAMILIES:
        return peer_from_record(record)
    if family == "step-decay":
        return StepDecay(record["initial_lr"], record["discount_step"], record["factor"])
    if family in DECAYS_TO_ZERO:
        return DECAYS_TO_ZERO[family](record["initial_lr"], record["total_steps"])
    return Constant(record["initial_lr"])


def _finite(x: float) -> float:
    return x if math.isfinite(x) else math.inf


METRICS = (
    ("test_loss_best", "test loss"),
    ("test_acc_best", "test acc"),
    ("test_loss_final", "final-net test loss"),
    ("test_acc_final", "final-net test acc"),
)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's two-sample t-test (NaN when either side has < 2 finite values)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return math.nan  # undefined: too few values, or no spread at all
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample std (ddof=1) of the finite values; NaN where they are too few, with a note saying so
    (result files store it as null)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    out: dict[str, Any] = {
        "mean": float(v.mean()) if len(v) else math.nan,
        "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
    }
    if len(v) < 2:
        out["note"] = f"{len(v)} finite value(s) of {len(values)}: " + ("no std" if len(v) else "no mean and no std")
    return out


def paired_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test on seed-matched values (NaN when undefined)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    diff = a[ok] - b[ok]
    if len(diff) < 2 or np.ptp(diff) == 0:
        return math.nan
    return float(stats.ttest_rel(a[ok], b[ok]).pvalue)


def summarize(
    results: dict[str, list[EpisodeResult]], labels: dict[str, str], comparisons: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """Mean and std (ddof=1) of every metric per schedule, and for each ``(schedule, reference)``
    pair the mean paired difference, Welch's p and the paired t-test's p.

    Args:
        results: schedule key -> its results, in the same seed order for every schedule.
        labels: schedule key -> display label.
        comparisons: pairs of schedule keys to test.
    """
    table: dict[str, Any] = {"schedules": {}, "comparisons": []}
    for key, runs in results.items():
        table["schedules"][key] = {
            "label": labels[key],
            **{m: _mean_std([getattr(r, m) for r in runs]) for m, _ in METRICS},
            "diverged": sum(r.diverged for r in runs),
        }
    for key, ref in comparisons:
        a = {m: [getattr(r, m) for r in results[key]] for m, _ in METRICS}
        b = {m: [getattr(r, m) for r in results[ref]] for m, _ in METRICS}
        table["comparisons"].append(
            {
                "schedule": key,
                "reference": ref,
                "mean_diff": {m: _mean_std(np.subtract(a[m], b[m]))["mean"] for m, _ in METRICS},
                "welch_p": {m: welch_p(a[m], b[m]) for m, _ in METRICS},
                "paired_p": {m: paired_p(a[m], b[m]) for m, _ in METRICS},
            }
        )
        if any(math.isnan(table["comparisons"][-1]["welch_p"][m]) for m, _ in METRICS):
            table["comparisons"][-1]["note"] = (
                "a null p-value: fewer than 2 finite values on a side, or no spread at all"
            )
    return table


def result_title(dataset: str, architecture: str, name: str, num_seeds: int, transfer: bool = False) -> str:
    """The title of a test's table and figure, e.g. ``fa-mnist / cnn: <run>, 10 seeds``."""
    return f"{dataset} / {architecture}: {name}, {num_seeds} seeds" + " (transfer)" * transfer


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
    # Summaries stored before the fair protocol key schedules by label and have no "label" field.
    labels = [entry.get("label", key) for key, entry in summary["schedules"].items()]
    keys = {label: [result_key(label, seed) for seed in seeds] for label in labels}
    if missing := [key for label in labels for key in keys[label] if key not in store]:
        raise UserError(f"{path}: no stored run {missing[0]!r}; rerun the test's command to finish it")
    runs = {label: [store[key].curves for key in keys[label]] for label in labels}
    name, transfer = Path(folder).name, bool(store.data.get("transfer"))
    title = result_title(settings["dataset"], settings["architecture"], name, len(seeds), transfer)
    return runs, title


def format_table(summary: dict[str, Any], reference: str | None = None, title: str = "") -> str:
    """Markdown in the style of the paper's Table 1, mean (std) over seeds, then the comparisons.

    ``*`` marks a schedule whose Welch p-value against ``reference`` (a schedule key) is below 0.05.
    """
    welch = {c["schedule"]: c["welch_p"] for c in summary["comparisons"] if c["reference"] == reference}
    header = "| schedule | " + " | ".join(label for _, label in METRICS) + " | diverged |"
    lines = [f"### {title}" if title else "", "", header, "|" + "---|" * (len(METRICS) + 2)]
    for key, row in summary["schedules"].items():
        cells = []
        for metric, _ in METRICS:
            star = "*" if key in welch and welch[key][metric] < 0.05 else ""
            cells.append(f"{row[metric]['mean']:.4f}{star} ({row[metric]['std']:.4f})")
        lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | {row['diverged']} |")
    lines += [
        "",
        "Test figures of the best-validation checkpoint (the paper's protocol) and of the final network; "
        "mean (std) over seeds.",
    ]
    if summary["comparisons"]:
        label = {key: row["label"] for key, row in summary["schedules"].items()}
        ref_label = f" against {label[reference]}" if reference in label else ""
        lines += [
            f"`*`: Welch's t-test{ref_label}, p < 0.05.",
            "",
            "| schedule | against | test loss difference (paired mean) | Welch p | paired t-test p |",
            "|---|---|---|---|---|",
        ]
        for c in summary["comparisons"]:
            m = "test_loss_best"
            lines.append(
                f"| {label[c['schedule']]} | {label[c['reference']]} | {c['mean_diff'][m]:+.4f} | "
                f"{c['welch_p'][m]:.3g} | {c['paired_p'][m]:.3g} |"
            )
        lines += ["", "A negative difference: the schedule's test loss is lower than the reference's (better)."]
    return "\n".join(lines).strip() + "\n"


@dataclass
class TestPlan:
    """What test.py runs: schedules by stable key, their labels, and the pairs to compare.

    Keys: ``constant``, ``step-decay``, ``cosine``, ``linear``, ``schedule-free``, ``prodigy``,
    ``adam-ema`` (the grid's tuned schedules and peers),
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
        family: schedule_from_record(results[grid[best]].schedule) for family, best in BEST_KEYS.items() if best in grid
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
    learned = Learned(saved, policy=policy)
    trained_on = learned.metadata.get("env", {})
    config = env.config
    transfer = (trained_on.get("dataset"), trained_on.get("architecture")) != (config.dataset, config.architecture)
    if transfer:
        learned.name = f"learned (transfer from {trained_on.get('dataset')}/{trained_on.get('architecture')})"
    if policy == "sample":
        learned.name += " (sampled actions)"
    learned.check(env)
    return learned, transfer, path, hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load_grid(path: Path, config: EnvConfig) -> dict[str, Any]:
    """A finished grid file made with ``config``'s settings; a one-line error otherwise."""
    grid = load_json(path)
    expected = evaluation_settings(config, BASELINE_KEYS)
    settings = grid.get("settings") if isinstance(grid, dict) else None
    if (
        not isinstance(settings, dict)
        or not isinstance(settings.get("seed"), int)
        or not isinstance(grid.get("results"), dict)
    ):
        raise UserError(f"{path}: not a grid file of baselines.py; delete it and rerun baselines.py")
    if {k: settings.get(k) for k in BASELINE_KEYS} != expected or "best_step_decay" not in grid:
        raise UserError(
            f"{path} is unfinished or was made with other settings; rerun baselines.py with this test's settings"
        )
    for key, record in grid["results"].items():
        _check_record(record, f"{path}: result {key!r}")
    return grid


def missing_grid_error(path: Path, config: EnvConfig, seed: int) -> UserError:
    """The error for a test whose grid file does not exist, with the command that makes it."""
    flags = " ".join(
        f"--{k.replace('_', '-')} {getattr(config, k)}" for k in BASELINE_KEYS if getattr(config, k) is not None
    )
    return UserError(
        f"no baseline results at {path}; run: python baselines.py {flags} --seed {seed} (or add --run-baselines)"
    )


def reuse_results(store: ResultStore, source: Path, keys: Sequence[str]) -> list[str]:
    """Copy into ``store`` the results of ``keys`` that it lacks and that the result store ``source`` holds;
    return the keys copied. Both must be made with the same :data:`BASELINE_KEYS` settings.

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
        _check_record(results[key], f"{source}: result {key!r}")
        store.data["results"][key] = results[key]
    if copied:
        save_json(store.data, store.path)
    return copied


def result_key(label: str, seed: int) -> str:
    """A test run's key in its result store: the schedule's label and the seed."""
    return f"{label} | seed {seed}"


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
