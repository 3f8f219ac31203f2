from __future__ import annotations

import pytest
import torch
from torch import nn

from alrs.models import ARCHITECTURES, build_model


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
@pytest.mark.parametrize("dataset,shape", [("fa-mnist", (1, 28, 28)), ("cifar10", (3, 32, 32))])
def test_output_shape_and_output_layer(architecture: str, dataset: str, shape: tuple) -> None:
    model = build_model(architecture, dataset)
    logits = model(torch.rand(2, *shape))
    assert logits.shape == (2, 10)
    assert isinstance(model.output_layer, nn.Linear) and model.output_layer.out_features == 10
    with torch.no_grad():  # the exposed layer is the one that produces the logits
        model.output_layer.weight.zero_()
        model.output_layer.bias.fill_(1.0)
    assert torch.equal(model.eval()(torch.rand(2, *shape)), torch.ones(2, 10))


def test_lenet5_layers() -> None:
    convs = [m for m in build_model("cnn", "fa-mnist").modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [6, 16, 120]


def test_resnet18_has_eight_basic_blocks_and_no_maxpool() -> None:
    model = build_model("resnet", "cifar10")
    assert sum(type(m).__name__ == "BasicBlock" for m in model.modules()) == 8
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.stem[0].kernel_size == (3, 3)


def test_paper_cnn_dense_sizes() -> None:
    linears = [m for m in build_model("paper-cnn", "fa-mnist").modules() if isinstance(m, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(7 * 7 * 64, 512), (512, 10)]


def test_unknown_architecture_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="mlp, lenet5, cnn, resnet, paper-cnn"):
        build_model("vgg", "fa-mnist")


@pytest.mark.parametrize("architecture", ["cnn", "paper-cnn"])
def test_pooling_before_relu_is_the_same_function(architecture: str) -> None:
    """The speed reordering (pool, then ReLU) must equal the textbook conv - ReLU - pool order."""
    model = build_model(architecture, "fa-mnist")
    f = list(model.features)
    assert isinstance(f[1], nn.MaxPool2d) and isinstance(f[2], nn.ReLU)
    textbook = nn.Sequential(f[0], f[2], f[1], f[3], f[5], f[4], *f[6:], model.output_layer)
    x = torch.rand(16, 1, 28, 28)
    assert torch.equal(model(x), textbook(x))


def test_lenet5_is_the_seeds_cnn_and_stored_under_its_name() -> None:
    """``lenet5`` (the docs' name) builds LeNet-5 and is stored as ``cnn``, so results of either name are shared."""
    from alrs.config import EnvConfig

    assert EnvConfig(architecture="lenet5").architecture == "cnn"
    assert type(build_model("lenet5", "fa-mnist")) is type(build_model("cnn", "fa-mnist"))
