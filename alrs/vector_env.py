"""Several LR environments whose child networks train as one batched model (torch.func).

A PPO iteration steps ``num_envs`` children in lockstep. One at a time, small children leave a
GPU mostly idle; :class:`BatchedLREnv` stacks their parameters and runs every forward, backward
and Adam step for all of them at once with ``torch.func.vmap``. Each child keeps its own seed,
initialization, minibatch order and learning rate, so the observations and rewards are those of
``num_envs`` separate :class:`~alrs.env.LREnv` (up to float rounding): the episode bookkeeping
(random draws, LR updates, rewards, divergence) is LREnv's own :class:`~alrs.tracker.EpisodeTracker`,
one for each child.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium.utils import seeding
from gymnasium.vector.utils import batch_space
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from alrs.config import EnvConfig
from alrs.data import BatchSampler, Splits, load_dataset
from alrs.env import EpisodeTracker, LREnv, init_child, make_training_env, resolve_device
from alrs.errors import UserError
from alrs.features import child_features
from alrs.ppo import make_vector_env

BATCHABLE_ARCHITECTURES: tuple[str, ...] = ("mlp", "cnn", "paper-cnn")
"""Children without batch norm: their forward pass is a pure function of the parameters.
(ResNet-18's batch-norm statistics are buffers updated in place, which vmap does not batch.)"""

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
"""torch.optim.Adam's defaults, which LREnv uses."""


def check_batchable(config: EnvConfig) -> None:
    """A one-line error unless ``config``'s child can be trained batched."""
    if config.architecture not in BATCHABLE_ARCHITECTURES:
        raise UserError(
            f"architecture {config.architecture!r} cannot be batched (batch norm); drop --batched-envs "
            f"(or pass batched=False), or use one of {', '.join(BATCHABLE_ARCHITECTURES)}"
        )
    if config.instance_set is not None:
        raise UserError("the batched children train one task; drop --batched-envs to train on an instance set")
    if config.reward == "relative":
        raise UserError("the batched children run no reference child; drop --batched-envs for the relative reward")
    # The batched step is plain Adam at torch's defaults (ADAM_BETAS), the config's defaults for these fields.
    batchable = ("optimizer", "beta1", "beta2", "weight_decay", "weight_average")
    if differ := [k for k in batchable if config.optimizer_settings[k] != getattr(EnvConfig, k)]:
        raise UserError(
            f"the batched children run plain Adam only ({', '.join(differ)} differ); drop --batched-envs "
            "(or pass batched=False) to train with this optimizer"
        )


class BatchedLREnv(gym.vector.VectorEnv):
    """``num_envs`` LR environments, their children trained as one vmapped model.

    A Gymnasium vector env with autoreset mode ``SAME_STEP`` (what :class:`~alrs.ppo.PPO` needs):
    an episode that ends is reset within the same step, its last observation in
    ``infos["final_obs"]``. Meant for training controllers; unlike LREnv it keeps no
    best-validation weights and has no test-set evaluation (use LREnv for schedules and tests).

    Args:
        config: the settings every child shares; ``config.architecture`` must be one of
            :data:`BATCHABLE_ARCHITECTURES`.
        num_envs: children trained together.
        data: preloaded splits, as for LREnv; by default loaded once from ``config.data_dir``.
    """

    metadata: ClassVar[dict[str, Any]] = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    def __init__(self, config: EnvConfig, num_envs: int, data: Splits | None = None):
        check_batchable(config)
        if num_envs <= 0:
            raise UserError(f"num_envs must be positive, got {num_envs}")
        device = resolve_device(config.device)
        data = load_dataset(config.dataset, config.data_dir, device) if data is None else data.to(device)
        single = LREnv(config, data=data)  # checks the sizes and gives the spaces; it never builds a child
        # One tracker per child: that child's episode bookkeeping, LREnv's own code (alrs.tracker.EpisodeTracker).
        self._episodes = [EpisodeTracker(config) for _ in range(num_envs)]
        self._rngs: list[np.random.Generator | None] = [None] * num_envs  # seeded as gymnasium seeds an env
        self.config, self.device, self.data = config, device, single.data
        self.val_x, self.val_y = single.val_x, single.val_y
        self.num_envs = num_envs
        self.single_observation_space = single.observation_space
        self.single_action_space = single.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)

        self._base = init_child(config, 0).to("meta")  # the architecture only; parameters come stacked
        self.params: dict[str, torch.Tensor] = {}
        self._exp_avg: dict[str, torch.Tensor] = {}
        self._exp_avg_sq: dict[str, torch.Tensor] = {}
        self._optimizer_steps = torch.zeros(num_envs, dtype=torch.float64, device=device)
        self._samplers: list[BatchSampler | None] = [None] * num_envs
        self._prev_probs: torch.Tensor | None = None  # (E, N, classes), allocated at the first reset
        # Per child: gradient and loss of one minibatch; vmapped over the stacked children.
        self._grad_and_loss = vmap(grad_and_value(self._loss))
        self._batched_forward = vmap(self._forward, in_dims=(0, None))  # every child, the same inputs

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every child; ``seed`` as in Gymnasium's vector envs (an int seeds envs seed, seed+1, ...)."""
        if options and "reset_mask" in options:
            raise UserError("BatchedLREnv resets every child at once; it has no reset_mask")
        seeds = vector_seeds(seed, self.num_envs)
        child_seeds = [self._begin(i, s, options) for i, s in enumerate(seeds)]
        everyone = list(range(self.num_envs))
        self._init_children(everyone, child_seeds)
        obs, infos = np.zeros((self.num_envs, *self.single_observation_space.shape), np.float32), {}
        for i, (o, info) in zip(everyone, self._first_observations(everyone), strict=True):
            obs[i], infos = o, self._add_info(infos, info, i)
        return obs, infos

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Every child: scale its LR by its action, ``update_freq`` Adam steps, observe; reset ended ones."""
        if not self.params:
            raise RuntimeError("call reset() before step()")
        cfg, n = self.config, self.num_envs
        if len(actions) != n:
            raise UserError(f"need one action per env ({n}), got {len(actions)}")
        for env, action in zip(self._episodes, actions, strict=True):
            env.start_step(env.next_lr(action))
        lr = torch.tensor([env.lr for env in self._episodes], dtype=torch.float64, device=self.device)

        loss_sum = torch.zeros(n, device=self.device)
        for _ in range(cfg.update_freq):
            idx = torch.stack([sampler.next() for sampler in self._samplers])  # (E, batch)
            grads, loss = self._grad_and_loss(self.params, self.data.train_x[idx], self.data.train_y[idx])
            self._adam_update(grads, lr)
            loss_sum += loss.detach()  # stays on the device: no host sync inside the Adam steps

        val_loss, val_acc, probs = self._evaluate(self.params)
        features = child_features(loss_sum / cfg.update_freq, val_loss, probs, self._prev_probs, self._output_weight())
        self._prev_probs.copy_(probs)
        features, val_acc = _to_host(features, val_acc)

        obs, rewards = np.zeros((n, *self.single_observation_space.shape), np.float32), np.zeros(n)
        terminated, truncated = np.zeros(n, bool), np.zeros(n, bool)
        infos: dict[str, Any] = {}
        for i, env in enumerate(self._episodes):
            obs[i], rewards[i], terminated[i], truncated[i], info = env.end_step(features[i], val_acc[i])
            infos = self._add_info(
                infos, {"final_obs": obs[i].copy(), "final_info": info} if terminated[i] or truncated[i] else info, i
            )

        ended = np.flatnonzero(terminated | truncated).tolist()
        if ended:  # SAME_STEP autoreset: ended children restart at once, with fresh draws
            self._init_children(ended, [self._begin(i, None, None) for i in ended])
            for i, (o, info) in zip(ended, self._first_observations(ended), strict=True):
                obs[i], infos = o, self._add_info(infos, info, i)
        return obs, rewards, terminated, truncated, infos

    # ------------------------------------------------------------------ children
    def _begin(self, i: int, seed: int | None, options: dict[str, Any] | None) -> int:
        """Child ``i``'s next episode; a seed reseeds its generator, None continues it (as ``gym.Env.reset``)."""
        if seed is not None or self._rngs[i] is None:
            self._rngs[i], _ = seeding.np_random(seed)
        return self._episodes[i].begin(self._rngs[i], options)

    def _init_children(self, indices: list[int], child_seeds: list[int]) -> None:
        """Fresh children (and Adam states) in slots ``indices``, initialized as LREnv would."""
        params, _ = stack_module_state([init_child(self.config, s).to(self.device) for s in child_seeds])
        if not self.params:
            shapes = {k: (self.num_envs, *v.shape[1:]) for k, v in params.items()}
            self.params = {k: params[k].new_empty(shape) for k, shape in shapes.items()}
            self._exp_avg = {k: params[k].new_zeros(shape) for k, shape in shapes.items()}
            self._exp_avg_sq = {k: params[k].new_zeros(shape) for k, shape in shapes.items()}
        slots = torch.tensor(indices, device=self.device)
        for name, value in params.items():
            self.params[name][slots] = value.detach()
            self._exp_avg[name][slots] = 0.0
            self._exp_avg_sq[name][slots] = 0.0
        self._optimizer_steps[slots] = 0.0
        for i, s in zip(indices, child_seeds, strict=True):
            self._samplers[i] = BatchSampler(len(self.data.train_x), self.config.batch_size, s, self.device)

    def _first_observations(self, indices: list[int]) -> list[tuple[np.ndarray, dict[str, Any]]]:
        """Observation and info of the fresh children in ``indices`` (the others are left as they are)."""
        slots = torch.tensor(indices, device=self.device)
        val_loss, val_acc, probs = self._evaluate({k: v[slots] for k, v in self.params.items()})
        if self._prev_probs is None:
            self._prev_probs = torch.empty((self.num_envs, *probs.shape[1:]), device=self.device)
        self._prev_probs[slots] = probs
        # Before any Adam step the untrained net's validation loss stands in for the train loss (as LREnv).
        features, val_acc = _to_host(
            child_features(val_loss, val_loss, probs, None, self._output_weight()[slots]), val_acc
        )
        return [self._episodes[i].first_observation(features[row], val_acc[row]) for row, i in enumerate(indices)]

    def _forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self._base, params, (x,))

    def _loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self._forward(params, x), y)

    def _adam_update(self, grads: dict[str, torch.Tensor], lr: torch.Tensor) -> None:
        """torch.optim.Adam's update, with one learning rate and one step count per child."""
        (beta1, beta2), eps = ADAM_BETAS, ADAM_EPS
        self._optimizer_steps += 1
        bias_correction1 = 1 - beta1**self._optimizer_steps
        bias_correction2_sqrt = (1 - beta2**self._optimizer_steps).sqrt().float()
        step_size = (lr / bias_correction1).float()
        for name, param in self.params.items():
            grad, exp_avg, exp_avg_sq = grads[name], self._exp_avg[name], self._exp_avg_sq[name]
            per_child = (-1,) + (1,) * (param.dim() - 1)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt.view(per_child)).add_(eps)
            param.sub_(step_size.view(per_child) * exp_avg / denom)

    @torch.inference_mode()
    def _evaluate(self, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per child: mean validation loss, accuracy and softmax predictions (E, N, classes), in chunks."""
        num_children = next(iter(params.values())).shape[0]
        loss_sum = torch.zeros(num_children, device=self.device)
        correct = torch.zeros(num_children, device=self.device, dtype=torch.long)
        probs = []
        for start in range(0, len(self.val_x), self.config.eval_batch_size):
            xb = self.val_x[start : start + self.config.eval_batch_size]
            yb = self.val_y[start : start + self.config.eval_batch_size]
            logits = self._batched_forward(params, xb)  # (E, chunk, classes)
            loss_sum += F.cross_entropy(logits.transpose(1, 2), yb.expand(num_children, -1), reduction="none").sum(1)
            correct += (logits.argmax(2) == yb).sum(1)
            probs.append(logits.softmax(2))
        n = len(self.val_x)
        return loss_sum / n, correct.float() / n, torch.cat(probs, dim=1)

    def _output_weight(self) -> torch.Tensor:
        return self.params["output_layer.weight"]


def _to_host(features: torch.Tensor, val_acc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (E, 6) and accuracies (E,) on the CPU, in one host sync for all children."""
    both = torch.cat([features, val_acc[:, None]], dim=1).cpu()
    return both[:, :-1], both[:, -1]


def vector_seeds(seed: int | Sequence[int | None] | None, num_envs: int) -> list[int | None]:
    """Per-env seeds as Gymnasium's vector envs take them: None, an int (envs get seed, seed + 1, ...),
    or one seed per env."""
    if seed is None or isinstance(seed, int):
        return [None if seed is None else seed + i for i in range(num_envs)]
    if len(seed) != num_envs:
        raise UserError(f"need one seed per env ({num_envs}), got {len(seed)}")
    return list(seed)


def _can_batch(config: EnvConfig) -> bool:
    try:
        check_batchable(config)
    except UserError:
        return False
    return True


def make_lr_envs(config: EnvConfig, num_envs: int, batched: bool | None = None) -> gym.vector.VectorEnv:
    """The vector env PPO trains on.

    Args:
        config: the LR environment's settings.
        num_envs: children per PPO iteration.
        batched: True: :class:`BatchedLREnv`; False: ``num_envs`` LREnvs stepped one by one;
            None: batched where it pays, i.e. on a CUDA device with a batchable architecture and optimizer.
    """
    if batched is None:
        batched = resolve_device(config.device).type == "cuda" and _can_batch(config)
    if batched:
        return BatchedLREnv(config, num_envs)
    return make_vector_env([lambda: make_training_env(config)] * num_envs)


__all__ = ["BATCHABLE_ARCHITECTURES", "BatchedLREnv", "check_batchable", "make_lr_envs", "vector_seeds"]
