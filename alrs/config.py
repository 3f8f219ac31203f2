"""The settings of a run: the environment's, PPO's and the training's, each a frozen dataclass whose fields
carry their help (:func:`alrs.settings.setting`), and the values derived from them.

Light to import: neither torch nor the environment is loaded here. The registries that say which names
are valid (datasets, architectures, optimizers, rewards, features) are asked when a configuration is
built, so that each stays the one owner of its names.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alrs.errors import UserError
from alrs.settings import setting

MAX_SEED = 2**63 - 1
"""Seeds are integers in [0, MAX_SEED]: what numpy's and torch's seeding both accept (a signed 64-bit integer)."""


def check_seed(seed: object, name: str = "seed") -> None:
    """A one-line error unless ``seed`` is None or an integer in [0, :data:`MAX_SEED`]."""
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED
    ):
        raise UserError(f"{name} must be an integer in [0, {MAX_SEED}], got {seed!r}")


TASK_SPLITS: tuple[str, ...] = ("train", "validation")
"""The tasks of an instance set an episode can draw: training, or validation (the evaluations choosing best.pt)."""


def _registry_help(module: str, function: str) -> Callable[[], str]:
    """A help built from a registry by ``module.function()`` when the parser is built (imported then, not here)."""
    return lambda: getattr(importlib.import_module(module), function)()


@dataclass(frozen=True)
class EnvConfig:
    """Every setting of an :class:`~alrs.env.LREnv`; checked on construction, saved with controllers.

    Each field's help is its documentation (and its flag's --help).
    """

    dataset: str = setting("fa-mnist", _registry_help("alrs.data", "dataset_help"))
    architecture: str = setting("cnn", _registry_help("alrs.models", "architecture_help"))
    batch_size: int = setting(1000, "the child's minibatch size (paper: 1000).")
    update_freq: int = setting(10, "optimizer steps per controller step (paper: K = 10).")
    num_train_steps: int = setting(1000, "optimizer steps per episode (paper: 1000).")
    initial_lr: float | str = setting(1e-3, 'first LR of an episode, or "random" for a draw from {1e-2, 1e-3, 1e-4}.')
    discrete: bool = setting(
        True,
        "True: actions 0/1/2 = multiply by action_range / divide by it / keep; False: one scale "
        "factor in [1/action_range, action_range].",
    )
    action_range: float = setting(1.05, "largest factor of one LR update (seed: 1.05, i.e. 5%).")
    action_set: str = setting(
        "scale",
        "scale (the paper's: the discrete or continuous factors above) or lhopt (ours: LHOPT's seven "
        "factors x0.5 to x2, discrete; alrs.actions).",
    )
    base_schedule: str = setting(
        "constant",
        "the schedule the controller's level multiplies: constant (the paper's: the level is the LR), or "
        "linear, cosine or warmup-linear (ours, residual control: a policy that always keeps follows it).",
    )
    lr_noise: float = setting(0.0, "std of Gaussian noise on log(LR) after each update (seed's option; 0 = off).")
    initial_lr_noise: float = setting(0.0, "std of Gaussian noise on log(initial LR) (0 = off).")
    initial_lr_spread: float = setting(
        1.0,
        "draw each training episode's initial LR log-uniformly in [initial LR / spread, initial LR x "
        "spread], within the LR bounds, so the policy learns to correct a bad LR (ours; LHOPT: 100); 1 = off.",
    )
    lr_min: float = setting(1e-5, "bounds of the LR the controller can set (seed: [1e-5, 1e-1]).")
    lr_max: float = setting(1e-1, "bounds of the LR the controller can set (seed: [1e-5, 1e-1]).")
    val_size: int | None = setting(
        None,
        "use a fixed subset of this many validation examples for the features and reward (cheaper, "
        "noisier features than the paper's full split; at most the split); None = the whole split (10k).",
    )
    divergence_loss: float = setting(
        5.0,
        "loss charged for every remaining controller step when the child diverges, so that diverging "
        "never pays compared with training on.",
    )
    reward: str = setting(
        "val-loss",
        "val-loss (the paper's: minus the validation loss), or ours (alrs.features): log-best, log-val, or "
        "relative (log-best less that of a reference run of the base schedule on the same child).",
    )
    lr_feature: str = setting("lr", "lr (the paper's raw LR) or log-lr (ours: log10(lr / 1e-3)).")
    time_feature: bool = setting(False, "add the fraction of the episode's optimizer steps still to come (ours).")
    trend_features: bool = setting(
        False,
        "add the log ratio of the train loss to its previous value and of the validation to the train loss "
        "(ours, after LHOPT: signs that the LR level is wrong).",
    )
    feature_scale: str = setting(
        "raw",
        "raw (the paper's features as measured) or relative (ours: scale-free, the same meaning on "
        "any dataset and network; alrs.features).",
    )
    optimizer: str = setting("adam", _registry_help("alrs.optim", "optimizer_help"))
    beta1: float = setting(0.9, "the Adam-family optimizers' betas.")
    beta2: float = setting(0.999, "the Adam-family optimizers' betas.")
    weight_decay: float = setting(
        0.0, "the optimizer's weight decay (decoupled for adamw, schedulefree-adamw and prodigy)."
    )
    warmup_steps: int = setting(0, "schedulefree-adamw's linear LR warm-up, in optimizer steps.")
    d_coef: float = setting(1.0, "prodigy's coefficient of its step-size estimate d.")
    safeguard_warmup: bool = setting(
        False, "prodigy's safeguard_warmup (its authors advise it with an LR warm-up: d does not grow too fast)."
    )
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
    task_split: str = setting(
        "train",
        "the instance set's tasks an episode draws: train, or validation (what the evaluations that choose "
        "best.pt draw, where the set has validation tasks; else its training tasks).",
    )
    eval_batch_size: int = setting(500, "chunk size of evaluation passes (speed only).", runtime=True)
    data_dir: str = setting("./data", "where the dataset files are, in torchvision's layout.", runtime=True)
    device: str = setting("auto", "cpu, cuda or auto.", runtime=True)

    def __post_init__(self) -> None:
        # The registries own their names; imported here, not above, so that importing this module stays light.
        from alrs.actions import action_of
        from alrs.data import check_dataset
        from alrs.features import check_reward, feature_names
        from alrs.models import ALIASES, check_architecture
        from alrs.optim import check_optimizer

        self._check_numbers()
        check_dataset(self.dataset)
        check_architecture(self.architecture)
        # "lenet5" is stored as "cnn", so results and configs of either name are one and the same.
        object.__setattr__(self, "architecture", ALIASES.get(self.architecture, self.architecture))
        action_of(self)  # the action kind checks its settings
        check_reward(self.reward)
        check_optimizer(**self.optimizer_settings)
        if self.task_split not in TASK_SPLITS:
            raise UserError(f"task_split must be one of {', '.join(TASK_SPLITS)}, got {self.task_split!r}")
        if self.instance_set is not None and not Path(self.instance_set).is_file():
            raise UserError(f"instance_set {self.instance_set!r}: no such file; name a JSON file of tasks")
        feature_names(self.lr_feature, self.time_feature, self.feature_scale)  # checks the names
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise UserError(f"device must be cpu, cuda or auto, got {self.device!r}")

    def _check_numbers(self) -> None:
        """One-line errors for the numeric settings: finite, positive where counts, the LR inside its bounds."""
        numbers = ("action_range", "lr_noise", "initial_lr_noise", "initial_lr_spread", "lr_min", "lr_max")
        for name in (*numbers, "divergence_loss"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"{name} must be a finite number, got {value!r}")
        if not self.divergence_loss > 0:
            raise UserError(f"divergence_loss must be positive (a loss), got {self.divergence_loss}")
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
        if self.lr_noise < 0 or self.initial_lr_noise < 0:
            raise UserError("lr_noise and initial_lr_noise must be >= 0 (0 turns the noise off)")
        if not self.initial_lr_spread >= 1:
            raise UserError(
                f"initial_lr_spread must be >= 1 (1 turns it off, 100 is LHOPT's), got {self.initial_lr_spread}"
            )
        if not 0 < self.lr_min < self.lr_max:
            raise UserError(f"need 0 < lr_min < lr_max, got lr_min={self.lr_min}, lr_max={self.lr_max}")
        if self.initial_lr != "random" and not self.lr_min <= self.initial_lr <= self.lr_max:
            raise UserError(
                f"initial_lr={self.initial_lr} is outside the controller's LR bounds [{self.lr_min}, {self.lr_max}]"
            )
        if self.val_size is not None and (not isinstance(self.val_size, int) or self.val_size <= 0):
            raise UserError(f"val_size must be a positive integer or None (the whole split), got {self.val_size!r}")

    @property
    def decisions(self) -> int:
        """Controller steps (decisions) per episode (paper: 1000 / 10 = 100)."""
        return self.num_train_steps // self.update_freq

    @property
    def optimizer_settings(self) -> dict[str, Any]:
        """The :data:`~alrs.optim.OPTIMIZER_FIELDS` of this config, by name."""
        from alrs.optim import OPTIMIZER_FIELDS

        return {name: getattr(self, name) for name in OPTIMIZER_FIELDS}

    @property
    def features(self) -> tuple[str, ...]:
        """The names of the observation's features, in order."""
        from alrs.features import feature_names

        return feature_names(self.lr_feature, self.time_feature, self.feature_scale, self.trend_features)

    def for_evaluation(self) -> EnvConfig:
        """This configuration as every evaluation runs it: without LR noise or a drawn initial LR, so a seed
        and an initial LR fix the episode, and without the relative reward's reference run (evaluations
        rank by losses, not returns; its ``log-best`` differs from it by the reference's, the same for
        every schedule run on a seed)."""
        reward = "log-best" if self.reward == "relative" else self.reward
        return dataclasses.replace(self, lr_noise=0.0, initial_lr_noise=0.0, initial_lr_spread=1.0, reward=reward)


MAX_WIDTH = 65_536
"""The widest hidden layer accepted: a controller maps 7 to 9 features to an action, and a width
beyond this is a typo that would exhaust memory rather than a choice."""


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyper-parameters.

    Each field's help is its documentation (and its flag's --help).
    """

    hidden_sizes: tuple[int, ...] = setting(
        (32, 32), "hidden layers of the actor and of the critic (seed: two of 32; paper: one of 32)."
    )
    learning_rate: float = setting(3e-4, "Adam step size for actor and critic.", flag="ppo_lr")
    gamma: float = setting(0.99, "discount factor.")
    gae_lambda: float = setting(0.95, "lambda of generalized advantage estimation.")
    num_minibatches: int = setting(4, "minibatches per epoch over the rollout.")
    update_epochs: int = setting(4, "passes over the rollout per update.")
    clip_coef: float = setting(0.2, "epsilon of the clipped surrogate objective (paper authors' code: 0.2).")
    clip_vloss: bool = setting(True, "clip the value loss around the old values as well.")
    ent_coef: float = setting(0.01, "weight of the entropy bonus.")
    vf_coef: float = setting(0.5, "weight of the value loss.")
    max_grad_norm: float = setting(0.5, "global gradient-norm clip.")
    target_kl: float | None = setting(
        None, "stop the epochs of an update early past this approximate KL (None: never)."
    )
    norm_obs: bool = setting(True, "normalize observations by running mean and variance.")
    norm_reward: bool = setting(True, "scale rewards by the running std of the discounted return.")
    clip_obs: float = setting(10.0, "clip normalized observations to [-clip_obs, clip_obs].")
    clip_reward: float = setting(10.0, "clip scaled rewards to [-clip_reward, clip_reward].")
    init_log_std: float = setting(
        -1.0,
        "initial log std of the Gaussian policy (continuous actions); -1 (std 0.37 of the half-range)"
        " keeps early samples mostly inside the action range, not at its clipped ends.",
    )
    common_reset_seed: bool = setting(
        False,
        "reset every env of a rollout with the same seed (common random numbers, ours): in the LR env"
        " its children then share initialization and batch order, so their returns differ only "
        "through the actions taken. False: seeds seed, seed + 1, ...",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
        for name in ("num_minibatches", "update_epochs"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.hidden_sizes or min(self.hidden_sizes) <= 0 or max(self.hidden_sizes) > MAX_WIDTH:
            raise UserError(f"hidden_sizes must be widths between 1 and {MAX_WIDTH}, got {list(self.hidden_sizes)}")
        for name in (
            "learning_rate",
            "gamma",
            "gae_lambda",
            "clip_coef",
            "ent_coef",
            "vf_coef",
            "max_grad_norm",
            "clip_obs",
            "clip_reward",
            "init_log_std",
            *(("target_kl",) if self.target_kl is not None else ()),
        ):
            if not math.isfinite(getattr(self, name)):
                raise UserError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        for name in ("gamma", "gae_lambda"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("learning_rate", "clip_coef", "max_grad_norm", "clip_obs", "clip_reward"):
            if not getattr(self, name) > 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class TrainingConfig:
    """How long a controller trains, and how its run chooses best.pt and reports.

    Each field's help is its documentation (and its flag's --help).
    """

    num_envs: int = setting(4, "child trainings per PPO iteration (seed: 4).")
    episodes: int = setting(1000, "episodes to train for (rounded up to whole iterations).", runtime=True)
    eval_every: int = setting(
        10,
        "PPO iterations between deterministic evaluations that choose best.pt (and one after the "
        "last; 0: none, best.pt is the controller behind the best episode, the seed's rule).",
    )
    eval_seeds: int = setting(4, "held-out seeds per deterministic evaluation.")
    tensorboard: bool = setting(
        False, "also write TensorBoard events under the run folder (needs: pip install tensorboard).", runtime=True
    )
    batched_envs: bool | None = setting(
        None,
        "train the num-envs children as one vmapped model (unset: only on CUDA, where the "
        "architecture allows; equivalent, not bitwise identical, so a run may resume with the other "
        "choice).",
        runtime=True,
    )
