"""A small convolutional child network built from a spec (ours): 1 to 3 conv layers, then one hidden layer."""

from __future__ import annotations

import torch
from torch import nn


class ConvNet(nn.Module):
    """Per conv layer: conv 5x5 (same padding) - [BatchNorm] - max-pool 2 - ReLU; then flatten - dense
    ``hidden`` - ReLU - dense classes. The pool before the ReLU computes the same function, cheaper (see LeNet5).

    ``ConvNet((1, 28, 28), channels=(16, 32), hidden=64)`` is the small CNN of the transfer check in
    issue 32: two 5x5 conv layers of 16 and 32 channels with max-pooling and a 64-unit hidden layer.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int = 10,
        channels: tuple[int, ...] = (16, 32),
        hidden: int = 64,
        batch_norm: bool = False,
    ):
        super().__init__()
        in_channels, height, width = image_shape
        layers: list[nn.Module] = []
        for out in channels:
            layers.append(nn.Conv2d(in_channels, out, 5, padding=2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers += [nn.MaxPool2d(2), nn.ReLU(inplace=True)]
            in_channels, height, width = out, height // 2, width // 2
        layers += [nn.Flatten(), nn.Linear(in_channels * height * width, hidden), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.output_layer = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.features(x))
