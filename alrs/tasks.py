"""Tasks as data, and instance sets of them (ours); :class:`alrs.env.TaskEnv` trains a task drawn per episode.

A task is what a user's training run is: a dataset variant (:func:`alrs.data.check_dataset`), an
architecture spec (:mod:`alrs.models`), a batch size, a horizon (optimizer steps), an initial LR and
the validation subset the features and reward use. An instance set, a JSON file, lists or samples
tasks for training and a disjoint held-out set for testing (``test.py --suite``)::

    {
      "decisions": 20,
      "train": {"sample": {"seed": 0, "count": 24, "dataset": ["fa-mnist:14x14", "mnist:14x14"],
                           "architecture": ["mlp:128", "convnet:8-16"], "batch_size": [128, 256],
                           "num_train_steps": [100, 200], "initial_lr": [0.001, 0.003, 0.01]}},
      "heldout": {"tasks": [{"dataset": "digits", "architecture": "mlp:64:tanh", "batch_size": 64,
                             "num_train_steps": 300, "initial_lr": 0.003}]}
    }

An optional ``"validation"`` set (the same forms), disjoint from both, is where the deterministic
evaluations that choose ``best.pt`` draw their tasks (ours; without one they draw training tasks), so
that neither the training nor the held-out tasks choose the released controller.

``decisions`` fixes the controller steps of every episode, whatever its horizon: a task of
``num_train_steps`` optimizer steps has ``update_freq = num_train_steps / decisions`` (ours: the
paper's K = 10 is for one horizon; with the time feature the controller sees the fraction left).
PPO's rollout is then one episode per child for every task.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alrs.config import TASK_SPLITS, EnvConfig
from alrs.data import check_dataset
from alrs.errors import UserError
from alrs.io import load_json
from alrs.models import architecture_spec

TASK_FIELDS = ("dataset", "architecture", "batch_size", "num_train_steps", "initial_lr", "val_size")


@dataclass(frozen=True)
class Task:
    """One training run of a child network.

    Args:
        dataset: a dataset or variant, e.g. ``fa-mnist:classes=0-4``.
        architecture: a name or spec (string or dict), e.g. ``mlp:256-128:tanh``.
        batch_size: minibatch size.
        num_train_steps: optimizer steps (the horizon).
        initial_lr: the LR the run starts from.
        val_size: validation examples for the features and reward (at most the split's size); None: all.
    """

    dataset: str
    architecture: str
    batch_size: int
    num_train_steps: int
    initial_lr: float
    val_size: int | None = 1000

    def __post_init__(self) -> None:
        check_dataset(self.dataset)
        object.__setattr__(self, "architecture", architecture_spec(self.architecture))
        for name in ("batch_size", "num_train_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"task {name} must be a positive integer, got {value!r}")
        lr = self.initial_lr
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr <= 1:
            raise UserError(f"task initial_lr must be a number in (0, 1], got {lr!r}")
        if self.val_size is not None and (not isinstance(self.val_size, int) or self.val_size <= 0):
            raise UserError(f"task val_size must be a positive integer or null, got {self.val_size!r}")

    @property
    def name(self) -> str:
        """A short unique label, e.g. ``digits mlp:64:tanh bs64 300 steps lr=0.003``."""
        val = "" if self.val_size == 1000 else f" val{self.val_size}"
        return (
            f"{self.dataset} {self.architecture} bs{self.batch_size} {self.num_train_steps} steps "
            f"lr={self.initial_lr:g}{val}"
        )

    def env_config(self, base: EnvConfig, decisions: int) -> EnvConfig:
        """``base`` with this task's settings and ``decisions`` controller steps per episode; reads no data
        (the env takes at most the validation split's size)."""
        if self.num_train_steps % decisions:
            raise UserError(f"task {self.name}: {decisions} decisions must divide its {self.num_train_steps} steps")
        return dataclasses.replace(
            base,
            dataset=self.dataset,
            architecture=self.architecture,
            batch_size=self.batch_size,
            num_train_steps=self.num_train_steps,
            update_freq=self.num_train_steps // decisions,
            initial_lr=float(self.initial_lr),
            val_size=self.val_size,
            lr_min=min(base.lr_min, float(self.initial_lr)),
            lr_max=max(base.lr_max, float(self.initial_lr)),
            instance_set=None,
        )


@dataclass(frozen=True)
class InstanceSet:
    """Training tasks, disjoint held-out and validation tasks, and the controller steps of every episode."""

    train: tuple[Task, ...]
    heldout: tuple[Task, ...]
    decisions: int
    validation: tuple[Task, ...] = ()

    def __post_init__(self) -> None:
        if not self.train:
            raise UserError("an instance set needs at least one training task")
        splits = {"training": self.train, "held-out": self.heldout, "validation": self.validation}
        for (a, tasks_a), (b, tasks_b) in itertools.combinations(splits.items(), 2):
            if clash := sorted({t.name for t in tasks_a} & {t.name for t in tasks_b}):
                raise UserError(f"task {clash[0]!r} is both a {a} and a {b} task; they must be disjoint")

    def split(self, name: str) -> tuple[Task, ...]:
        """The tasks of ``name`` (:data:`TASK_SPLITS`): ``validation`` falls back to the training tasks."""
        if name not in TASK_SPLITS:
            raise UserError(f"task_split must be one of {', '.join(TASK_SPLITS)}, got {name!r}")
        return self.validation or self.train if name == "validation" else self.train


def _task(record: Any, where: str) -> Task:
    if not isinstance(record, dict) or not set(record) <= set(TASK_FIELDS):
        unknown = sorted(set(record) - set(TASK_FIELDS)) if isinstance(record, dict) else record
        raise UserError(f"{where}: a task is an object of {', '.join(TASK_FIELDS)}; got {unknown!r}")
    try:
        return Task(**record)
    except TypeError as exc:
        raise UserError(f"{where}: {exc}") from None
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def _tasks(spec: Any, where: str, exclude: Sequence[Task] = ()) -> tuple[Task, ...]:
    """The tasks of ``{"tasks": [...]}`` or of ``{"sample": {"seed", "count", field: [choices]}}``."""
    if isinstance(spec, dict) and set(spec) == {"tasks"} and isinstance(spec["tasks"], list):
        tasks = tuple(_task(r, f"{where}.tasks[{i}]") for i, r in enumerate(spec["tasks"]))
        if len({t.name for t in tasks}) != len(tasks):
            raise UserError(f"{where}: a task is listed twice")
        return tasks
    sample = spec.get("sample") if isinstance(spec, dict) and set(spec) == {"sample"} else None
    if not isinstance(sample, dict) or not {"seed", "count"} <= set(sample):
        raise UserError(f'{where}: expected {{"tasks": [...]}} or {{"sample": {{"seed", "count", ...choices}}}}')
    choices = {k: v if isinstance(v, list) else [v] for k, v in sample.items() if k not in ("seed", "count")}
    if unknown := sorted(set(choices) - set(TASK_FIELDS)):
        raise UserError(f"{where}.sample: unknown field {unknown[0]!r}; fields: {', '.join(TASK_FIELDS)}")
    if missing := sorted(set(TASK_FIELDS) - {"val_size"} - set(choices)):
        raise UserError(f"{where}.sample: no choices for {missing[0]!r}")
    keys = list(choices)
    combos = list(itertools.product(*(choices[k] for k in keys)))
    order = np.random.default_rng(sample["seed"]).permutation(len(combos))
    taken = {t.name for t in exclude}
    tasks: list[Task] = []
    for i in order:
        task = _task(dict(zip(keys, combos[i], strict=True)), f"{where}.sample")
        if task.name not in taken:
            tasks.append(task)
            taken.add(task.name)
        if len(tasks) == sample["count"]:
            return tuple(tasks)
    raise UserError(f"{where}.sample: only {len(tasks)} distinct tasks to draw, fewer than count={sample['count']}")


def load_instance_set(path: str | Path) -> InstanceSet:
    """The instance set of a JSON file (see the module's docs); the held-out tasks are never sampled for training.

    The file is read once per process while it stays unchanged (the same path, modification time and size).
    """
    try:
        stat = os.stat(path)
    except OSError:
        return _read_instance_set.__wrapped__(str(path), None)  # not cached: the read says what is wrong
    return _read_instance_set(str(path), (stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=16)
def _read_instance_set(path: str, version: tuple[int, int] | None) -> InstanceSet:
    data = load_json(path)
    if (
        not isinstance(data, dict)
        or not {"train", "decisions"} <= set(data)
        or not set(data)
        <= {
            "train",
            "heldout",
            "validation",
            "decisions",
            "note",
        }
    ):
        raise UserError(
            f'{path}: an instance set is an object with "decisions", "train", and optionally "heldout" and "validation"'
        )
    decisions = data["decisions"]
    if isinstance(decisions, bool) or not isinstance(decisions, int) or decisions <= 0:
        raise UserError(f"{path}: decisions must be a positive integer, got {decisions!r}")
    heldout = _tasks(data["heldout"], f"{path}: heldout") if "heldout" in data else ()
    validation = _tasks(data["validation"], f"{path}: validation", exclude=heldout) if "validation" in data else ()
    train = _tasks(data["train"], f"{path}: train", exclude=(*heldout, *validation))
    return InstanceSet(train, heldout, decisions, validation)


def episode_decisions(config: EnvConfig) -> int:
    """Controller steps per episode: the instance set's ``decisions`` for every task, else the config's."""
    return load_instance_set(config.instance_set).decisions if config.instance_set else config.decisions


def task_metadata(config: EnvConfig) -> dict[str, Any]:
    """What a controller checkpoint records of its training tasks (nothing without an instance set)."""
    if config.instance_set is None:
        return {}
    instance_set = load_instance_set(config.instance_set)
    return {
        "tasks": [dataclasses.asdict(t) for t in instance_set.train],
        "heldout_tasks": [dataclasses.asdict(t) for t in instance_set.heldout],
        "validation_tasks": [dataclasses.asdict(t) for t in instance_set.validation],
        "decisions": instance_set.decisions,
    }


__all__ = [
    "InstanceSet",
    "Task",
    "episode_decisions",
    "load_instance_set",
    "task_metadata",
]
