"""Schedules: anything that sets the child network's LR one controller step at a time.

Hand-made schedules (constant, step decay, cosine, linear) set the LR directly through
``LREnv.step_lr``; the learned schedule is a trained controller acting through ``LREnv.step``.
Evaluation code runs them all through :meth:`Schedule.step`.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from itertools import product
from typing import Any

import numpy as np
import torch

from alrs.actions import BASE_SCHEDULES, action_of
from alrs.config import EnvConfig
from alrs.controller import Controller
from alrs.env import LREnv
from alrs.errors import UserError
from alrs.formats import migrate_controller
from alrs.optim import OPTIMIZER_FIELDS

StepResult = tuple[np.ndarray, float, bool, bool, dict[str, Any]]

PAPER_GRID: dict[str, tuple[float, ...]] = {
    "initial_lr": (1e-1, 1e-2, 1e-3, 1e-4),
    "discount_step": (10, 20, 50, 100),
    "factor": (0.99, 0.9, 0.88),
}
"""The paper's step-decay grid, 4 x 4 x 3 = 48 points (Xu et al., 2019, Sec. 4)."""

ANNEALING_GRID_LRS: tuple[float, ...] = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4)
"""Initial LRs of the cosine and linear families (ours: the paper compares with step decay only)."""

PAPER_OPTIMIZER: dict[str, Any] = {name: getattr(EnvConfig, name) for name in OPTIMIZER_FIELDS}
"""The paper's child optimizer: Adam at torch's defaults, its own weights evaluated. Every hand-made
schedule runs with it, whatever the env's optimizer, so the grid and the baselines are the paper's."""


class Schedule(ABC):
    """Sets the LR of a training child, one controller step (``update_freq`` optimizer steps) at a time."""

    name: str = "schedule"
    family: str = "schedule"
    """Stable key of the schedule's kind (``step-decay``, ``cosine``, ...), apart from its display name."""
    initial_lr: float | None = None
    """The LR an episode starts from; None keeps the env's own setting."""
    optimizer: dict[str, Any] | None = None
    """The child's optimizer settings (:data:`~alrs.optim.OPTIMIZER_FIELDS`); None keeps the env's own."""

    def reset_options(self) -> dict[str, Any] | None:
        """The options of the env's reset that start this schedule's episode (None: the env's settings)."""
        options: dict[str, Any] = {}
        if self.initial_lr is not None:
            options["initial_lr"] = self.initial_lr
        if self.optimizer is not None:
            options["optimizer"] = self.optimizer
        return options or None

    def check(self, env: LREnv) -> None:  # noqa: B027 - optional hook: most schedules run on any env
        """Raise a one-line :class:`~alrs.errors.UserError` if this schedule cannot run on ``env``."""

    def start(self, seed: int) -> None:  # noqa: B027 - optional hook: most schedules are deterministic
        """Called at the start of each episode, after the env's reset with ``seed``: a schedule that draws
        random numbers seeds them here, so that an episode is reproducible from its seed."""

    @abstractmethod
    def step(self, env: LREnv, obs: np.ndarray, info: dict[str, Any]) -> StepResult:
        """Advance ``env`` by one controller step and return what ``env.step`` returns."""

    def describe(self) -> dict[str, Any]:
        """The schedule's parameters, for result files."""
        return {"name": self.name, "family": self.family, "initial_lr": self.initial_lr}


class HandMadeSchedule(Schedule):
    """A schedule given as a function of the optimizer step; not held to the controller's LR bounds.
    It trains the child with the paper's Adam (:data:`PAPER_OPTIMIZER`) unless it is a :class:`Peer`."""

    initial_lr: float
    optimizer: dict[str, Any] | None = PAPER_OPTIMIZER

    @abstractmethod
    def lr_at(self, step: int) -> float:
        """The LR for the optimizer steps starting at ``step``."""

    def step(self, env: LREnv, obs: np.ndarray, info: dict[str, Any]) -> StepResult:
        return env.step_lr(self.lr_at(env.optimizer_steps))


class Constant(HandMadeSchedule):
    """The same LR throughout."""

    family = "constant"

    def __init__(self, initial_lr: float):
        self.initial_lr, self.name = float(initial_lr), f"constant lr={initial_lr:g}"

    def lr_at(self, step: int) -> float:
        return self.initial_lr


class StepDecay(HandMadeSchedule):
    """The paper's baseline: the LR is multiplied by ``factor`` every ``discount_step`` optimizer steps."""

    family = "step-decay"

    def __init__(self, initial_lr: float, discount_step: int, factor: float):
        self.initial_lr, self.discount_step, self.factor = float(initial_lr), int(discount_step), float(factor)
        self.name = f"step decay lr={initial_lr:g} every {discount_step} x{factor:g}"

    def lr_at(self, step: int) -> float:
        return self.initial_lr * self.factor ** (step // self.discount_step)

    def check(self, env: LREnv) -> None:
        if self.discount_step % env.config.update_freq:
            raise UserError(
                f"discount_step={self.discount_step} must be a multiple of update_freq={env.config.update_freq}: "
                "the LR can only change between controller steps"
            )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "discount_step": self.discount_step, "factor": self.factor}


class DecayToZero(HandMadeSchedule):
    """A decay from ``initial_lr`` to 0 over ``total_steps`` optimizer steps; subclasses give its shape (``lr_at``)."""

    def __init__(self, initial_lr: float, total_steps: int):
        self.initial_lr, self.total_steps = float(initial_lr), int(total_steps)
        self.name = f"{self.family} lr={initial_lr:g}"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "total_steps": self.total_steps}


class Cosine(DecayToZero):
    """Cosine decay from ``initial_lr`` to 0 over ``total_steps`` optimizer steps (a common modern reference)."""

    family = "cosine"

    def lr_at(self, step: int) -> float:
        return self.initial_lr * BASE_SCHEDULES["cosine"](step, self.total_steps)


class Linear(DecayToZero):
    """Linear decay from ``initial_lr`` to 0 over ``total_steps`` optimizer steps (a common modern reference)."""

    family = "linear"

    def lr_at(self, step: int) -> float:
        return self.initial_lr * BASE_SCHEDULES["linear"](step, self.total_steps)


class WarmupLinear(DecayToZero):
    """A linear warm-up over the first 5% of ``total_steps`` (:data:`~alrs.actions.WARMUP_FRACTION`), then a
    linear decay to 0 (ours: the shape of a warm-up for a peer whose authors advise one)."""

    family = "warmup-linear"

    def lr_at(self, step: int) -> float:
        return self.initial_lr * BASE_SCHEDULES["warmup-linear"](step, self.total_steps)


class Peer(HandMadeSchedule):
    """An optimizer a user would pick instead of a schedule (ours), run at a hand-made LR ``shape``.

    Args:
        family: its family's name (:data:`alrs.peers.PEER_FAMILIES`).
        shape: the LR over the episode (a constant, or a cosine decay for Prodigy's multiplier).
        label: the table's label, e.g. ``schedule-free adamw (lr=0.01, warm-up 10)``.
        optimizer: the settings that differ from :data:`PAPER_OPTIMIZER`.
    """

    def __init__(self, family: str, shape: HandMadeSchedule, label: str, **optimizer: Any):
        if unknown := sorted(set(optimizer) - set(OPTIMIZER_FIELDS)):
            raise UserError(f"not an optimizer setting: {unknown[0]!r}; known: {', '.join(OPTIMIZER_FIELDS)}")
        self.family, self.shape, self.label = family, shape, label
        self.initial_lr = shape.initial_lr
        self.optimizer = {**PAPER_OPTIMIZER, **optimizer}
        self.name = label.replace(" (", " ").replace(", ", " ").removesuffix(")")

    def lr_at(self, step: int) -> float:
        return self.shape.lr_at(step)

    def check(self, env: LREnv) -> None:
        self.shape.check(env)

    def describe(self) -> dict[str, Any]:
        changed = {k: v for k, v in self.optimizer.items() if k == "optimizer" or v != PAPER_OPTIMIZER[k]}
        return {
            **self.shape.describe(),
            "name": self.name,
            "family": self.family,
            "label": self.label,
            "shape": self.shape.describe(),
            "optimizer": changed,
        }


class Learned(Schedule):
    """A trained controller with frozen statistics, acting by its policy's mode or by samples of it.

    Args:
        checkpoint: a dict written by ``Controller.checkpoint`` (``best.pt``, or ``last.pt``'s ``controller``).
        name: label in tables and figures.
        initial_lr: the LR its episodes start from (None: the env's setting).
        policy: ``mode``, the policy's most likely action at every step (the default, as in the
            training's deterministic evaluations), or ``sample``, actions drawn from the policy as in
            training, from a generator seeded with the episode's seed (ours: the paper does not say).
    """

    family = "learned"
    POLICIES = ("mode", "sample")

    def __init__(
        self, checkpoint: dict[str, Any], name: str = "learned", initial_lr: float | None = None, policy: str = "mode"
    ):
        if policy not in self.POLICIES:
            raise UserError(f"the policy must be one of {', '.join(self.POLICIES)}, got {policy!r}")
        self.controller = Controller.from_checkpoint(checkpoint)
        self.metadata = migrate_controller(checkpoint).get("metadata", {})
        self.name, self.initial_lr, self.policy = name, initial_lr, policy
        self._generator: torch.Generator | None = None

    def starting_at(self, initial_lr: float) -> Learned:
        """The same controller, its episodes started from ``initial_lr``."""
        other = copy.copy(self)
        other.initial_lr = float(initial_lr)
        return other

    def check(self, env: LREnv) -> None:
        # A checkpoint without settings (made outside training) is taken to drive the paper's Adam.
        trained_with = self.metadata.get("env", {}).get("optimizer", PAPER_OPTIMIZER["optimizer"])
        if trained_with != env.config.optimizer:
            raise UserError(
                f"the controller was trained to drive {trained_with}, this env's child uses {env.config.optimizer}; "
                f"test it with --optimizer {trained_with}"
            )
        features, observed = self.metadata.get("features"), env.config.features
        if features is not None and tuple(features) != observed:
            raise UserError(
                f"the controller was trained on features {features}, this env observes {list(observed)}; "
                "test it with the --lr-feature and --time-feature settings it was trained with"
            )
        if self.controller.obs_dim != len(observed):
            raise UserError(f"the controller takes {self.controller.obs_dim} features, this env gives {len(observed)}")
        wanted = action_of(env.config).spec()
        if self.controller.action_spec != wanted:
            raise UserError(
                f"the controller's actions are {self.controller.action_spec} but this env takes {wanted}; "
                "use the controller's own --discrete/--action-range/--action-set settings"
            )
        trained = self.metadata.get("env", {})
        for name in ("action_set", "base_schedule"):
            if name in trained and trained[name] != getattr(env.config, name):
                raise UserError(
                    f"the controller was trained with {name} {trained[name]}, this env has "
                    f"{getattr(env.config, name)}; test it with --{name.replace('_', '-')} {trained[name]}"
                )

    def start(self, seed: int) -> None:
        if self.policy == "sample":
            self._generator = torch.Generator().manual_seed(seed)

    def step(self, env: LREnv, obs: np.ndarray, info: dict[str, Any]) -> StepResult:
        if self.policy == "mode":
            return env.step(self.controller.act(obs))
        if self._generator is None:
            raise RuntimeError("Learned(policy='sample').step() before start(seed)")
        return env.step(self.controller.act(obs, deterministic=False, generator=self._generator))

    def describe(self) -> dict[str, Any]:
        trained_on = self.metadata.get("env", {})
        return {
            **super().describe(),
            "trained_on": {k: trained_on.get(k) for k in ("dataset", "architecture")},
            "policy": self.policy,
        }


def paper_grid() -> list[StepDecay]:
    """The 48 step-decay schedules of the paper's grid search."""
    return [StepDecay(lr, step, factor) for lr, step, factor in product(*PAPER_GRID.values())]


def annealing_grid(total_steps: int) -> list[Cosine | Linear]:
    """Cosine and linear decay to 0 over ``total_steps`` from each of :data:`ANNEALING_GRID_LRS` (ours)."""
    return [kind(lr, total_steps) for kind in (Cosine, Linear) for lr in ANNEALING_GRID_LRS]
