"""The learning-rate environment: a controller sets the LR of a child network while it trains.

One episode trains a fresh child network with Adam (the paper's; ``EnvConfig.optimizer`` chooses
another) for ``num_train_steps`` steps. Every
``update_freq`` Adam steps the controller observes the child (7 features, paper Sec. 3.1),
scales the learning rate, and is rewarded with minus the validation loss at that step
(per-step reward, paper Sec. 3.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from alrs.data import BatchSampler, Splits, check_dataset, load_dataset
from alrs.errors import UserError
from alrs.features import (
    PAPER_FEATURES,
    check_reward,
    child_features,
    feature_names,
)
from alrs.models import ALIASES as ARCHITECTURE_ALIASES
from alrs.models import build_model, check_architecture
from alrs.optim import (
    OPTIMIZER_FIELDS,
    build_optimizer,
    check_optimizer,
    effective_lr,
    evaluation_weights,
    make_averager,
)
from alrs.settings import setting
from alrs.tracker import EpisodeTracker

FEATURES: tuple[str, ...] = PAPER_FEATURES
"""The paper's observation, in order: its 7 state features (Sec. 3.1). Other feature sets:
:func:`alrs.features.feature_names`."""

MAX_SEED = 2**63 - 1
"""Seeds are integers in [0, MAX_SEED]: what numpy's and torch's seeding both accept (a signed 64-bit integer)."""


def check_seed(seed: object, name: str = "seed") -> None:
    """A one-line error unless ``seed`` is None or an integer in [0, :data:`MAX_SEED`]."""
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED
    ):
        raise UserError(f"{name} must be an integer in [0, {MAX_SEED}], got {seed!r}")


@dataclass(frozen=True)
class EnvConfig:
    """Every setting of an :class:`LREnv`; checked on construction, saved with controllers.

    Each field's help is its documentation (and its flag's --help).
    """

    dataset: str = setting("fa-mnist", "mnist, fa-mnist or cifar10.")
    architecture: str = setting(
        "cnn", ("mlp, lenet5 (LeNet-5; stored under the seed's name cnn), resnet (ResNet-18) or paper-cnn.")
    )
    batch_size: int = setting(1000, "Adam minibatch size (paper: 1000).")
    update_freq: int = setting(10, "Adam steps per controller step (paper: K = 10).")
    num_train_steps: int = setting(1000, "Adam steps per episode (paper: 1000).")
    initial_lr: float | str = setting(1e-3, 'first LR of an episode, or "random" for a draw from {1e-2, 1e-3, 1e-4}.')
    discrete: bool = setting(
        True,
        "True: actions 0/1/2 = multiply by action_range / divide by it / keep; False: one scale "
        "factor in [1/action_range, action_range].",
    )
    action_range: float = setting(1.05, "largest factor of one LR update (seed: 1.05, i.e. 5%).")
    lr_noise: float = setting(0.0, "std of Gaussian noise on log(LR) after each update (seed's option; 0 = off).")
    initial_lr_noise: float = setting(0.0, "std of Gaussian noise on log(initial LR) (0 = off).")
    lr_min: float = setting(1e-5, "bounds of the LR the controller can set (seed: [1e-5, 1e-1]).")
    lr_max: float = setting(1e-1, "bounds of the LR the controller can set (seed: [1e-5, 1e-1]).")
    val_size: int | None = setting(
        None,
        "use a fixed subset of this many validation examples for the features and reward (cheaper, "
        "noisier features than the paper's full split); None = all 10k.",
    )
    divergence_loss: float = setting(
        5.0,
        "loss charged for every remaining controller step when the child diverges, so that diverging "
        "never pays compared with training on.",
    )
    reward: str = setting(
        "val-loss",
        ("val-loss (the paper's: minus the validation loss), log-best or log-val (ours; see alrs.features)."),
    )
    lr_feature: str = setting("lr", "lr (the paper's raw LR) or log-lr (ours: log10(lr / 1e-3)).")
    time_feature: bool = setting(False, "add the fraction of the episode's Adam steps still to come (ours).")
    feature_scale: str = setting(
        "raw",
        "raw (the paper's features as measured) or relative (ours: scale-free, the same meaning on "
        "any dataset and network; alrs.features).",
    )
    optimizer: str = setting(
        "adam",
        "the child's optimizer: adam (the paper's), adamw, sgd (momentum 0.9), schedulefree-adamw or "
        "prodigy (ours; alrs.optim). With prodigy the LR is a multiplier of its estimate d (1 is its "
        "default), and the LR recorded is lr x d.",
    )
    beta1: float = setting(0.9, "the Adam-family optimizers' betas.")
    beta2: float = setting(0.999, "the Adam-family optimizers' betas.")
    weight_decay: float = setting(
        0.0, "the optimizer's weight decay (decoupled for adamw, schedulefree-adamw and prodigy)."
    )
    warmup_steps: int = setting(0, "schedulefree-adamw's linear LR warm-up, in optimizer steps.")
    d_coef: float = setting(1.0, "prodigy's coefficient of its step-size estimate d.")
    weight_average: str | None = setting(
        None,
        "evaluate averaged weights (ours): ema:DECAY (e.g. ema:0.95) or uniform; the features, "
        "reward, best-validation copy and test all see the average. Unset: the weights.",
    )
    instance_set: str | None = setting(
        None,
        "a JSON file of tasks (alrs.tasks, ours): training draws a task per episode from its training"
        " tasks, and each task sets the dataset, architecture, batch size, horizon, initial LR and "
        "validation subset (the fields above are then only defaults). Unset: one task.",
    )
    eval_batch_size: int = setting(500, "chunk size of evaluation passes (speed only).", runtime=True)
    data_dir: str = setting("./data", "where the dataset files are, in torchvision's layout.", runtime=True)
    device: str = setting("auto", "cpu, cuda or auto.", runtime=True)

    def __post_init__(self) -> None:
        for name in ("action_range", "lr_noise", "initial_lr_noise", "lr_min", "lr_max", "divergence_loss"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"{name} must be a finite number, got {value!r}")
        if not self.divergence_loss > 0:
            raise UserError(f"divergence_loss must be positive (a loss), got {self.divergence_loss}")
        check_dataset(self.dataset)
        check_architecture(self.architecture)
        # "lenet5" is stored as "cnn", so results and configs of either name are one and the same.
        object.__setattr__(self, "architecture", ARCHITECTURE_ALIASES.get(self.architecture, self.architecture))
        for name in ("batch_size", "update_freq", "num_train_steps", "eval_batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise UserError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.num_train_steps % self.update_freq:
            raise UserError(
                f"update_freq={self.update_freq} must divide num_train_steps={self.num_train_steps}; "
                f"e.g. num_train_steps={self.update_freq * max(1, round(self.num_train_steps / self.update_freq))}"
            )
        if self.initial_lr != "random" and not (isinstance(self.initial_lr, (int, float)) and 0 < self.initial_lr <= 1):
            raise UserError(f"initial_lr must be a number in (0, 1] or 'random', got {self.initial_lr!r}")
        if not self.action_range > 1:
            raise UserError(f"action_range must be > 1 (a factor such as 1.05), got {self.action_range!r}")
        if self.lr_noise < 0 or self.initial_lr_noise < 0:
            raise UserError("lr_noise and initial_lr_noise must be >= 0 (0 turns the noise off)")
        if not 0 < self.lr_min < self.lr_max:
            raise UserError(f"need 0 < lr_min < lr_max, got lr_min={self.lr_min}, lr_max={self.lr_max}")
        if self.initial_lr != "random" and not self.lr_min <= self.initial_lr <= self.lr_max:
            raise UserError(
                f"initial_lr={self.initial_lr} is outside the controller's LR bounds [{self.lr_min}, {self.lr_max}]"
            )
        if self.val_size is not None and (not isinstance(self.val_size, int) or self.val_size <= 0):
            raise UserError(f"val_size must be a positive integer or None (the whole split), got {self.val_size!r}")
        check_reward(self.reward)
        check_optimizer(**self.optimizer_settings)
        if self.instance_set is not None and not Path(self.instance_set).is_file():
            raise UserError(f"instance_set {self.instance_set!r}: no such file; name a JSON file of tasks")
        feature_names(self.lr_feature, self.time_feature, self.feature_scale)  # checks both
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise UserError(f"device must be cpu, cuda or auto, got {self.device!r}")

    @property
    def num_controller_steps(self) -> int:
        """Controller decisions per episode (paper: 1000 / 10 = 100)."""
        return self.num_train_steps // self.update_freq

    @property
    def optimizer_settings(self) -> dict[str, Any]:
        """The :data:`~alrs.optim.OPTIMIZER_FIELDS` of this config, by name."""
        return {name: getattr(self, name) for name in OPTIMIZER_FIELDS}

    @property
    def features(self) -> tuple[str, ...]:
        """The names of the observation's features, in order."""
        return feature_names(self.lr_feature, self.time_feature, self.feature_scale)


def resolve_device(device: str) -> torch.device:
    """``auto`` means CUDA when available, else the CPU; asking for absent CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device cuda was asked for but no CUDA device is available; use --device cpu")
    return torch.device(device)


class LREnv(gym.Env):
    """A Gymnasium environment in which the action scales the learning rate of a training child.

    ``reset`` builds a fresh child network and Adam optimizer; ``step`` applies the action to
    the LR, runs ``update_freq`` Adam steps and observes. Same seed, same child initialization,
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
        if cfg.val_size is not None and cfg.val_size > len(data.val_x):
            raise UserError(f"val_size={cfg.val_size} exceeds the {len(data.val_x)} validation examples")
        self.data = data
        self.val_x, self.val_y = data.val_x[: cfg.val_size], data.val_y[: cfg.val_size]

        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(len(cfg.features),), dtype=np.float32)
        if cfg.discrete:
            self.action_space: spaces.Space = spaces.Discrete(3)
        else:
            r = cfg.action_range
            self.action_space = spaces.Box(np.float32(1 / r), np.float32(r), shape=(1,), dtype=np.float32)

        # channels_last roughly halves the cost of the convolutions on the CPU (benchmarks/env_speed.py).
        conv_on_cpu = self.device.type == "cpu" and cfg.architecture != "mlp"
        self._memory_format = torch.channels_last if conv_on_cpu else torch.contiguous_format
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._averager: nn.Module | None = None
        self.episode = EpisodeTracker(cfg)

    # The episode's state, as the tracker keeps it.
    @property
    def lr(self) -> float:
        """The LR of the coming Adam steps."""
        return self.episode.lr

    @property
    def adam_steps(self) -> int:
        """Adam steps done in this episode (a controller step is ``update_freq`` of them)."""
        return self.episode.adam_steps

    @property
    def best_val_loss(self) -> float:
        return self.episode.best_val_loss

    @property
    def best_step(self) -> int:
        """The Adam step at which the best validation loss was reached."""
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
        cfg = self.config
        self.model = init_child(cfg, child_seed).to(self.device, memory_format=self._memory_format)
        self.optimizer = build_optimizer(self.model.parameters(), self.lr, **settings)
        self._averager = make_averager(self.model, settings["weight_average"])
        self._sampler = BatchSampler(len(self.data.train_x), cfg.batch_size, child_seed, self.device)
        with evaluation_weights(self.optimizer):
            model = self._evaluated_model
            val_loss, val_acc, probs = self._evaluate(model, self.val_x, self.val_y, keep_probs=True)
            self._best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            # Before any Adam step there is no train loss yet; the untrained net's validation loss stands in.
            features = child_features(
                val_loss[None], val_loss[None], probs[None], None, model.output_layer.weight[None]
            )
        self._prev_probs = probs
        obs, info = self.episode.first_observation(features[0], val_acc)
        info["effective_lr"] = effective_lr(self.optimizer)
        return obs, info

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
        """Scale the LR by ``action``, train ``update_freq`` Adam steps, observe."""
        return self.step_lr(self.episode.next_lr(action))

    def step_lr(self, lr: float) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Train ``update_freq`` Adam steps at exactly ``lr``, then observe.

        Hand-made schedules (step decay, constant) call this: they set the LR themselves and are
        not held to the controller's bounds, as the paper's baseline was not.
        """
        if self.model is None:
            raise RuntimeError("call reset() before step()")
        self.episode.start_step(lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        model, optimizer, cfg = self.model, self.optimizer, self.config
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        for _ in range(cfg.update_freq):
            idx = self._sampler.next()
            xb = self.data.train_x[idx].contiguous(memory_format=self._memory_format)
            loss = F.cross_entropy(model(xb), self.data.train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if self._averager is not None:
                self._averager.update_parameters(model)
            loss_sum += loss.detach()  # stays on the device: no host sync inside the Adam steps

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
        return build_model(config.architecture, config.dataset)


def make_env(dataset: str = "fa-mnist", architecture: str = "cnn", **options: Any) -> LREnv:
    """Build an :class:`LREnv`; ``options`` are the fields of :class:`EnvConfig`."""
    return LREnv(EnvConfig(dataset=dataset, architecture=architecture, **options))


def episode_curves(infos: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per-step ``step``, ``train_loss``, ``val_loss`` and ``lr`` (the effective LR, Prodigy's lr x d) of an
    episode's infos."""
    curves = {key: [info[key] for info in infos] for key in ("step", "train_loss", "val_loss")}
    curves["lr"] = [info["effective_lr"] for info in infos]
    return curves


__all__ = [
    "FEATURES",
    "MAX_SEED",
    "EnvConfig",
    "LREnv",
    "check_seed",
    "episode_curves",
    "init_child",
    "make_env",
    "resolve_device",
]
