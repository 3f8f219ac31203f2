"""The seed's MLP child network: three hidden ReLU layers."""

from __future__ import annotations

import math

import torch
from torch import nn

HIDDEN_SIZES = (512, 256, 128)
"""Our choice: the seed says "3 hidden layers" without widths; halving widths is a common MLP shape."""


ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
"""The hidden layers' activations an architecture spec may name (ReLU is the seed's)."""


class MLP(nn.Module):
    """Flatten, hidden layers (three ReLU layers by default), then a linear output layer over the classes."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int = 10,
        hidden_sizes: tuple[int, ...] = HIDDEN_SIZES,
        activation: str = "relu",
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(image_shape)
        for hidden in hidden_sizes:
            act = nn.ReLU(inplace=True) if activation == "relu" else ACTIVATIONS[activation]()
            layers += [nn.Linear(width, hidden), act]
            width = hidden
        self.features = nn.Sequential(*layers)
        self.output_layer = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.features(x))
