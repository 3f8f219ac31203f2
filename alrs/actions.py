"""The controller's action: its space, what it does to the LR, and its spec as saved with a controller.

The paper's controller scales the previous LR (Sec. 3.1). Each action kind is one class in
:data:`ACTIONS`: its Gymnasium space, its description, the settings (:class:`~alrs.config.EnvConfig`
fields) it reads, and its rule (level, action) -> next level, clipped to ``[lr_min, lr_max]``.

The LR of the coming optimizer steps is the level times a base schedule's shape at that step
(:data:`BASE_SCHEDULES`, :meth:`Action.lr`): with the paper's ``constant`` base the level is the LR and the
controller replaces the schedule; with ``linear``, ``cosine`` or ``warmup-linear`` (ours: residual control)
it scales the base schedule, and a policy that always keeps follows the base schedule exactly.
:func:`action_of` gives the action of a configuration (or of a checkpoint's recorded settings),
:func:`checkpoint_action` the action of a saved controller, checked against its spec. The env, its
episode bookkeeping, the scheduler and the learned schedule all ask here.

A new kind is a class here (its ``settings``, ``space``, ``describe`` and ``factor``, or its own
``next_level``), its record in :data:`ACTIONS` and its choice in :func:`action_kind`, and its test in
``tests/test_actions.py``; a kind of space the policy cannot yet act in needs a distribution in
:data:`alrs.controller.DISTRIBUTIONS` as well.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces

from alrs.controller import describe_action_space
from alrs.errors import UserError

WARMUP_FRACTION = 0.05
"""The share of a run the ``warmup-linear`` base warms up over (ours)."""


def _warmup_linear(step: int, total: int) -> float:
    """A linear warm-up over the first :data:`WARMUP_FRACTION` of the steps, then a linear decay to 0."""
    warmup = max(1, round(WARMUP_FRACTION * total))
    return max(0.0, min((step + 1) / warmup, (total - step) / max(1, total - warmup), 1.0))


BASE_SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "constant": lambda step, total: 1.0,
    "linear": lambda step, total: max(0.0, 1 - step / total),
    "cosine": lambda step, total: 0.5 * (1 + math.cos(math.pi * step / total)),
    "warmup-linear": _warmup_linear,
}
"""Base schedules by name: the shape (optimizer step, steps in the run) -> the factor of the level at that
step. ``constant`` is the paper's (the level is the LR); the others are ours (residual control). The
hand-made schedules of the same names (:mod:`alrs.schedules`) use these shapes."""

ACTION_SETS: tuple[str, ...] = ("scale", "lhopt")
"""``scale``: the paper's (up/down/keep by ``action_range``, or one factor in its range); ``lhopt``: the
seven factors of Almeida et al. 2021 (arXiv 2106.00958), :data:`LHOPT_FACTORS` (ours)."""

LHOPT_FACTORS: tuple[float, ...] = (0.5, 1 / math.sqrt(2), 0.9, 1.0, 1.1, math.sqrt(2), 2.0)
"""LHOPT's relative LR actions (Almeida et al. 2021, arXiv 2106.00958): halve, /sqrt 2, x0.9, keep, x1.1,
x sqrt 2, x2."""


def check_base_schedule(name: object) -> None:
    """A one-line error unless ``name`` is one of :data:`BASE_SCHEDULES`."""
    if name not in BASE_SCHEDULES:
        raise UserError(f"base_schedule must be one of {', '.join(BASE_SCHEDULES)}, got {name!r}")


def _integer(action: Any) -> int | None:
    """The integer an action of a discrete space is, or None: a float such as 2.7 is refused, not truncated."""
    value = (
        action.item() if isinstance(action, (np.ndarray, np.generic, torch.Tensor)) and np.ndim(action) == 0 else action
    )
    return None if isinstance(value, bool) or not isinstance(value, int) else value


def _level(base_schedule: str) -> str:
    """What an action scales, for :meth:`Action.describe`: the LR, or the level of a base schedule."""
    return "LR" if base_schedule == "constant" else f"LR = {base_schedule} schedule x level; level"


@dataclass(frozen=True)
class Action(ABC):
    """An action kind with its settings: the bounds ``[lr_min, lr_max]`` of the level it sets, the base
    schedule that level scales, and its own."""

    kind: ClassVar[str]
    """The kind's name in :data:`ACTIONS`."""
    settings: ClassVar[tuple[str, ...]]
    """The :class:`~alrs.config.EnvConfig` fields it reads: its constructor's arguments."""

    lr_min: float
    lr_max: float
    base_schedule: str = field(default="constant", kw_only=True)

    def __post_init__(self) -> None:
        check_base_schedule(self.base_schedule)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Action:
        """The action of ``settings`` (an env configuration's fields, by name)."""
        return cls(**{name: settings[name] for name in cls.settings})

    @property
    @abstractmethod
    def space(self) -> spaces.Space:
        """The Gymnasium action space."""

    @abstractmethod
    def describe(self) -> str:
        """One line: what each action does to the LR (for help texts and controller cards)."""

    @abstractmethod
    def factor(self, action: Any) -> float:
        """The factor by which ``action`` scales the LR; a one-line error for an action outside the space."""

    def spec(self) -> dict[str, Any]:
        """The plain-data description of :attr:`space` saved with controllers (their ``action_space``)."""
        return describe_action_space(self.space)

    def next_level(self, level: float, action: Any, log_noise: float = 0.0) -> float:
        """The level after ``action``, times ``exp(log_noise)`` (the optional LR noise), clipped to the bounds.
        With the ``constant`` base it is the LR itself (the paper's rule)."""
        return float(np.clip(level * self.factor(action) * math.exp(log_noise), self.lr_min, self.lr_max))

    def lr(self, level: float, step: int, total: int) -> float:
        """The LR of the optimizer steps from ``step`` on, in a run of ``total``: the level times the base's shape."""
        if self.base_schedule == "constant":
            return level  # exactly the level, as before base schedules existed
        return level * BASE_SCHEDULES[self.base_schedule](step, total)


@dataclass(frozen=True)
class _Scale(Action):
    """An action that scales the LR by a factor of at most ``action_range`` (the paper's, Sec. 3.1)."""

    settings: ClassVar[tuple[str, ...]] = ("action_range", "lr_min", "lr_max", "base_schedule")

    action_range: float

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.action_range > 1:
            raise UserError(f"action_range must be > 1 (a factor such as 1.05), got {self.action_range!r}")


@dataclass(frozen=True)
class DiscreteScale(_Scale):
    """The seed's discrete action: 0 multiplies the LR by ``action_range``, 1 divides it by it, 2 keeps it."""

    kind: ClassVar[str] = "discrete-scale"

    @property
    def space(self) -> spaces.Space:
        return spaces.Discrete(3)

    def describe(self) -> str:
        r = self.action_range
        bounds = f"within [{self.lr_min:g}, {self.lr_max:g}]"
        return f"{_level(self.base_schedule)} x{r:g} (0), /{r:g} (1) or kept (2), {bounds}"

    def factor(self, action: Any) -> float:
        value = _integer(action)
        if value not in (0, 1, 2):
            raise UserError(
                f"discrete action must be the integer 0 (increase), 1 (decrease) or 2 (keep), got {action!r}"
            )
        return (self.action_range, 1 / self.action_range, 1.0)[value]


@dataclass(frozen=True)
class ContinuousScale(_Scale):
    """One LR factor, clipped to ``[1 / action_range, action_range]``."""

    kind: ClassVar[str] = "continuous-scale"

    @property
    def space(self) -> spaces.Space:
        r = self.action_range
        return spaces.Box(np.float32(1 / r), np.float32(r), shape=(1,), dtype=np.float32)

    def describe(self) -> str:
        r = self.action_range
        return f"{_level(self.base_schedule)} x a factor in [1/{r:g}, {r:g}], within [{self.lr_min:g}, {self.lr_max:g}]"

    def factor(self, action: Any) -> float:
        value = np.asarray(action, dtype=np.float64).reshape(-1)
        if value.size != 1 or not np.isfinite(value[0]):
            raise UserError(f"a continuous action is one finite LR factor, got {action!r}")
        return float(np.clip(value[0], 1 / self.action_range, self.action_range))


@dataclass(frozen=True)
class DiscreteFactors(Action):
    """LHOPT's relative actions (ours, after Almeida et al. 2021): action ``i`` scales the level by
    ``LHOPT_FACTORS[i]`` (0: x0.5 ... 3: keep ... 6: x2)."""

    kind: ClassVar[str] = "discrete-factors"
    settings: ClassVar[tuple[str, ...]] = ("lr_min", "lr_max", "base_schedule")

    @property
    def space(self) -> spaces.Space:
        return spaces.Discrete(len(LHOPT_FACTORS))

    def describe(self) -> str:
        factors = ", ".join(f"x{f:.3g} ({i})" for i, f in enumerate(LHOPT_FACTORS))
        return f"{_level(self.base_schedule)} {factors}, within [{self.lr_min:g}, {self.lr_max:g}]"

    def factor(self, action: Any) -> float:
        value = _integer(action)
        if value is None or not 0 <= value < len(LHOPT_FACTORS):
            raise UserError(f"discrete action must be an integer in 0..{len(LHOPT_FACTORS) - 1}, got {action!r}")
        return LHOPT_FACTORS[value]


ACTIONS: dict[str, type[Action]] = {cls.kind: cls for cls in (DiscreteScale, ContinuousScale, DiscreteFactors)}
"""The action kinds, by name."""

KIND_SETTINGS: tuple[str, ...] = ("discrete", "action_set")
"""The :class:`~alrs.config.EnvConfig` fields that choose the action kind (:func:`action_kind`)."""

SETTINGS: tuple[str, ...] = tuple(
    dict.fromkeys([*KIND_SETTINGS, *(name for cls in ACTIONS.values() for name in cls.settings)])
)
"""Every :class:`~alrs.config.EnvConfig` field an action reads: what a checkpoint must record of its action."""


def action_kind(settings: Mapping[str, Any]) -> str:
    """The name of the action kind that ``settings`` choose."""
    if settings["action_set"] not in ACTION_SETS:
        raise UserError(f"action_set must be one of {', '.join(ACTION_SETS)}, got {settings['action_set']!r}")
    if settings["action_set"] == "lhopt":
        if not settings["discrete"]:
            raise UserError(
                "action_set lhopt is discrete; for a continuous factor in LHOPT's range use action_set scale "
                "with discrete false and action_range 2"
            )
        return DiscreteFactors.kind
    return DiscreteScale.kind if settings["discrete"] else ContinuousScale.kind


def action_of(config: Any) -> Action:
    """The action of an env configuration (an :class:`~alrs.config.EnvConfig`, not imported here: the
    configuration asks this module to check its settings), or of the settings a checkpoint recorded
    (``metadata["env"]``, a mapping)."""
    settings = config if isinstance(config, Mapping) else vars(config)
    return ACTIONS[action_kind(settings)].from_settings(settings)


def checkpoint_action(settings: Mapping[str, Any], spec: Mapping[str, Any], source: str) -> Action:
    """The action of a saved controller: rebuilt from its recorded ``settings``, checked against its ``spec``."""
    action = action_of(settings)
    if dict(spec) != action.spec():
        raise UserError(f"{source}: the controller's actions are {dict(spec)}, its metadata says {action.spec()}")
    return action


__all__ = [
    "ACTIONS",
    "ACTION_SETS",
    "BASE_SCHEDULES",
    "KIND_SETTINGS",
    "LHOPT_FACTORS",
    "SETTINGS",
    "Action",
    "ContinuousScale",
    "DiscreteFactors",
    "DiscreteScale",
    "action_kind",
    "action_of",
    "check_base_schedule",
    "checkpoint_action",
]
