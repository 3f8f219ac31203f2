"""Child networks: the networks whose learning rate the controller sets.

Every model takes (N, C, H, W) images and exposes ``output_layer``, the final ``nn.Linear``
whose weight mean and variance are two of the controller's features (paper Sec. 3.1).
"""

from __future__ import annotations

from torch import nn

from alrs.data import check_dataset
from alrs.errors import UserError
from alrs.models.lenet import LeNet5
from alrs.models.mlp import MLP
from alrs.models.paper_cnn import PaperCNN
from alrs.models.resnet import ResNet18

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "lenet5": LeNet5,
    "cnn": LeNet5,  # the seed's name for LeNet-5, kept for its configs and the committed results
    "resnet": ResNet18,
    "paper-cnn": PaperCNN,
}


ALIASES: dict[str, str] = {"lenet5": "cnn"}
"""Other names of an architecture -> the name results are stored under (``cnn``, the seed's name for
LeNet-5, which the committed configs and results use)."""


def check_architecture(name: str) -> type[nn.Module]:
    """The model class for ``name``, or a one-line error listing the valid names."""
    if name not in ARCHITECTURES:
        raise UserError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def build_model(architecture: str, dataset: str) -> nn.Module:
    """A freshly initialized child network ``architecture`` for images of ``dataset``."""
    info = check_dataset(dataset)
    return check_architecture(architecture)(info.image_shape, info.num_classes)


__all__ = ["ARCHITECTURES", "MLP", "LeNet5", "PaperCNN", "ResNet18", "build_model", "check_architecture"]
