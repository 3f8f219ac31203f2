"""The CNN of the paper authors' released TF1 code (Xu et al., 2019), for comparison with Table 1."""

from __future__ import annotations

import torch
from torch import nn


class PaperCNN(nn.Module):
    """conv 5x5x32 (same) - maxpool 2 - conv 5x5x64 (same) - maxpool 2 - dense 512 - dense classes.

    ReLU follows each pooling rather than each convolution: the same function, cheaper (see LeNet5).
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int = 10):
        super().__init__()
        channels, height, width = image_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 5, padding=2),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(64 * (height // 4) * (width // 4), 512),
            nn.ReLU(inplace=True),
        )
        self.output_layer = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.features(x))
