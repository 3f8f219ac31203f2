"""The learning-rate environment: a controller sets the LR of a child network while it trains.

One episode trains a fresh child network with Adam (the paper's; ``EnvConfig.optimizer`` chooses
another) for ``num_train_steps`` steps. Every
``update_freq`` optimizer steps the controller observes the child (7 features, paper Sec. 3.1),
scales the learning rate, and is rewarded with minus the validation loss at that step
(per-step reward, paper Sec. 3.2).

A :class:`TaskEnv` trains, each episode, a task drawn from an instance set (:mod:`alrs.tasks`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from alrs.config import EnvConfig, check_seed
from alrs.data import BatchSampler, Splits, load_dataset
from alrs.errors import UserError
from alrs.features import (
    PAPER_FEATURES,
    child_features,
)
from alrs.models import build_model
from alrs.models.mlp import SeededDropout
from alrs.optim import (
    OPTIMIZER_FIELDS,
    build_optimizer,
    check_optimizer,
    effective_lr,
    evaluation_weights,
    make_averager,
)
from alrs.tasks import Task, load_instance_set
from alrs.tracker import EpisodeTracker

FEATURES: tuple[str, ...] = PAPER_FEATURES
"""The paper's observation, in order: its 7 state features (Sec. 3.1). Other feature sets:
:func:`alrs.features.feature_names`."""


REFERENCE_RUNS: OrderedDict[tuple[Any, ...], tuple[Splits, tuple[float, ...]]] = OrderedDict()
"""The latest reference runs of ``reward="relative"`` in this process, least recently used first, by their key:
the data, the env's settings, the child's seed, its initial LR and its optimizer settings."""
REFERENCE_RUNS_KEPT = 16
"""Reference runs kept: an iteration's children share one (``common_reset_seed``), a few iterations' suffice."""


def resolve_device(device: str) -> torch.device:
    """``auto`` means CUDA when available, else the CPU; asking for absent CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device cuda was asked for but no CUDA device is available; use --device cpu")
    return torch.device(device)


class LREnv(gym.Env):
    """A Gymnasium environment in which the action scales the learning rate of a training child.

    ``reset`` builds a fresh child network and its optimizer; ``step`` applies the action to
    the LR, runs ``update_freq`` optimizer steps and observes. Same seed, same child initialization,
    batch order, observations and rewards. The weights with the best validation loss so far are
    kept so the paper's protocol (test the best-validation checkpoint) can be followed.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, config: EnvConfig | None = None, data: Splits | None = None, **options: Any):
        """Args:
        config: the settings (or pass them as keyword ``options``).
        data: preloaded splits of ``config.dataset``'s shape, e.g. generated ones in a
            benchmark; by default the dataset is loaded (once per process) from ``data_dir``.
        """
        self.config = config if config is not None else EnvConfig(**options)
        if config is not None and options:
            raise UserError("pass either an EnvConfig or keyword options, not both")
        cfg = self.config
        self.device = resolve_device(cfg.device)
        data = load_dataset(cfg.dataset, cfg.data_dir, self.device) if data is None else data.to(self.device)
        if cfg.batch_size > len(data.train_x):
            raise UserError(f"batch_size={cfg.batch_size} exceeds the {len(data.train_x)} training examples")
        self.data = data
        # At most the split: a task's val_size may exceed a small split (the digits' 359), known only here.
        self.val_x, self.val_y = data.val_x[: cfg.val_size], data.val_y[: cfg.val_size]

        self.episode = EpisodeTracker(cfg)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(len(cfg.features),), dtype=np.float32)
        self.action_space = self.episode.action.space

        # channels_last roughly halves the cost of the convolutions on the CPU (benchmarks/env_speed.py).
        conv_on_cpu = self.device.type == "cpu" and cfg.architecture != "mlp"
        self._memory_format = torch.channels_last if conv_on_cpu else torch.contiguous_format
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._averager: nn.Module | None = None

    # The episode's state, as the tracker keeps it.
    @property
    def lr(self) -> float:
        """The LR of the coming optimizer steps."""
        return self.episode.lr

    @property
    def optimizer_steps(self) -> int:
        """optimizer steps done in this episode (a controller step is ``update_freq`` of them)."""
        return self.episode.optimizer_steps

    @property
    def best_val_loss(self) -> float:
        return self.episode.best_val_loss

    @property
    def best_step(self) -> int:
        """The optimizer step at which the best validation loss was reached."""
        return self.episode.best_step

    # ------------------------------------------------------------------ episode
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start a fresh child network. ``options`` change nothing else, so runs stay paired by seed:
        ``{"initial_lr": x}`` overrides the initial LR (hand-made schedules use it), and
        ``{"optimizer": {...}}`` overrides :data:`~alrs.optim.OPTIMIZER_FIELDS` for this episode (the peers
        and the Adam baselines use it, whatever the config's optimizer)."""
        check_seed(seed)
        super().reset(seed=seed)
        settings = self._episode_optimizer(options)
        child_seed = self.episode.begin(self.np_random, options)
        if self.config.reward == "relative":
            self.episode.reference_best = self._reference_run(child_seed, settings)
        self._start_child(child_seed, settings)
        with evaluation_weights(self.optimizer):
            model = self._evaluated_model
            val_loss, val_acc, probs = self._evaluate(model, self.val_x, self.val_y, keep_probs=True)
            self._best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            # Before any optimizer step there is no train loss yet; the untrained net's validation loss stands in.
            features = child_features(
                val_loss[None], val_loss[None], probs[None], None, model.output_layer.weight[None]
            )
        self._prev_probs = probs
        obs, info = self.episode.first_observation(features[0], val_acc)
        info["effective_lr"] = effective_lr(self.optimizer)
        return obs, info

    def _start_child(self, child_seed: int, settings: dict[str, Any]) -> None:
        """A fresh child of ``child_seed`` (its weights and batch order), its optimizer at the episode's LR."""
        cfg = self.config
        self.model = init_child(cfg, child_seed).to(self.device, memory_format=self._memory_format)
        self.optimizer = build_optimizer(self.model.parameters(), self.lr, **settings)
        self._averager = make_averager(self.model, settings["weight_average"])
        self._sampler = BatchSampler(len(self.data.train_x), cfg.batch_size, child_seed, self.device)

    def _reference_run(self, child_seed: int, settings: dict[str, Any]) -> list[float]:
        """The best validation loss so far, untrained and after each controller step, of the same child (weights,
        batches, initial LR) under the base schedule alone: the reference of ``reward="relative"``.

        A run is a function of its key alone, so the envs of one process share it (:data:`REFERENCE_RUNS`): with
        ``common_reset_seed`` every child of a PPO iteration has the same reference, computed once, not once a child.
        """
        key = (id(self.data), self.config, child_seed, self.episode.initial_lr, tuple(sorted(settings.items())))
        if key in REFERENCE_RUNS:
            REFERENCE_RUNS.move_to_end(key)
            return list(REFERENCE_RUNS[key][1])
        best = self._run_reference(child_seed, settings)
        REFERENCE_RUNS[key] = (self.data, tuple(best))  # the data held: its id stays its own while cached
        while len(REFERENCE_RUNS) > REFERENCE_RUNS_KEPT:
            REFERENCE_RUNS.popitem(last=False)
        return best

    def _run_reference(self, child_seed: int, settings: dict[str, Any]) -> list[float]:
        """Train the reference child of :meth:`_reference_run`."""
        self._start_child(child_seed, settings)
        cfg, base_lr = self.config, self.episode.action.lr  # the base schedule: a policy that always keeps
        best: list[float] = []
        for step in range(0, cfg.num_train_steps + 1, cfg.update_freq):
            if step:
                self._train_steps(base_lr(self.episode.initial_lr, step - cfg.update_freq, cfg.num_train_steps))
            with evaluation_weights(self.optimizer):
                val_loss = float(self._evaluate(self._evaluated_model, self.val_x, self.val_y, keep_probs=False)[0])
            if not math.isfinite(val_loss):  # the reference diverged: its best stays for the steps left
                return best + [best[-1]] * (cfg.decisions + 1 - len(best))
            best.append(min(best[-1], val_loss) if best else val_loss)
        return best

    def _episode_optimizer(self, options: dict[str, Any] | None) -> dict[str, Any]:
        """The optimizer settings of the coming episode: the config's, with ``options["optimizer"]`` over them."""
        overrides = (options or {}).get("optimizer") or {}
        if not isinstance(overrides, dict) or not set(overrides) <= set(OPTIMIZER_FIELDS):
            raise UserError(
                f"options['optimizer'] must map optimizer settings ({', '.join(OPTIMIZER_FIELDS)}) to values, "
                f"got {overrides!r}"
            )
        settings = {**self.config.optimizer_settings, **overrides}
        check_optimizer(**settings)
        return settings

    @property
    def _evaluated_model(self) -> nn.Module:
        """The network whose weights are evaluated: the averaged copy with ``weight_average``, else the child
        (a schedule-free child's evaluation weights are swapped in by :func:`alrs.optim.evaluation_weights`)."""
        return self.model if self._averager is None else self._averager.module

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Scale the LR by ``action``, train ``update_freq`` optimizer steps, observe."""
        return self.step_lr(self.episode.next_lr(action))

    def step_lr(self, lr: float) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Train ``update_freq`` optimizer steps at exactly ``lr``, then observe.

        Hand-made schedules (step decay, constant) call this: they set the LR themselves and are
        not held to the controller's bounds, as the paper's baseline was not.
        """
        if self.model is None:
            raise RuntimeError("call reset() before step()")
        self.episode.start_step(lr)
        loss_sum = self._train_steps(lr)
        optimizer, cfg = self.optimizer, self.config

        # The features, the reward and the best-validation copy all see the evaluation weights.
        with evaluation_weights(optimizer):
            evaluated = self._evaluated_model
            val_loss, val_acc, probs = self._evaluate(evaluated, self.val_x, self.val_y, keep_probs=True)
            features = child_features(
                (loss_sum / cfg.update_freq)[None],
                val_loss[None],
                probs[None],
                self._prev_probs[None],
                evaluated.output_layer.weight[None],
            )
            self._prev_probs = probs
            obs, reward, terminated, truncated, info = self.episode.end_step(features[0], val_acc)
            if self.episode.improved:  # keep the best-validation weights for the test set
                for name, value in evaluated.state_dict().items():
                    self._best_state[name].copy_(value)
        info["effective_lr"] = effective_lr(optimizer)
        return obs, reward, terminated, truncated, info

    def _train_steps(self, lr: float) -> torch.Tensor:
        """``update_freq`` optimizer steps at ``lr``; the sum of their losses, on the device."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        model, optimizer = self.model, self.optimizer
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        for _ in range(self.config.update_freq):
            idx = self._sampler.next()
            xb = self.data.train_x[idx].contiguous(memory_format=self._memory_format)
            loss = F.cross_entropy(model(xb), self.data.train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if self._averager is not None:
                self._averager.update_parameters(model)
            loss_sum += loss.detach()  # stays on the device: no host sync inside the optimizer steps
        return loss_sum

    # ------------------------------------------------------------------ test set
    def evaluate_test(self, which: str = "best") -> tuple[float, float]:
        """(loss, accuracy) on the test set of the ``best``-validation or the ``current`` child."""
        if self.model is None:
            raise RuntimeError("call reset() before evaluate_test()")
        if which not in ("best", "current"):
            raise UserError(f"which must be 'best' or 'current', got {which!r}")
        with evaluation_weights(self.optimizer):
            model = self._evaluated_model
            if which == "best":
                model = build_model(self.config.architecture, self.config.dataset)
                model = model.to(self.device, memory_format=self._memory_format)
                model.load_state_dict(self._best_state)
            loss, acc, _ = self._evaluate(model, self.data.test_x, self.data.test_y, keep_probs=False)
        return float(loss), float(acc)

    @torch.inference_mode()
    def _evaluate(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, keep_probs: bool
    ) -> tuple[torch.Tensor, ...]:
        """Mean loss, accuracy and (optionally) softmax predictions, as device tensors, in chunks."""
        model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        probs = []
        for start in range(0, len(x), self.config.eval_batch_size):
            xb, yb = x[start : start + self.config.eval_batch_size], y[start : start + self.config.eval_batch_size]
            logits = model(xb.contiguous(memory_format=self._memory_format))
            loss_sum += F.cross_entropy(logits, yb, reduction="sum")
            correct += (logits.argmax(1) == yb).sum()
            if keep_probs:
                probs.append(logits.softmax(1))
        model.train()
        return loss_sum / len(x), correct.float() / len(x), torch.cat(probs) if keep_probs else None


def init_child(config: EnvConfig, child_seed: int) -> nn.Module:
    """A fresh child network of ``config``, its initialization fixed by ``child_seed`` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(child_seed)
        model = build_model(config.architecture, config.dataset)
    # Dropout masks from generators of the child's own (alrs.models.mlp.SeededDropout): a seed fixes the episode.
    for i, module in enumerate(m for m in model.modules() if isinstance(m, SeededDropout)):
        module.manual_seed((child_seed + i + 1) % 2**63)
    return model


def make_env(dataset: str = "fa-mnist", architecture: str = "cnn", **options: Any) -> LREnv:
    """Build an :class:`LREnv`; ``options`` are the fields of :class:`EnvConfig`."""
    return LREnv(EnvConfig(dataset=dataset, architecture=architecture, **options))


class TaskEnv(gym.Env):
    """An LR environment whose every episode trains a task drawn from ``tasks`` (one :class:`LREnv` per task,
    built when first drawn). The draw uses the reset's seed, so a seed fixes the task and its child.

    Info gains ``task``, the task's name. Reset options pass through (``initial_lr`` overrides the task's).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, config: EnvConfig, tasks: Sequence[Task] | None = None, decisions: int | None = None):
        if tasks is None:
            if config.instance_set is None:
                raise UserError("a TaskEnv needs tasks, or a config with an instance_set")
            instance_set = load_instance_set(config.instance_set)
            tasks, decisions = instance_set.split(config.task_split), instance_set.decisions
        self.config, self.tasks, self.decisions = config, tuple(tasks), int(decisions)
        self.configs = [task.env_config(config, self.decisions) for task in self.tasks]
        self._envs: dict[int, LREnv] = {}
        self.current: LREnv | None = None
        self._task = ""
        first = self._env(0)
        self.observation_space, self.action_space = first.observation_space, first.action_space

    def _env(self, index: int) -> LREnv:
        if index not in self._envs:
            self._envs[index] = LREnv(self.configs[index])
        return self._envs[index]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        index = int(self.np_random.integers(len(self.tasks)))
        self.current, self._task = self._env(index), self.tasks[index].name
        obs, info = self.current.reset(seed=int(self.np_random.integers(2**62)), options=options)
        info["task"] = self._task
        return obs, info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.current is None:
            raise RuntimeError("call reset() before step()")
        obs, reward, terminated, truncated, info = self.current.step(action)
        info["task"] = self._task
        return obs, reward, terminated, truncated, info


def make_training_env(config: EnvConfig) -> gym.Env:
    """The env one PPO child trains on: a :class:`TaskEnv` over the instance set's training tasks, or an
    :class:`LREnv` of ``config``."""
    return TaskEnv(config) if config.instance_set is not None else LREnv(config)


def episode_curves(infos: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per-step ``step``, ``train_loss``, ``val_loss`` and ``lr`` (the effective LR, Prodigy's lr x d) of an
    episode's infos."""
    curves = {key: [info[key] for info in infos] for key in ("step", "train_loss", "val_loss")}
    curves["lr"] = [info["effective_lr"] for info in infos]
    return curves


__all__ = [
    "FEATURES",
    "LREnv",
    "TaskEnv",
    "episode_curves",
    "init_child",
    "make_env",
    "make_training_env",
    "resolve_device",
]
