"""Child networks: the networks whose learning rate the controller sets.

Every model takes (N, C, H, W) images and exposes ``output_layer``, the final ``nn.Linear``
whose weight mean and variance are two of the controller's features (paper Sec. 3.1).

Besides the named architectures, a spec (ours) builds a family member, for tasks the controller
never saw (:mod:`alrs.tasks`):

- ``mlp:W1-W2-...[:ACT][:ln][:dropP]``: an MLP with those hidden widths and activation ``relu``
  (default), ``tanh`` or ``gelu``, optionally LayerNorm before each activation and dropout of
  probability P after it; e.g. ``mlp:256-128:tanh`` or ``mlp:256-128:gelu:ln:drop0.2``.
- ``convnet:C1[-C2[-C3]][:fcH][:bn]``: 1 to 3 conv layers of 5x5 kernels with those channels,
  each max-pooled, optionally batch-normalized, then a hidden layer of H units (default 64);
  e.g. ``convnet:16-32:fc64``.

A dict gives the same: ``{"family": "mlp", "hidden": [256, 128], "activation": "tanh", "layer_norm": true,
"dropout": 0.2}`` or
``{"family": "convnet", "channels": [16, 32], "hidden": 64, "batch_norm": true}``
(:func:`architecture_spec` turns it into the string).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from alrs.data import check_dataset
from alrs.errors import UserError
from alrs.models.convnet import ConvNet
from alrs.models.lenet import LeNet5
from alrs.models.mlp import ACTIVATIONS, MLP
from alrs.models.paper_cnn import PaperCNN
from alrs.models.resnet import ResNet18
from alrs.settings import one_of

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


SPECS = f"mlp:W1-W2-...[:{'|'.join(ACTIVATIONS)}][:ln][:dropP] or convnet:C1[-C2[-C3]][:fcH][:bn]"
"""The forms of an architecture spec."""


def architecture_help() -> str:
    """The ``--architecture`` help: the names (with their classes and aliases) and the specs."""
    stored_as = {name: f", stored as {ALIASES[name]}" if name in ALIASES else "" for name in ARCHITECTURES}
    names = [f"{name} ({cls.__name__}{stored_as[name]})" for name, cls in ARCHITECTURES.items()]
    examples = "e.g. mlp:256-128:tanh or convnet:16-32:fc64"
    return f"{one_of(names)}; or a spec, {SPECS}, {examples}; see alrs.models."


def _spec_error(name: Any, why: str) -> UserError:
    return UserError(f"architecture {name!r}: {why}; an architecture is a name ({', '.join(ARCHITECTURES)}), {SPECS}")


def _widths(name: str, text: str, low: int, high: int) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split("-"))
    except ValueError:
        raise _spec_error(name, f"cannot read the widths {text!r}") from None
    if not low <= len(widths) <= high or not all(0 < w <= 65_536 for w in widths):
        raise _spec_error(name, f"need {low} to {high} widths, each in 1..65536, got {text!r}")
    return widths


def _probability(text: str) -> float | None:
    """The dropout probability of ``dropP``'s P, a number in (0, 1), or None."""
    try:
        p = float(text)
    except ValueError:
        return None
    return p if 0 < p < 1 else None


def parse_architecture(name: str) -> tuple[type[nn.Module], dict[str, Any]]:
    """The model class of an architecture name or spec string, and its keyword arguments."""
    if not isinstance(name, str):
        raise _spec_error(name, "not a string (a dict spec goes through architecture_spec)")
    if name in ARCHITECTURES:
        return ARCHITECTURES[name], {}
    family, _, rest = name.partition(":")
    parts = rest.split(":") if rest else []
    if family == "mlp" and parts:
        kwargs: dict[str, Any] = {"hidden_sizes": _widths(name, parts[0], 1, 8)}
        for part in parts[1:]:
            if part in ACTIVATIONS:
                kwargs["activation"] = part
            elif part == "ln":
                kwargs["layer_norm"] = True
            elif part.startswith("drop") and _probability(part[4:]) is not None:
                kwargs["dropout"] = _probability(part[4:])
            else:
                raise _spec_error(name, f"cannot read {part!r} (an activation, {', '.join(ACTIVATIONS)}; ln; or dropP)")
        return MLP, kwargs
    if family == "convnet" and parts:
        kwargs = {"channels": _widths(name, parts[0], 1, 3)}
        for part in parts[1:]:
            if part == "bn":
                kwargs["batch_norm"] = True
            elif part.startswith("fc") and part[2:].isdigit() and 0 < int(part[2:]) <= 65_536:
                kwargs["hidden"] = int(part[2:])
            else:
                raise _spec_error(name, f"cannot read {part!r} (fcH or bn)")
        return ConvNet, kwargs
    raise _spec_error(name, "unknown")


def architecture_spec(spec: str | dict[str, Any]) -> str:
    """The spec string of an architecture given as a string or a dict (see the module's docs); checked."""
    if isinstance(spec, dict):
        family = spec.get("family")
        if family == "mlp" and set(spec) <= {"family", "hidden", "activation", "layer_norm", "dropout"}:
            text = "mlp:" + "-".join(str(w) for w in spec.get("hidden", ())) + f":{spec.get('activation', 'relu')}"
            text += (":ln" if spec.get("layer_norm") else "") + (
                f":drop{spec['dropout']:g}" if spec.get("dropout") else ""
            )
        elif family == "convnet" and set(spec) <= {"family", "channels", "hidden", "batch_norm"}:
            text = "convnet:" + "-".join(str(c) for c in spec.get("channels", ())) + f":fc{spec.get('hidden', 64)}"
            text += ":bn" if spec.get("batch_norm") else ""
        else:
            raise _spec_error(
                spec,
                "a dict spec is {family: mlp, hidden, activation, layer_norm, dropout} or "
                "{family: convnet, channels, hidden, batch_norm}",
            )
        spec = text
    parse_architecture(spec)
    return spec


def check_architecture(name: str) -> type[nn.Module]:
    """The model class for ``name`` (a name or a spec string), or a one-line error saying what is accepted."""
    return parse_architecture(name)[0]


def build_model(architecture: str, dataset: str) -> nn.Module:
    """A freshly initialized child network ``architecture`` (a name or spec) for images of ``dataset``."""
    info = check_dataset(dataset)
    cls, kwargs = parse_architecture(architecture)
    model = cls(info.image_shape, info.num_classes, **kwargs)
    return model


__all__ = [
    "ARCHITECTURES",
    "MLP",
    "ConvNet",
    "LeNet5",
    "PaperCNN",
    "ResNet18",
    "architecture_help",
    "architecture_spec",
    "build_model",
    "check_architecture",
    "parse_architecture",
]
