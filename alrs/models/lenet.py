"""LeNet-5 (LeCun et al., 1998), the seed's CNN child network, with ReLU and max-pooling."""

from __future__ import annotations

import torch
from torch import nn


class LeNet5(nn.Module):
    """conv 6@5x5 - pool - conv 16@5x5 - pool - conv 120@5x5 - fc 84 - fc classes.

    28x28 inputs are padded by 2 in the first convolution, as in the original paper, so both
    28x28 and 32x32 images reach the 120-channel convolution as 5x5 maps. Pooling comes before
    the ReLU: the same function (ReLU is monotonic, so the two commute) on a quarter of the
    elements, which makes a training step 25% faster on the CPU (benchmarks/env_speed.py).
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int = 10):
        super().__init__()
        channels, height, _ = image_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=(32 - height) // 2),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Conv2d(6, 16, 5),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 120, 5),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
        )
        self.output_layer = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.features(x))
