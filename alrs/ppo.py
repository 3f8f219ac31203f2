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


class _EpisodeLog:
    """The episode under way in each env (raw return, length, per-step infos), and the episodes finished."""

    def __init__(self, num_envs: int):
        self.returns, self.lengths = np.zeros(num_envs), np.zeros(num_envs, dtype=int)
        self.infos: list[list[dict[str, Any]]] = [[] for _ in range(num_envs)]
        self.finished: list[Episode] = []

    def add_step(self, reward: np.ndarray, done: np.ndarray, infos: dict[str, Any]) -> None:
        """Count one step of every env; an env that is done closes its episode (its last info: ``final_info``)."""
        self.returns += reward
        self.lengths += 1
        final_infos = infos.get("final_info", {})
        for i in range(len(done)):
            self.infos[i].append(_info_at(final_infos, i) if done[i] else _info_at(infos, i))
            if done[i]:
                self.finished.append(Episode(i, float(self.returns[i]), int(self.lengths[i]), self.infos[i]))
                self.returns[i], self.lengths[i], self.infos[i] = 0.0, 0, []


def _explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """``1 - Var(returns - values) / Var(returns)``: the share of the returns' variance the critic predicts."""
    return 1 - float((returns - values).var() / returns.var()) if returns.var() > 0 else math.nan


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
        log = _EpisodeLog(n)
        discounted = np.zeros(n)  # running discounted return per env, for reward scaling
        steps: list[dict[str, torch.Tensor]] = []

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
            log.add_step(reward, done, infos)

            reward_t, discounted = self._scale_rewards(reward, done, discounted)
            self._bootstrap_time_limits(reward_t, terminated, truncated, infos)
            steps.append(
                {
                    "obs": norm_obs,  # as the policy saw it: the update scores the same input
                    "actions": raw,  # the raw sample, whose log-probability is scored (not the env's action)
                    "logprobs": logprob,  # of the acting policy: the denominator of the update's ratio
                    "values": value,  # the critic's, for GAE and the value clip
                    "rewards": reward_t.float(),  # scaled, a cut episode's last one bootstrapped
                    "dones": torch.as_tensor(done, dtype=torch.float32),  # GAE does not bootstrap across these
                }
            )
            obs = torch.as_tensor(obs_np)  # an env that finished has already restarted (autoreset SAME_STEP)

        with torch.no_grad():
            last_value = ctrl.value(ctrl.normalize_obs(obs))  # bootstraps the episodes the rollout cuts off
        batch = {key: torch.stack([step[key] for step in steps]) for key in steps[0]}
        batch["advantages"], batch["returns"] = self._gae(batch, last_value)
        return batch, log.finished

    def _scale_rewards(
        self, reward: np.ndarray, done: np.ndarray, discounted: np.ndarray
    ) -> tuple[torch.Tensor, np.ndarray]:
        """The rewards to learn from, and the running discounted returns after them.

        With ``norm_reward``, scaled by the running std of the discounted return (not of the reward):
        keeps value targets near unit scale without shifting the reward's sign.
        """
        cfg, ctrl = self.config, self.controller
        reward_t = torch.as_tensor(reward, dtype=torch.float64)
        if not cfg.norm_reward:
            return reward_t, discounted
        discounted = discounted * cfg.gamma + reward
        ctrl.return_rms.update(torch.as_tensor(discounted))
        reward_t = (reward_t / torch.sqrt(ctrl.return_rms.var + 1e-8)).clamp(-cfg.clip_reward, cfg.clip_reward)
        discounted[done] = 0.0  # an episode's end starts a new discounted return
        return reward_t, discounted

    def _bootstrap_time_limits(
        self, reward_t: torch.Tensor, terminated: np.ndarray, truncated: np.ndarray, infos: dict[str, Any]
    ) -> None:
        """A time-limit cut is not a real end: add the discounted value of the final observation to the
        reward of a cut episode's last step (in place)."""
        cut = truncated & ~terminated
        if cut.any():
            final_obs = torch.as_tensor(np.stack([infos["final_obs"][i] for i in np.flatnonzero(cut)]))
            with torch.no_grad():
                final_value = self.controller.value(self.controller.normalize_obs(final_obs))
            reward_t[cut] += self.config.gamma * final_value.double()

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
        flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items()}  # (steps, envs, ...) -> (steps * envs, ...)
        size = len(flat["values"])
        stats: dict[str, list[float]] = {
            k: [] for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")
        }
        for _ in range(cfg.update_epochs):
            order = torch.randperm(size, generator=self.generator)  # a new shuffle each epoch, from our generator
            for mb in torch.tensor_split(order, min(cfg.num_minibatches, size)):  # near-equal sizes, no lone 1
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
                value_loss = self._value_loss(ctrl.value(flat["obs"][mb]), flat["values"][mb], flat["returns"][mb])

                # The entropy bonus keeps the policy exploring.
                loss = policy_loss - cfg.ent_coef * entropy.mean() + cfg.vf_coef * value_loss
                self.optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(ctrl.parameters(), cfg.max_grad_norm)  # global norm clip: no huge steps
                self.optimizer.step()
                for key, value_ in zip(
                    stats, (policy_loss, value_loss, entropy.mean(), approx_kl, clip_fraction), strict=True
                ):
                    stats[key].append(float(value_.detach()))  # averaged over every minibatch of the update
            if cfg.target_kl is not None and float(approx_kl) > cfg.target_kl:
                break  # the policy moved too far from the one that collected the data
        explained = _explained_variance(flat["values"], flat["returns"])
        return {**{k: float(np.mean(v)) for k, v in stats.items()}, "explained_variance": explained}

    def _value_loss(self, new_value: torch.Tensor, old_value: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
        """Half the critic's squared error; with ``clip_vloss`` the larger of that and the error of the new
        prediction clipped around the old one, which keeps the critic, too, near its old predictions."""
        cfg = self.config
        if not cfg.clip_vloss:
            return 0.5 * ((new_value - returns) ** 2).mean()
        clipped = old_value + (new_value - old_value).clamp(-cfg.clip_coef, cfg.clip_coef)
        return 0.5 * torch.max((new_value - returns) ** 2, (clipped - returns) ** 2).mean()

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
