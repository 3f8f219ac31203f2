"""Proximal Policy Optimization (Schulman et al., 2017) for any Gymnasium vector env.

Knows only the Gymnasium API: a Box observation and a Discrete or 1-D Box action. Every
implementation detail of the well-known implementations (CleanRL, Stable-Baselines3) is
visible below with a comment saying what it is for. The paper trains its controller with PPO
and the clipped surrogate objective, epsilon 0.2 in the authors' code (Xu et al., 2019, Sec. 3.2).

Rollouts run on ``gymnasium.vector.SyncVectorEnv``; an ``AsyncVectorEnv`` (one process per
env) or a batched env with the same ``VectorEnv`` interface can replace it without changes here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from alrs.config import PPOConfig
from alrs.controller import Controller, describe_action_space
from alrs.errors import UserError


@dataclass
class Episode:
    """One finished episode: its env index, undiscounted raw return, length and per-step infos."""

    env_index: int
    episode_return: float
    length: int
    infos: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Iteration:
    """What one PPO iteration gives its caller: the finished episodes, the update's statistics, and
    the checkpoint of the controller that played the episodes (before the update changed it)."""

    episodes: list[Episode]
    stats: dict[str, float]
    acting_controller: dict[str, Any]


def _info_at(infos: dict[str, Any], i: int) -> dict[str, Any]:
    """Env ``i``'s scalar entries of a batched vector-env info dict (each key ``k`` has a mask ``_k``)."""
    out = {}
    for key, values in infos.items():
        if key.startswith("_") or isinstance(values, dict) or key == "final_obs" or not infos[f"_{key}"][i]:
            continue
        out[key] = values[i].item() if isinstance(values[i], np.generic) else values[i]
    return out


class PPO:
    """PPO over a Gymnasium vector env.

    Each iteration resets every env with seeds ``seed, seed + 1, ...``, collects
    ``num_steps`` steps per env (envs that finish early restart at once), then updates. Starting
    each iteration from seeded resets makes the state between iterations small (controller,
    optimizer, RNG, counters), so a checkpoint taken there resumes exactly.

    Args:
        envs: a ``gymnasium.vector.VectorEnv`` with autoreset mode ``SAME_STEP``.
        config: the hyper-parameters.
        num_steps: steps per env per rollout (for the LR env: its decisions, so a rollout is one episode).
        seed: seeds the controller's initialization and the sampling of actions and minibatches.
        fixed_scale: observation indices the controller does not normalize (see :class:`Controller`).
    """

    def __init__(
        self,
        envs: gym.vector.VectorEnv,
        config: PPOConfig,
        num_steps: int,
        seed: int = 0,
        fixed_scale: tuple[int, ...] = (),
    ):
        if envs.metadata.get("autoreset_mode") != gym.vector.AutoresetMode.SAME_STEP:
            raise UserError("PPO needs a vector env created with autoreset_mode=gym.vector.AutoresetMode.SAME_STEP")
        if not isinstance(envs.single_observation_space, spaces.Box) or len(envs.single_observation_space.shape) != 1:
            raise UserError(f"PPO here needs a flat Box observation space, got {envs.single_observation_space}")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps <= 0:
            raise UserError(f"num_steps must be a positive integer, got {num_steps!r}")
        self.envs, self.config, self.num_steps = envs, config, num_steps
        self.generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.controller = Controller(
                envs.single_observation_space.shape[0],
                describe_action_space(envs.single_action_space),
                config.hidden_sizes,
                config.init_log_std,
                config.clip_obs,
                fixed_scale,
            )
        self.controller.normalize = config.norm_obs
        # eps=1e-5 instead of Adam's 1e-8: the PPO implementations' choice, steadier early updates.
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=config.learning_rate, eps=1e-5)
        self.iteration = 0

    # ------------------------------------------------------------------ rollout
    def collect_rollout(self, seed: int) -> tuple[dict[str, torch.Tensor], list[Episode]]:
        """``num_steps`` steps of every env from seeded resets; returns the batch and finished episodes."""
        cfg, ctrl, n = self.config, self.controller, self.envs.num_envs
        obs_np, _ = self.envs.reset(seed=[seed] * n if cfg.common_reset_seed else seed)
        obs = torch.as_tensor(obs_np)
        discounted = np.zeros(n)  # running discounted return per env, for reward scaling
        ep_return, ep_len = np.zeros(n), np.zeros(n, dtype=int)
        ep_infos: list[list[dict]] = [[] for _ in range(n)]
        episodes: list[Episode] = []
        buf: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("obs", "actions", "logprobs", "values", "rewards", "dones")
        }

        for _ in range(self.num_steps):
            if cfg.norm_obs:
                ctrl.obs_rms.update(obs)  # statistics follow the observations the policy sees
            norm_obs = ctrl.normalize_obs(obs)
            with torch.no_grad():
                dist = ctrl.distribution(norm_obs)
                raw = dist.sample(self.generator)  # our own generator: sampling is reproducible and checkpointed
                logprob = dist.log_prob(raw)
                value = ctrl.value(norm_obs)
            obs_np, reward, terminated, truncated, infos = self.envs.step(dist.to_env_action(raw))
            done = terminated | truncated

            ep_return += reward
            ep_len += 1
            final_infos = infos.get("final_info", {})
            for i in range(n):
                ep_infos[i].append(_info_at(final_infos, i) if done[i] else _info_at(infos, i))
                if done[i]:
                    episodes.append(Episode(i, float(ep_return[i]), int(ep_len[i]), ep_infos[i]))
                    ep_return[i], ep_len[i], ep_infos[i] = 0.0, 0, []

            reward_t = torch.as_tensor(reward, dtype=torch.float64)
            if cfg.norm_reward:
                # Scale by the running std of the discounted return (not the reward): keeps value
                # targets near unit scale without shifting the reward's sign.
                discounted = discounted * cfg.gamma + reward
                ctrl.return_rms.update(torch.as_tensor(discounted))
                reward_t = (reward_t / torch.sqrt(ctrl.return_rms.var + 1e-8)).clamp(-cfg.clip_reward, cfg.clip_reward)
                discounted[done] = 0.0
            cut = truncated & ~terminated
            if cut.any():
                # A time-limit cut is not a real end: bootstrap with the value of the final observation.
                final_obs = torch.as_tensor(np.stack([infos["final_obs"][i] for i in np.flatnonzero(cut)]))
                with torch.no_grad():
                    reward_t[cut] += cfg.gamma * ctrl.value(ctrl.normalize_obs(final_obs)).double()

            for key, value_ in zip(
                buf,
                (norm_obs, raw, logprob, value, reward_t.float(), torch.as_tensor(done, dtype=torch.float32)),
                strict=True,
            ):
                buf[key].append(value_)
            obs = torch.as_tensor(obs_np)

        with torch.no_grad():
            last_value = ctrl.value(ctrl.normalize_obs(obs))
        batch = {k: torch.stack(v) for k, v in buf.items()}
        batch["advantages"], batch["returns"] = self._gae(batch, last_value)
        return batch, episodes

    def _gae(self, batch: dict[str, torch.Tensor], last_value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Generalized advantage estimation: an exponentially weighted mix of n-step advantages."""
        cfg = self.config
        values, rewards, dones = batch["values"], batch["rewards"], batch["dones"]
        advantages = torch.zeros_like(rewards)
        running = torch.zeros_like(last_value)
        for t in reversed(range(len(rewards))):
            next_value = last_value if t == len(rewards) - 1 else values[t + 1]
            not_done = 1.0 - dones[t]  # no bootstrapping across an episode's end
            delta = rewards[t] + cfg.gamma * next_value * not_done - values[t]
            running = delta + cfg.gamma * cfg.gae_lambda * not_done * running
            advantages[t] = running
        return advantages, advantages + values

    # ------------------------------------------------------------------ update
    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Several epochs of clipped-surrogate minibatch updates; returns statistics averaged over them."""
        cfg, ctrl = self.config, self.controller
        flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items()}
        size = len(flat["values"])
        stats: dict[str, list[float]] = {
            k: [] for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")
        }
        for _ in range(cfg.update_epochs):
            order = torch.randperm(size, generator=self.generator)
            for mb in torch.tensor_split(
                order, min(cfg.num_minibatches, size)
            ):  # near-equal sizes, none of 1 left over
                dist = ctrl.distribution(flat["obs"][mb])
                logprob, entropy = dist.log_prob(flat["actions"][mb]), dist.entropy()
                log_ratio = logprob - flat["logprobs"][mb]
                ratio = log_ratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - log_ratio).mean()  # unbiased, low-variance KL estimate
                    clip_fraction = ((ratio - 1).abs() > cfg.clip_coef).float().mean()

                adv = flat["advantages"][mb]
                if len(mb) > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)  # per-minibatch normalization: scale-free steps
                # Clipped surrogate: no incentive to move the ratio outside [1 - eps, 1 + eps].
                policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()

                new_value = ctrl.value(flat["obs"][mb])
                if cfg.clip_vloss:
                    # Keep the critic, too, near its old predictions.
                    clipped = flat["values"][mb] + (new_value - flat["values"][mb]).clamp(-cfg.clip_coef, cfg.clip_coef)
                    value_loss = (
                        0.5
                        * torch.max((new_value - flat["returns"][mb]) ** 2, (clipped - flat["returns"][mb]) ** 2).mean()
                    )
                else:
                    value_loss = 0.5 * ((new_value - flat["returns"][mb]) ** 2).mean()

                # The entropy bonus keeps the policy exploring.
                loss = policy_loss - cfg.ent_coef * entropy.mean() + cfg.vf_coef * value_loss
                self.optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(ctrl.parameters(), cfg.max_grad_norm)  # global norm clip: no huge steps
                self.optimizer.step()
                for key, value_ in zip(
                    stats, (policy_loss, value_loss, entropy.mean(), approx_kl, clip_fraction), strict=True
                ):
                    stats[key].append(float(value_.detach()))
            if cfg.target_kl is not None and float(approx_kl) > cfg.target_kl:
                break  # the policy moved too far from the one that collected the data
        returns, values = flat["returns"], flat["values"]
        explained = 1 - float((returns - values).var() / returns.var()) if returns.var() > 0 else math.nan
        return {**{k: float(np.mean(v)) for k, v in stats.items()}, "explained_variance": explained}

    def train_iteration(self, seed: int) -> Iteration:
        """One rollout from seeded resets and one update."""
        batch, episodes = self.collect_rollout(seed)
        acting = self.controller.checkpoint()  # the controller that produced these episodes, before the update
        stats = self.update(batch)
        self.iteration += 1
        return Iteration(episodes, stats, acting)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Controller, optimizer, RNG state and counters: enough to resume exactly."""
        return {
            "controller": self.controller.checkpoint(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "iteration": self.iteration,
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; the controller's spaces must match the env's."""
        saved = state.get("controller", {})
        if (
            saved.get("action_space") != self.controller.action_spec
            or saved.get("obs_dim") != self.controller.obs_dim
            or tuple(saved.get("fixed_scale", ())) != self.controller.fixed_scale
        ):
            raise UserError(
                f"checkpoint controller acts on {saved.get('action_space')} with {saved.get('obs_dim')} features "
                f"(fixed-scale {list(saved.get('fixed_scale', ()))}), "
                f"but this env has {self.controller.action_spec} with "
                f"{self.controller.obs_dim} (fixed-scale {list(self.controller.fixed_scale)})"
            )
        try:
            self.controller.load_state_dict(saved["state_dict"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise UserError(
                f"the checkpoint does not fit this PPO's settings ({type(exc).__name__}: {str(exc).splitlines()[0]})"
            ) from exc
        self.generator.set_state(state["generator"])
        self.iteration = state["iteration"]  # a last.pt of an older version also holds an unused global_step


def make_vector_env(env_fns: list, **kwargs: Any) -> gym.vector.SyncVectorEnv:
    """The sequential backend: envs stepped one after another in this process."""
    return gym.vector.SyncVectorEnv(env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP, **kwargs)
