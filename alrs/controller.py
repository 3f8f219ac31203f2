"""The controller: the policy (actor and critic), its running normalizers, and its checkpoint format.

What a trained LR schedule is, apart from how it was trained (:mod:`alrs.ppo`): a checkpoint is
self-describing (action space, feature count and which features are fixed-scale, normalizer
statistics, weights, and the settings it was trained with under ``metadata``), so
:mod:`alrs.scheduler` and :mod:`alrs.schedules` can load and check it without PPO or the env.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from alrs.errors import UserError
from alrs.formats import CONTROLLER_FORMAT


class RunningMeanStd(nn.Module):
    """Running mean and variance (parallel algorithm of Chan et al.); buffers, so they are checkpointed."""

    def __init__(self, shape: tuple[int, ...] = ()):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    def update(self, x: torch.Tensor) -> None:
        """Merge a batch (first dimension) into the statistics."""
        x = x.double()
        batch_mean, batch_var, batch_count = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta, total = batch_mean - self.mean, self.count + batch_count
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.mean += delta * batch_count / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)


def _layer(in_features: int, out_features: int, gain: float) -> nn.Linear:
    """Orthogonal weights and zero bias: keeps activations well scaled at the start (PPO's usual init)."""
    layer = nn.Linear(in_features, out_features)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def _mlp(in_features: int, hidden_sizes: tuple[int, ...], out_features: int, out_gain: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden_sizes:
        layers += [_layer(in_features, width, math.sqrt(2)), nn.Tanh()]
        in_features = width
    return nn.Sequential(*layers, _layer(in_features, out_features, out_gain))


def describe_action_space(space: spaces.Space) -> dict[str, Any]:
    """A plain-data description of a Discrete or bounded 1-D Box action space (saved with controllers)."""
    if isinstance(space, spaces.Discrete):
        return {"type": "discrete", "n": int(space.n)}
    if (
        isinstance(space, spaces.Box)
        and space.shape == (1,)
        and np.all(np.isfinite(space.low))
        and np.all(np.isfinite(space.high))
    ):
        return {"type": "box", "low": float(space.low[0]), "high": float(space.high[0])}
    raise UserError(f"PPO here supports a Discrete or a bounded 1-D Box action space, got {space}")


class Controller(nn.Module):
    """Actor, critic and the normalization statistics: everything needed to act, in one module.

    Args:
        obs_dim: length of the observation vector.
        action_space: ``{"type": "discrete", "n": N}`` or ``{"type": "box", "low": l, "high": h}``.
        hidden_sizes: hidden layers of actor and critic.
        init_log_std: initial log std of the Gaussian policy (box actions).
        clip_obs: clip of the normalized observations.
        fixed_scale: indices of observation entries already on a unit scale (a fixed transform):
            passed through unnormalized, so what the policy sees for them never drifts.
    """

    def __init__(
        self,
        obs_dim: int,
        action_space: dict[str, Any],
        hidden_sizes: tuple[int, ...] = (32, 32),
        init_log_std: float = -1.0,
        clip_obs: float = 10.0,
        fixed_scale: tuple[int, ...] = (),
    ):
        super().__init__()
        if any(not 0 <= i < obs_dim for i in fixed_scale):
            raise UserError(f"fixed_scale indices {fixed_scale} must lie in [0, {obs_dim})")
        self.fixed_scale = tuple(sorted(int(i) for i in fixed_scale))
        self.obs_dim, self.action_spec, self.hidden_sizes, self.clip_obs = (
            obs_dim,
            dict(action_space),
            tuple(hidden_sizes),
            clip_obs,
        )
        self.discrete = action_space["type"] == "discrete"
        out = action_space["n"] if self.discrete else 1
        self.actor = _mlp(obs_dim, self.hidden_sizes, out, out_gain=0.01)  # small: near-uniform first policy
        self.critic = _mlp(obs_dim, self.hidden_sizes, 1, out_gain=1.0)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((1,), float(init_log_std)))  # state-independent
        self.obs_rms = RunningMeanStd((obs_dim,))
        self.return_rms = RunningMeanStd(())
        self.normalize = True

    def normalize_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """Standardize by the running statistics and clip (identity when normalization is off)."""
        if not self.normalize:
            return obs.float()
        norm = ((obs.double() - self.obs_rms.mean) / torch.sqrt(self.obs_rms.var + 1e-8)).clamp(
            -self.clip_obs, self.clip_obs
        )
        if self.fixed_scale:
            norm[..., self.fixed_scale] = obs[..., self.fixed_scale].double()
        return norm.float()

    def value(self, norm_obs: torch.Tensor) -> torch.Tensor:
        return self.critic(norm_obs).squeeze(-1)

    def distribution(self, norm_obs: torch.Tensor) -> torch.distributions.Distribution:
        out = self.actor(norm_obs)
        if self.discrete:
            return torch.distributions.Categorical(logits=out)
        return torch.distributions.Normal(out, self.log_std.exp().expand_as(out))

    def to_env_action(self, raw: torch.Tensor) -> np.ndarray:
        """Policy output to env action: the index, or the Gaussian sample clipped to [-1, 1] and mapped
        onto [low, high] (the log-probability stays that of the unclipped sample). A strictly positive
        range (a scale factor) is interpolated geometrically, so 0 maps to sqrt(low * high), which is
        "keep" for [1/r, r]; a linear map would centre on (r + 1/r) / 2 and drift the LR upwards."""
        if self.discrete:
            return raw.cpu().numpy()
        low, high = self.action_spec["low"], self.action_spec["high"]
        t = (raw.clamp(-1, 1) + 1) * 0.5
        action = low * (high / low) ** t if low > 0 else low + t * (high - low)
        return action.cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def act(
        self, obs: np.ndarray, deterministic: bool = True, generator: torch.Generator | None = None
    ) -> np.ndarray | int:
        """The env action for one observation, with frozen statistics: the policy's mode by default, else a
        sample drawn with ``generator`` (None: torch's global generator)."""
        dist = self.distribution(self.normalize_obs(torch.as_tensor(obs).reshape(1, -1)))
        if deterministic:
            raw = dist.probs.argmax(-1) if self.discrete else dist.mean
        elif self.discrete:
            raw = torch.multinomial(dist.probs, 1, generator=generator).squeeze(-1)
        else:
            raw = dist.mean + dist.stddev * torch.randn(dist.mean.shape, generator=generator)
        action = self.to_env_action(raw)[0]
        return int(action) if self.discrete else action

    def checkpoint(self, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """A self-describing dict: architecture, action space, weights, normalizers, and ``metadata``."""
        return {
            "format": CONTROLLER_FORMAT,
            "obs_dim": self.obs_dim,
            "action_space": self.action_spec,
            "hidden_sizes": list(self.hidden_sizes),
            "clip_obs": self.clip_obs,
            "fixed_scale": list(self.fixed_scale),
            "normalize": self.normalize,
            "state_dict": {k: v.detach().clone() for k, v in self.state_dict().items()},  # a snapshot, not live tensors
            "metadata": metadata or {},
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> Controller:
        """Rebuild a controller saved by :meth:`checkpoint`."""
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CONTROLLER_FORMAT:
            raise UserError(f"not an alrs controller checkpoint (expected format {CONTROLLER_FORMAT!r})")
        try:
            controller = cls(
                checkpoint["obs_dim"],
                checkpoint["action_space"],
                tuple(checkpoint["hidden_sizes"]),
                clip_obs=checkpoint["clip_obs"],
                fixed_scale=tuple(checkpoint.get("fixed_scale", ())),
            )
            controller.load_state_dict(checkpoint["state_dict"])
            controller.normalize = checkpoint["normalize"]
        except (KeyError, TypeError, RuntimeError) as exc:
            raise UserError(
                f"a damaged alrs controller checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})"
            ) from exc
        return controller


__all__ = ["Controller", "RunningMeanStd", "describe_action_space"]
