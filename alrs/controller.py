"""The controller: the policy (actor, critic, and its distribution over actions), its running normalizers,
and its checkpoint format.

What a trained LR schedule is, apart from how it was trained (:mod:`alrs.ppo`): a checkpoint is
self-describing (action space, feature count and which features are fixed-scale, normalizer
statistics, weights, and the settings it was trained with under ``metadata``), so
:mod:`alrs.scheduler` and :mod:`alrs.schedules` can load and check it without PPO or the env.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
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


class ActionDistribution(ABC):
    """The policy's distribution over raw actions, one class per kind of action space (as in
    Stable-Baselines3): built from the actor's output for a batch of observations.

    A raw action is what PPO stores and scores; :meth:`to_env_action` turns it into the env's action.
    """

    @staticmethod
    @abstractmethod
    def actor_outputs(spec: dict[str, Any]) -> int:
        """The actor's output size for an action space described by ``spec``."""

    @staticmethod
    def new_parameters(spec: dict[str, Any], init_log_std: float) -> dict[str, nn.Parameter]:
        """Parameters besides the actor's, registered on the controller under these names."""
        return {}

    @classmethod
    @abstractmethod
    def of(cls, out: torch.Tensor, controller: Controller) -> ActionDistribution:
        """The distribution given the actor's output ``out`` and the controller's other parameters."""

    @abstractmethod
    def log_prob(self, raw: torch.Tensor) -> torch.Tensor:
        """Log-probability of each raw action, summed over the action's dimensions."""

    @abstractmethod
    def entropy(self) -> torch.Tensor:
        """Entropy of each observation's distribution, summed over the action's dimensions."""

    @abstractmethod
    def sample(self, generator: torch.Generator | None) -> torch.Tensor:
        """Raw actions drawn with ``generator`` (None: torch's global generator)."""

    @abstractmethod
    def mode(self) -> torch.Tensor:
        """The most likely raw actions."""

    @abstractmethod
    def to_env_action(self, raw: torch.Tensor) -> np.ndarray:
        """The env's actions for raw actions ``raw``."""


class CategoricalDistribution(ActionDistribution):
    """A ``Discrete(n)`` action: an index drawn from a categorical over the actor's ``n`` logits."""

    def __init__(self, logits: torch.Tensor):
        self.dist = torch.distributions.Categorical(logits=logits)

    @staticmethod
    def actor_outputs(spec: dict[str, Any]) -> int:
        return spec["n"]

    @classmethod
    def of(cls, out: torch.Tensor, controller: Controller) -> CategoricalDistribution:
        return cls(out)

    def log_prob(self, raw: torch.Tensor) -> torch.Tensor:
        return self.dist.log_prob(raw)

    def entropy(self) -> torch.Tensor:
        return self.dist.entropy()

    def sample(self, generator: torch.Generator | None) -> torch.Tensor:
        return torch.multinomial(self.dist.probs, 1, generator=generator).squeeze(-1)

    def mode(self) -> torch.Tensor:
        return self.dist.probs.argmax(-1)

    def to_env_action(self, raw: torch.Tensor) -> np.ndarray:
        return raw.cpu().numpy()


class DiagGaussianDistribution(ActionDistribution):
    """A bounded 1-D ``Box`` action: a Gaussian around the actor's output, its log std a state-independent
    parameter (``log_std``), the sample mapped onto ``[low, high]``."""

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor, low: float, high: float):
        self.dist = torch.distributions.Normal(mean, log_std.exp().expand_as(mean))
        self.low, self.high = low, high

    @staticmethod
    def actor_outputs(spec: dict[str, Any]) -> int:
        return 1

    @staticmethod
    def new_parameters(spec: dict[str, Any], init_log_std: float) -> dict[str, nn.Parameter]:
        return {"log_std": nn.Parameter(torch.full((1,), float(init_log_std)))}

    @classmethod
    def of(cls, out: torch.Tensor, controller: Controller) -> DiagGaussianDistribution:
        return cls(out, controller.log_std, controller.action_spec["low"], controller.action_spec["high"])

    def log_prob(self, raw: torch.Tensor) -> torch.Tensor:
        return self.dist.log_prob(raw).sum(-1)

    def entropy(self) -> torch.Tensor:
        return self.dist.entropy().sum(-1)

    def sample(self, generator: torch.Generator | None) -> torch.Tensor:
        return self.dist.mean + self.dist.stddev * torch.randn(self.dist.mean.shape, generator=generator)

    def mode(self) -> torch.Tensor:
        return self.dist.mean

    def to_env_action(self, raw: torch.Tensor) -> np.ndarray:
        """The sample clipped to [-1, 1] and mapped onto [low, high] (the log-probability stays that of the
        unclipped sample). A strictly positive range (a scale factor) is interpolated geometrically, so 0
        maps to sqrt(low * high), which is "keep" for [1/r, r]; a linear map would centre on (r + 1/r) / 2
        and drift the LR upwards."""
        low, high = self.low, self.high
        t = (raw.clamp(-1, 1) + 1) * 0.5
        action = low * (high / low) ** t if low > 0 else low + t * (high - low)
        return action.cpu().numpy().astype(np.float32)


DISTRIBUTIONS: dict[str, type[ActionDistribution]] = {
    "discrete": CategoricalDistribution,
    "box": DiagGaussianDistribution,
}
"""The policy's distribution class for each ``type`` of action space description (:func:`describe_action_space`)."""


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
        kind = action_space.get("type")
        if kind not in DISTRIBUTIONS:
            raise UserError(f"an action space of type {kind!r}: the controller knows {', '.join(DISTRIBUTIONS)}")
        self.distribution_class = DISTRIBUTIONS[kind]
        out = self.distribution_class.actor_outputs(self.action_spec)
        self.actor = _mlp(obs_dim, self.hidden_sizes, out, out_gain=0.01)  # small: near-uniform first policy
        self.critic = _mlp(obs_dim, self.hidden_sizes, 1, out_gain=1.0)
        for name, parameter in self.distribution_class.new_parameters(self.action_spec, init_log_std).items():
            self.register_parameter(name, parameter)
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

    def distribution(self, norm_obs: torch.Tensor) -> ActionDistribution:
        """The policy's distribution over raw actions for a batch of normalized observations."""
        return self.distribution_class.of(self.actor(norm_obs), self)

    @torch.no_grad()
    def act(
        self, obs: np.ndarray, deterministic: bool = True, generator: torch.Generator | None = None
    ) -> np.ndarray | int:
        """The env action for one observation, with frozen statistics: the policy's mode by default, else a
        sample drawn with ``generator`` (None: torch's global generator)."""
        dist = self.distribution(self.normalize_obs(torch.as_tensor(obs).reshape(1, -1)))
        action = dist.to_env_action(dist.mode() if deterministic else dist.sample(generator))[0]
        return action.item() if action.ndim == 0 else action  # an index as an int, a Box action as an array

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
            state = checkpoint["state_dict"]
            _check_state(state, controller)
            controller.load_state_dict(state)
            controller.normalize = checkpoint["normalize"]
        except (KeyError, TypeError, RuntimeError) as exc:
            raise UserError(
                f"a damaged alrs controller checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})"
            ) from exc
        return controller


def _check_state(state: Any, controller: Controller) -> None:
    """A one-line error unless ``state`` holds exactly ``controller``'s tensors, of its shapes, all finite,
    with positive normalizer variances and counts (a NaN would otherwise surface as NaN actions much later)."""
    if not isinstance(state, dict):
        raise UserError(f"a damaged alrs controller checkpoint (its state_dict is a {type(state).__name__})")
    expected = controller.state_dict()
    if missing := sorted(set(expected) - set(state)):
        raise UserError(f"a damaged alrs controller checkpoint (its state_dict lacks {', '.join(missing)})")
    if extra := sorted(set(state) - set(expected)):
        raise UserError(f"a damaged alrs controller checkpoint (unknown entries {', '.join(extra)})")
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise UserError(f"a damaged alrs controller checkpoint ({name} is a {type(tensor).__name__})")
        if tensor.shape != expected[name].shape:
            raise UserError(
                f"the checkpoint's {name} has shape {list(tensor.shape)}, but its own settings (obs_dim "
                f"{controller.obs_dim}, hidden_sizes {list(controller.hidden_sizes)}, action space "
                f"{controller.action_spec}) make {list(expected[name].shape)}: the file is damaged"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(
                f"the controller's {name} holds NaN or infinite values (a diverged training or a damaged file); "
                "use an earlier checkpoint"
            )
        lowest = {"var": 0.0, "count": torch.finfo(torch.float64).tiny}.get(name.rpartition("_rms.")[2])
        if lowest is not None and bool((tensor < lowest).any()):
            raise UserError(f"the controller's normalizer {name} is negative or zero: the file is damaged")


__all__ = [
    "DISTRIBUTIONS",
    "ActionDistribution",
    "CategoricalDistribution",
    "Controller",
    "DiagGaussianDistribution",
    "RunningMeanStd",
    "describe_action_space",
]
