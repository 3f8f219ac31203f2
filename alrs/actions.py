"""The controller's action: its space, what it does to the LR, and its spec as saved with a controller.

The paper's controller scales the previous LR (Sec. 3.1). Each action kind is one class in
:data:`ACTIONS`: its Gymnasium space, its description, the settings (:class:`~alrs.config.EnvConfig`
fields) it reads, and its rule (LR, action) -> next LR, clipped to ``[lr_min, lr_max]``.
:func:`action_of` gives the action of a configuration (or of a checkpoint's recorded settings),
:func:`checkpoint_action` the action of a saved controller, checked against its spec. The env, its
episode bookkeeping, the scheduler and the learned schedule all ask here.

A new kind is a class here (its ``settings``, ``space``, ``describe`` and ``factor``, or its own
``next_lr``), its record in :data:`ACTIONS` and its choice in :func:`action_kind`, and its test in
``tests/test_actions.py``; a kind of space the policy cannot yet act in needs a distribution in
:data:`alrs.controller.DISTRIBUTIONS` as well.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces

from alrs.controller import describe_action_space
from alrs.errors import UserError


@dataclass(frozen=True)
class Action(ABC):
    """An action kind with its settings: the bounds ``[lr_min, lr_max]`` of the LR it sets, and its own."""

    kind: ClassVar[str]
    """The kind's name in :data:`ACTIONS`."""
    settings: ClassVar[tuple[str, ...]]
    """The :class:`~alrs.config.EnvConfig` fields it reads: its constructor's arguments."""

    lr_min: float
    lr_max: float

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

    def next_lr(self, lr: float, action: Any, log_noise: float = 0.0) -> float:
        """The LR after ``action``, times ``exp(log_noise)`` (the optional LR noise), clipped to the bounds."""
        return float(np.clip(lr * self.factor(action) * math.exp(log_noise), self.lr_min, self.lr_max))


@dataclass(frozen=True)
class _Scale(Action):
    """An action that scales the LR by a factor of at most ``action_range`` (the paper's, Sec. 3.1)."""

    settings: ClassVar[tuple[str, ...]] = ("action_range", "lr_min", "lr_max")

    action_range: float

    def __post_init__(self) -> None:
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
        return f"LR x{r:g} (0), /{r:g} (1) or kept (2), within [{self.lr_min:g}, {self.lr_max:g}]"

    def factor(self, action: Any) -> float:
        # An integer of the action space: a float such as 2.7 is refused, not truncated by int().
        value = (
            action.item()
            if isinstance(action, (np.ndarray, np.generic, torch.Tensor)) and np.ndim(action) == 0
            else action
        )
        if isinstance(value, bool) or not isinstance(value, int) or value not in (0, 1, 2):
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
        return f"LR x a factor in [1/{r:g}, {r:g}], within [{self.lr_min:g}, {self.lr_max:g}]"

    def factor(self, action: Any) -> float:
        value = np.asarray(action, dtype=np.float64).reshape(-1)
        if value.size != 1 or not np.isfinite(value[0]):
            raise UserError(f"a continuous action is one finite LR factor, got {action!r}")
        return float(np.clip(value[0], 1 / self.action_range, self.action_range))


ACTIONS: dict[str, type[Action]] = {cls.kind: cls for cls in (DiscreteScale, ContinuousScale)}
"""The action kinds, by name."""

KIND_SETTINGS: tuple[str, ...] = ("discrete",)
"""The :class:`~alrs.config.EnvConfig` fields that choose the action kind (:func:`action_kind`)."""

SETTINGS: tuple[str, ...] = tuple(
    dict.fromkeys([*KIND_SETTINGS, *(name for cls in ACTIONS.values() for name in cls.settings)])
)
"""Every :class:`~alrs.config.EnvConfig` field an action reads: what a checkpoint must record of its action."""


def action_kind(settings: Mapping[str, Any]) -> str:
    """The name of the action kind that ``settings`` choose."""
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
    "KIND_SETTINGS",
    "SETTINGS",
    "Action",
    "ContinuousScale",
    "DiscreteScale",
    "action_kind",
    "action_of",
    "checkpoint_action",
]
