"""Every stored format of alrs, its version, and reading of every version we have ever written.

A reader here takes what a file holds, checks it as a whole, and migrates an older version to the
current one; the rest of the library sees only current versions. The formats:

- controller checkpoint (best.pt, evals/iter_N.pt, inside last.pt): ``format`` ``alrs-controller/1``.
  Settings added to the environment or PPO after the first runs are absent from older metadata;
  :func:`migrate_controller` fills them with the value those runs used, and drops the one PPO setting that
  became an argument (``num_steps``, the rollout length: an episode's decisions).
- training state (last.pt): ``alrs-training/2`` holds ``ppo``, ``progress`` (a :class:`Progress`) and
  ``controller``. Version 1 (no ``format`` key) held the progress as a dict that grew: the first four
  fields (before deterministic evaluations), then six (with best_eval_loss and best_eval_iteration), then
  all eight; the fields a run predates read as their defaults (it never evaluated, or never reported).
- metrics.csv: the header without the last column ``initial_lr`` (before it existed) gains it, empty.
- result store (a test's results.json and summary.json, a grid file, a suite's store): ``alrs-results/2``.
  Version 1 (no ``format`` key) has schedule records without ``family`` (a step decay has
  ``discount_step``, a learned schedule ``trained_on``, else it is a constant), and summaries from
  before the fair protocol key their schedules by label, without a ``label`` field.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from alrs.errors import UserError

CONTROLLER_FORMAT = "alrs-controller/1"
TRAINING_FORMAT = "alrs-training/2"
RESULTS_FORMAT = "alrs-results/2"

ENV_ADDED_LATER: dict[str, Any] = {
    "lr_feature": "lr",
    "time_feature": False,
    "reward": "val-loss",
    "optimizer": "adam",
    "beta1": 0.9,
    "beta2": 0.999,
    "weight_decay": 0.0,
    "warmup_steps": 0,
    "d_coef": 1.0,
    "safeguard_warmup": False,
    "weight_average": None,
    "feature_scale": "raw",
    "instance_set": None,
    "action_set": "scale",
    "base_schedule": "constant",
    "initial_lr_spread": 1.0,
    "trend_features": False,
    "task_split": "train",
}
"""Environment settings added after the first runs, with the value every run before them used (the paper's)."""

PPO_ADDED_LATER: dict[str, Any] = {"common_reset_seed": False}
"""PPO settings added after the first runs, with the value every run before them used."""

PPO_REMOVED_LATER: tuple[str, ...] = ("num_steps",)
"""PPO settings that older metadata records and the current PPOConfig no longer has: ``num_steps``, the
rollout length, is always an episode's decisions and is now passed to PPO, not set."""


def migrate_controller(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A controller checkpoint whose metadata records every setting (older ones lack those added later)."""
    metadata = checkpoint.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("env"), dict):
        return checkpoint  # no settings to complete: a checkpoint made outside training; its readers decide
    metadata = {**metadata, "env": {**ENV_ADDED_LATER, **metadata["env"]}}
    if isinstance(metadata.get("ppo"), dict):
        ppo = {k: v for k, v in metadata["ppo"].items() if k not in PPO_REMOVED_LATER}
        metadata["ppo"] = {**PPO_ADDED_LATER, **ppo}
    return {**checkpoint, "metadata": metadata}


def read_controller(saved: Any) -> Any:
    """The controller checkpoint of a best.pt, an evals/ file or a last.pt of any version, migrated; anything
    else is returned as is, for the controller's own check to refuse."""
    if isinstance(saved, dict) and saved.get("format") == CONTROLLER_FORMAT:
        return migrate_controller(saved)
    if isinstance(saved, dict) and isinstance(saved.get("controller"), dict):  # a last.pt
        return migrate_controller(saved["controller"])
    return saved


@dataclass
class Progress:
    """Where a training run stands, saved in last.pt after every PPO iteration.

    Args:
        episodes_done: finished episodes (rows of metrics.csv).
        wall_time: seconds of training so far, across resumes.
        best_final_val_loss: without evaluations, the lowest final validation loss of an episode (the seed's rule).
        best_episode: the episode that reached it.
        best_eval_loss: the lowest mean best validation loss of a deterministic evaluation (best.pt's).
        best_eval_iteration: the iteration after which that evaluation ran.
        eval_iteration: the iteration of the latest evaluation.
        eval_loss: the latest evaluation's mean best validation loss.
    """

    episodes_done: int = 0
    wall_time: float = 0.0
    best_final_val_loss: float = math.inf
    best_episode: int | None = None
    best_eval_loss: float = math.inf
    best_eval_iteration: int | None = None
    eval_iteration: int | None = None
    eval_loss: float = math.nan

    def first_of_last(self, count: int) -> int:
        """The number of the first of the last ``count`` episodes counted (episodes are numbered from 1)."""
        return self.episodes_done - count + 1


def training_state(ppo: dict[str, Any], progress: Progress, controller: dict[str, Any]) -> dict[str, Any]:
    """What last.pt holds, in the current format."""
    return {"format": TRAINING_FORMAT, "ppo": ppo, "progress": asdict(progress), "controller": controller}


def read_training_state(saved: Any, path: Path) -> tuple[dict[str, Any], Progress, dict[str, Any]]:
    """PPO's state, the progress and the controller checkpoint of a last.pt of any version; a one-line
    error for anything else."""
    if not isinstance(saved, dict) or not {"ppo", "progress", "controller"} <= set(saved):
        raise UserError(f"{path}: not a training checkpoint of alrs")
    if saved.get("format", "alrs-training/1") not in ("alrs-training/1", TRAINING_FORMAT):
        raise UserError(f"{path}: training-state format {saved['format']!r} is newer than this alrs; upgrade alrs")
    progress = saved["progress"]
    names = [f.name for f in fields(Progress)]
    if (
        not isinstance(progress, dict)
        or not set(_FIRST_PROGRESS_FIELDS) <= set(progress) <= set(names)
        or (saved.get("format") == TRAINING_FORMAT and set(progress) != set(names))
        or not isinstance(progress["episodes_done"], int)
        or not all(isinstance(value, (int, float, type(None))) for value in progress.values())
    ):
        raise UserError(f"{path}: its progress record is damaged or from another version of alrs")
    controller = saved["controller"]
    return saved["ppo"], Progress(**progress), migrate_controller(controller) if isinstance(controller, dict) else {}


_FIRST_PROGRESS_FIELDS = ("episodes_done", "best_final_val_loss", "best_episode", "wall_time")
"""The progress fields of the first last.pt files; every later one has them too."""


def migrate_metrics_header(rows: list[list[str]], columns: tuple[str, ...]) -> list[list[str]]:
    """metrics.csv's rows with the current header ``columns``: a header from before the last column
    existed gains it, empty in the old rows."""
    if rows and tuple(rows[0]) == columns[:-1]:
        return [list(columns), *[[*row, ""] for row in rows[1:]]]
    return rows


def read_store(data: Any, path: Path) -> dict[str, Any]:
    """A result store of any version (a JSON object as read), in the current version; a one-line error for
    anything else. Its records are checked by :func:`alrs.results.check_record`."""
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise UserError(f'{path}: not a result store of alrs (no "results" object); delete it or write elsewhere')
    version = data.get("format", "alrs-results/1")
    if version == RESULTS_FORMAT:
        return data
    if version != "alrs-results/1":
        raise UserError(f"{path}: result-store format {version!r} is newer than this alrs; upgrade alrs")
    results = {key: _record_with_family(record) for key, record in data["results"].items()}
    migrated = {"format": RESULTS_FORMAT, **data, "results": results}
    summary = data.get("summary")
    if isinstance(summary, dict) and isinstance(summary.get("schedules"), dict):
        schedules = {
            key: {"label": key, **entry} if isinstance(entry, dict) else entry
            for key, entry in summary["schedules"].items()
        }
        migrated["summary"] = {**summary, "schedules": schedules}
    return migrated


def _record_with_family(record: Any) -> Any:
    """A version-1 episode record whose schedule says its family."""
    schedule = record.get("schedule") if isinstance(record, dict) else None
    if not isinstance(schedule, dict) or "family" in schedule:
        return record
    family = "step-decay" if "discount_step" in schedule else "learned" if "trained_on" in schedule else "constant"
    return {**record, "schedule": {**schedule, "family": family}}
