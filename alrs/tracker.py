"""Everything of one LR-environment episode but the child's arithmetic: the random draws, the LR, the
observation, the reward, divergence and the end (one piece of code for LREnv and the batched children)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from alrs.actions import action_of
from alrs.config import EnvConfig
from alrs.data import check_dataset
from alrs.errors import UserError
from alrs.features import (
    divergence_reward,
    observation_tail,
    relative_child_features,
    step_reward,
)

RANDOM_INITIAL_LRS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
"""Initial LRs drawn per episode when ``initial_lr="random"`` (paper Sec. 4)."""


class EpisodeTracker:
    """Everything of one LR-environment episode but the child's arithmetic: the random draws, the
    LR, the observation, the reward, divergence and the end.

    :class:`LREnv` keeps one for its child; :class:`~alrs.vector_env.BatchedLREnv` keeps one per
    child of its batched model, so both compute observations and rewards with this same code.
    The caller trains the child and hands over its six features (:func:`alrs.features.child_features`).

    A step is ``start_step(lr)`` (``lr`` from :meth:`next_lr` for a controller's action, or set by a
    hand-made schedule), then the caller's ``update_freq`` optimizer steps, then :meth:`end_step`.
    """

    def __init__(self, config: EnvConfig) -> None:
        self.config = config
        self.action = action_of(config)
        self.np_random: np.random.Generator | None = None
        self._last_obs: np.ndarray | None = None
        self._num_classes = check_dataset(config.dataset).num_classes
        self.reference_best: list[float] | None = None  # reward=relative: the reference run's (LREnv.reset)
        self._first_child: list[float] | None = None  # the untrained child's features, for feature_scale=relative
        self._prev_train_loss: float | None = None  # the last observation's, for trend_features
        self._start_episode(math.nan)

    def begin(self, np_random: np.random.Generator, options: dict[str, Any] | None) -> int:
        """Start an episode: draw its randomness from ``np_random`` (kept for the LR noise) and its
        initial LR; returns the child's seed."""
        self.np_random = np_random
        cfg = self.config
        # The draws happen in a fixed order whatever the options, so a seed fixes the child's
        # initialization and batch order for every schedule run on it.
        child_seed = int(np_random.integers(2**62))
        drawn_lr = RANDOM_INITIAL_LRS[int(np_random.integers(len(RANDOM_INITIAL_LRS)))]
        lr_noise = float(np_random.normal())
        # Drawn only where asked for, so that runs without the spread keep every later draw (the LR noise).
        log_spread = math.log(cfg.initial_lr_spread)
        spread = float(np_random.uniform(-log_spread, log_spread)) if cfg.initial_lr_spread > 1 else 0.0
        if options and "initial_lr" in options:
            lr = float(options["initial_lr"])
            if not (lr > 0 and math.isfinite(lr)):
                raise UserError(f"initial_lr must be a positive finite number, got {lr}")
        else:
            lr = drawn_lr if cfg.initial_lr == "random" else float(cfg.initial_lr)
            if cfg.initial_lr_noise or spread:
                lr = float(np.clip(lr * math.exp(cfg.initial_lr_noise * lr_noise + spread), cfg.lr_min, cfg.lr_max))
        self._start_episode(lr)
        return child_seed

    def _start_episode(self, lr: float) -> None:
        """The state of an episode before its first optimizer step, starting at ``lr``."""
        self.lr = self.initial_lr = self.level = lr
        self.optimizer_steps = 0
        self.diverged = False
        self.best_val_loss = math.inf
        self.best_step = 0
        self.val_loss = math.inf
        self.improved = False  # whether the last step reached a new best validation loss

    def first_observation(self, features: torch.Tensor, val_acc: torch.Tensor) -> tuple[np.ndarray, dict]:
        """Observation and info of the untrained child."""
        self._first_child = self._prev_train_loss = None
        obs, info = self._observe(features, val_acc)
        self.best_val_loss = self.val_loss = info["val_loss"]
        return obs, info

    def next_lr(self, action: Any) -> float:
        """The LR after ``action``: the level moved by the factor, the optional noise and the bounds
        (:meth:`alrs.actions.Action.next_level`), times the base schedule at this step
        (:meth:`alrs.actions.Action.lr`)."""
        cfg = self.config
        log_noise = cfg.lr_noise * float(self.np_random.normal()) if cfg.lr_noise else 0.0
        self.level = self.action.next_level(self.level, action, log_noise)
        return self.action.lr(self.level, self.optimizer_steps, cfg.num_train_steps)

    def start_step(self, lr: float) -> None:
        """Check that the episode goes on, and take ``lr`` as the LR of the coming optimizer steps."""
        if self.optimizer_steps >= self.config.num_train_steps or self.diverged:
            raise RuntimeError("the episode has ended; call reset()")
        self.lr = lr

    def end_step(self, features: torch.Tensor, val_acc: torch.Tensor) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Observation, reward and end of a controller step, from the child's six features."""
        cfg = self.config
        steps_left_before = (cfg.num_train_steps - self.optimizer_steps) // cfg.update_freq
        self.optimizer_steps += cfg.update_freq
        self.improved = False
        obs, info = self._observe(features, val_acc)
        if not np.all(np.isfinite(obs)):
            # A diverged child (e.g. at LR 0.1) ends the episode: the reward charges
            # divergence_loss for every step left, and the observation stays finite.
            self.diverged = True
            obs = np.where(np.isfinite(obs), obs, self._last_obs).astype(np.float32)
            obs[[0, 1]] = cfg.divergence_loss / (self._first_child[1] if cfg.feature_scale == "relative" else 1.0)
            self._last_obs = obs
            info.update(train_loss=math.inf, val_loss=math.inf, best_val_loss=self.best_val_loss, diverged=True)
            reward = divergence_reward(
                cfg.reward, self.val_loss, self.best_val_loss, steps_left_before, cfg.divergence_loss
            )
            return obs, reward - self._reference_gain(cfg.num_train_steps), True, False, info

        prev_val, prev_best = self.val_loss, self.best_val_loss
        self.val_loss = info["val_loss"]
        if info["val_loss"] < self.best_val_loss:
            self.best_val_loss, self.best_step, self.improved = info["val_loss"], self.optimizer_steps, True
        terminated = self.optimizer_steps >= cfg.num_train_steps
        reward = step_reward(cfg.reward, prev_val, self.val_loss, prev_best, self.best_val_loss)
        return obs, reward - self._reference_gain(self.optimizer_steps), terminated, False, info

    def _reference_gain(self, to_step: int) -> float:
        """With ``reward="relative"``, the reference run's ``log-best`` reward over the optimizer steps just
        ended (to ``to_step``, or to the end where the child diverged); 0 for the other rewards."""
        if self.config.reward != "relative":
            return 0.0
        if self.reference_best is None:
            raise RuntimeError("reward=relative needs the reference run's losses (LREnv.reset makes them)")
        k = self.config.update_freq
        before = (self.optimizer_steps - k) // k
        return math.log(self.reference_best[before]) - math.log(self.reference_best[to_step // k])

    def _observe(self, features: torch.Tensor, val_acc: torch.Tensor) -> tuple[np.ndarray, dict]:
        """One host sync: the six child features and the accuracy come back together; the LR (and the
        time left, if asked for) are appended."""
        *child, acc = torch.cat([features.double(), val_acc.double().reshape(1)]).tolist()
        cfg = self.config
        observed = child
        if cfg.feature_scale == "relative":
            self._first_child = self._first_child or child
            observed = relative_child_features(child, self._first_child, self._num_classes)
        tail = observation_tail(
            cfg.features, self.lr, self.optimizer_steps, cfg.num_train_steps, child, self._prev_train_loss
        )
        self._prev_train_loss = child[0]
        obs = np.asarray([*observed, *tail], dtype=np.float32)
        info = {
            "train_loss": child[0],
            "val_loss": child[1],
            "val_acc": acc,
            "lr": self.lr,
            "effective_lr": self.lr,  # the step size taken; LREnv gives Prodigy's lr x d
            "initial_lr": self.initial_lr,
            "step": self.optimizer_steps,
            "best_val_loss": min(child[1], self.best_val_loss),
            "diverged": False,
        }
        if np.all(np.isfinite(obs)):
            self._last_obs = obs
        return obs, info
