"""The baseline families and their grid: which hand-made schedules and peers are searched, on which settings,
where the grid file lives, and how each family's best point is picked and rebuilt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from alrs.config import EnvConfig
from alrs.env import LREnv
from alrs.episodes import run_jobs
from alrs.errors import UserError
from alrs.formats import ENV_ADDED_LATER, read_store
from alrs.io import FolderLock, load_json
from alrs.parallel import WorkerPool
from alrs.peers import PEER_FAMILIES, peer_from_record, peer_grid
from alrs.results import EpisodeResult, ResultStore, check_record
from alrs.schedules import (
    Constant,
    Cosine,
    HandMadeSchedule,
    Linear,
    StepDecay,
    annealing_grid,
    paper_grid,
)
from alrs.settings import runtime_settings

BASELINE_KEYS = ("dataset", "architecture", "batch_size", "update_freq", "num_train_steps", "val_size")
"""The env settings that decide a hand-made schedule's results (the rest concern the controller)."""


def evaluation_settings(config: EnvConfig, keys: Sequence[str] | None = None) -> dict[str, Any]:
    """The env settings that decide a result: ``keys``, or all but where the data are and what ran it."""
    runtime = runtime_settings(EnvConfig)
    settings = {k: v for k, v in asdict(config).items() if k not in runtime}
    # Settings added after results were first stored are recorded only where they differ from their
    # default, so that stored results of the default stay valid.
    for key in ENV_ADDED_LATER:
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

HAND_MADE_BEST_KEYS = {
    "step-decay": "best_step_decay",
    "constant": "best_constant",
    "cosine": "best_cosine",
    "linear": "best_linear",
}
"""Where a grid file names the best point of each hand-made family."""


def best_keys() -> dict[str, str]:
    """Family -> where a grid file names its best point: the hand-made families, then every peer family
    registered (:data:`alrs.peers.PEER_FAMILIES`)."""
    return {**HAND_MADE_BEST_KEYS, **{family.name: family.best_key for family in PEER_FAMILIES.values()}}


def grid_schedules(config: EnvConfig) -> list[HandMadeSchedule]:
    """The baseline grid: the paper's 48 step decays, a constant at each of their initial LRs, and
    (ours) cosine and linear decays to 0 from each of six initial LRs, and the peers' grids."""
    grid = paper_grid()
    constants = [Constant(lr) for lr in sorted({s.initial_lr for s in grid}, reverse=True)]
    return [*grid, *constants, *annealing_grid(config.num_train_steps), *peer_grid(config.num_train_steps)]


GRID_NOTE = "test figures are null: the grid ranks schedules by validation loss and never touches the test set"


def baseline_grid_search(
    env: LREnv,
    seed: int,
    path: str | Path,
    progress: bool = True,
    pool: WorkerPool | None = None,
    wait: bool = False,
) -> dict[str, Any]:
    """The paper's 48 step-decay points, a constant schedule at each of their initial LRs, and
    (ours) cosine and linear decay to 0 from each of six initial LRs; one seed each.

    Picks the best point of each family by final validation loss (as the seed does), records each
    point's best validation loss too, and keeps everything in ``path`` (resumable: a grid file
    from before the cosine, linear or peer families gains their points on the next run). With ``pool``
    the points run on its workers; ``wait``: wait for another writer of ``path`` instead of refusing.
    """
    path = Path(path)
    with FolderLock(path.with_name(f".{path.name}.lock"), f"grid file {path}", wait):  # one writer at a time
        store = ResultStore(path, {**evaluation_settings(env.config, BASELINE_KEYS), "seed": seed})
        jobs = [(s.name, s, seed) for s in grid_schedules(env.config)]
        results = run_jobs(env, jobs, store, test=False, progress=progress, desc="grid", pool=pool)
        families = {schedule_from_record(r.schedule).family for r in results.values()}
        best = {key: best_of_family(results, family) for family, key in best_keys().items() if family in families}
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
    """Rebuild a hand-made schedule from its ``describe()`` record."""
    family = record["family"]
    if family in PEER_FAMILIES:
        return peer_from_record(record)
    if family == "step-decay":
        return StepDecay(record["initial_lr"], record["discount_step"], record["factor"])
    if family in DECAYS_TO_ZERO:
        return DECAYS_TO_ZERO[family](record["initial_lr"], record["total_steps"])
    return Constant(record["initial_lr"])


def _finite(x: float) -> float:
    return x if math.isfinite(x) else math.inf


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
    grid = read_store(grid, path)  # a grid file of an older format, migrated (alrs.formats)
    if {k: settings.get(k) for k in BASELINE_KEYS} != expected or "best_step_decay" not in grid:
        raise UserError(
            f"{path} is unfinished or was made with other settings; rerun baselines.py with this test's settings"
        )
    for key, record in grid["results"].items():
        check_record(record, f"{path}: result {key!r}")
    return grid


def missing_grid_error(path: Path, config: EnvConfig, seed: int) -> UserError:
    """The error for a test whose grid file does not exist, with the command that makes it."""
    flags = " ".join(
        f"--{k.replace('_', '-')} {getattr(config, k)}" for k in BASELINE_KEYS if getattr(config, k) is not None
    )
    return UserError(
        f"no baseline results at {path}; run: python baselines.py {flags} --seed {seed} (or add --run-baselines)"
    )


__all__ = [
    "BASELINE_KEYS",
    "DECAYS_TO_ZERO",
    "GRID_NOTE",
    "HAND_MADE_BEST_KEYS",
    "baseline_file",
    "baseline_grid_search",
    "best_keys",
    "best_of_family",
    "evaluation_settings",
    "grid_schedules",
    "load_grid",
    "missing_grid_error",
    "schedule_from_record",
]
