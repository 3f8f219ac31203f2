"""The seed's MLP child network: three hidden ReLU layers."""

from __future__ import annotations

import math

import torch
from torch import nn

HIDDEN_SIZES = (512, 256, 128)
"""Our choice: the seed says "3 hidden layers" without widths; halving widths is a common MLP shape."""


ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
"""The hidden layers' activations an architecture spec may name (ReLU is the seed's)."""


class SeededDropout(nn.Module):
    """Dropout (ours) whose masks come from its own generator once :meth:`manual_seed` is called (by
    :func:`alrs.env.init_child`, from the child's seed), so that a seed fixes an episode whatever else runs
    in the process; unseeded, it draws from torch's global generator as ``nn.Dropout`` does."""

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self._seed: int | None = None
        self._generator: torch.Generator | None = None

    def manual_seed(self, seed: int) -> None:
        """Draw the masks from a generator seeded with ``seed`` (made on the device of the first input)."""
        self._seed, self._generator = seed, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self._seed is not None and (self._generator is None or self._generator.device != x.device):
            self._generator = torch.Generator(x.device).manual_seed(self._seed)
        keep = torch.rand(x.shape, generator=self._generator, device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MLP(nn.Module):
    """Flatten, hidden layers (three ReLU layers by default), then a linear output layer over the classes.
    Each hidden layer is linear, then optionally LayerNorm, the activation, and optionally dropout (ours)."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int = 10,
        hidden_sizes: tuple[int, ...] = HIDDEN_SIZES,
        activation: str = "relu",
        layer_norm: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(image_shape)
        for hidden in hidden_sizes:
            act = nn.ReLU(inplace=True) if activation == "relu" else ACTIVATIONS[activation]()
            layers += [nn.Linear(width, hidden), *([nn.LayerNorm(hidden)] if layer_norm else []), act]
            layers += [SeededDropout(dropout)] if dropout else []
            width = hidden
        self.features = nn.Sequential(*layers)
        self.output_layer = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.features(x))
