"""The child network's optimizer, by name, and weight averaging: the one place that builds them.

The paper trains every child with Adam (Sec. 4), the default here. The others are ours, chosen by
``EnvConfig.optimizer``; the peers (an optimizer a user would pick instead of a schedule) come from
their authors' packages, never re-implemented. Each optimizer is one :class:`OptimizerRecord` of
:data:`OPTIMIZERS`: how it is built, the settings it reads, the step size it takes
(:func:`effective_lr`; Prodigy's LR multiplies its own estimate ``d``), and whether it keeps separate
weights to evaluate (Schedule-Free's average of the iterates: every validation, test and saved copy
runs inside :func:`evaluation_weights`, which swaps them in with ``optimizer.eval()``). Adding an
optimizer is one :func:`register_optimizer` call.

``weight_average`` (ours) evaluates an average of the weights instead of the weights themselves,
with ``torch.optim.swa_utils.AveragedModel``: ``ema:DECAY`` (an exponential moving average,
updated after every optimizer step) or ``uniform`` (the mean of every iterate, as in SWA).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from alrs.errors import UserError
from alrs.settings import one_of

OPTIMIZER_FIELDS: tuple[str, ...] = (
    "optimizer",
    "beta1",
    "beta2",
    "weight_decay",
    "warmup_steps",
    "d_coef",
    "safeguard_warmup",
    "weight_average",
)
"""The :class:`~alrs.config.EnvConfig` fields that decide the child's optimizer and its evaluation weights."""

Builder = Callable[[Iterable[torch.Tensor], float, dict[str, Any]], torch.optim.Optimizer]
"""(params, lr, settings) -> an optimizer ready for training steps; ``settings`` holds the fields it reads."""


def _group_lr(group: dict[str, Any]) -> float:
    return float(group["lr"])


@dataclass(frozen=True)
class OptimizerRecord:
    """One child optimizer of :data:`OPTIMIZERS`.

    Args:
        name: its ``--optimizer`` value.
        description: a few words for ``--help``.
        class_path: its class as a user imports it, e.g. ``torch.optim.Adam`` (imported when first needed).
        build: (params, lr, settings) -> the optimizer, ready for training steps.
        reads: the :data:`~alrs.optim.OPTIMIZER_FIELDS` that ``build`` is given in ``settings``.
        step_size: a param group -> the step size it takes (its LR, unless the optimizer scales it).
        evaluation_weights: it keeps separate weights to evaluate, swapped in by ``optimizer.eval()``.
    """

    name: str
    description: str
    class_path: str
    build: Builder
    reads: tuple[str, ...] = ()
    step_size: Callable[[dict[str, Any]], float] = _group_lr
    evaluation_weights: bool = False


OPTIMIZERS: dict[str, OptimizerRecord] = {}
"""The child's optimizers by name, in the order of ``--help``; ``adam`` is the paper's."""


def register_optimizer(record: OptimizerRecord) -> OptimizerRecord:
    """Add ``record`` to :data:`OPTIMIZERS`; a name taken, or a setting that is not an optimizer's, is refused."""
    if record.name in OPTIMIZERS:
        raise ValueError(f"an optimizer named {record.name!r} is registered already")
    if unknown := sorted(set(record.reads) - set(OPTIMIZER_FIELDS)):
        raise ValueError(f"optimizer {record.name!r} reads {unknown[0]!r}, not one of {', '.join(OPTIMIZER_FIELDS)}")
    OPTIMIZERS[record.name] = record
    return record


def optimizer_record(name: str) -> OptimizerRecord:
    """The record of the optimizer ``name``, or a one-line error listing the names."""
    if name not in OPTIMIZERS:
        raise UserError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[name]


def _betas(settings: dict[str, Any]) -> tuple[float, float]:
    return settings["beta1"], settings["beta2"]


def _build_adam(params: Iterable[torch.Tensor], lr: float, settings: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, betas=_betas(settings), weight_decay=settings["weight_decay"])


def _build_adamw(params: Iterable[torch.Tensor], lr: float, settings: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, betas=_betas(settings), weight_decay=settings["weight_decay"])


SGD_MOMENTUM = 0.9


def _build_sgd(params: Iterable[torch.Tensor], lr: float, settings: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM, weight_decay=settings["weight_decay"])


def _build_schedule_free(params: Iterable[torch.Tensor], lr: float, settings: dict[str, Any]) -> torch.optim.Optimizer:
    import schedulefree

    optimizer = schedulefree.AdamWScheduleFree(
        params,
        lr=lr,
        betas=_betas(settings),
        weight_decay=settings["weight_decay"],
        warmup_steps=settings["warmup_steps"],
    )
    optimizer.train()  # schedule-free optimizers start in neither mode; training steps need train()
    return optimizer


def _build_prodigy(params: Iterable[torch.Tensor], lr: float, settings: dict[str, Any]) -> torch.optim.Optimizer:
    import prodigyopt

    return prodigyopt.Prodigy(
        params,
        lr=lr,
        betas=_betas(settings),
        weight_decay=settings["weight_decay"],
        d_coef=settings["d_coef"],
        safeguard_warmup=settings["safeguard_warmup"],
    )


def _prodigy_step_size(group: dict[str, Any]) -> float:
    return float(group["lr"]) * float(group["d"])


_ADAM_SETTINGS = ("beta1", "beta2", "weight_decay")

register_optimizer(OptimizerRecord("adam", "the paper's", "torch.optim.Adam", _build_adam, _ADAM_SETTINGS))
register_optimizer(
    OptimizerRecord("adamw", "decoupled weight decay", "torch.optim.AdamW", _build_adamw, _ADAM_SETTINGS)
)
register_optimizer(
    OptimizerRecord("sgd", f"momentum {SGD_MOMENTUM:g}", "torch.optim.SGD", _build_sgd, ("weight_decay",))
)
register_optimizer(
    OptimizerRecord(
        "schedulefree-adamw",
        "Schedule-Free AdamW, evaluated at its average of the iterates",
        "schedulefree.AdamWScheduleFree",
        _build_schedule_free,
        (*_ADAM_SETTINGS, "warmup_steps"),
        evaluation_weights=True,
    )
)
register_optimizer(
    OptimizerRecord(
        "prodigy",
        "the LR multiplies its estimate d, 1 is its default, and the LR recorded is lr x d",
        "prodigyopt.Prodigy",
        _build_prodigy,
        (*_ADAM_SETTINGS, "d_coef", "safeguard_warmup"),
        step_size=_prodigy_step_size,
    )
)


def optimizer_help() -> str:
    """The ``--optimizer`` help: every registered optimizer with its description."""
    names = [f"{r.name} ({r.description})" if r.description else r.name for r in OPTIMIZERS.values()]
    return f"the child's optimizer: {one_of(names)}; see alrs.optim."


def check_optimizer(
    optimizer: str,
    beta1: float,
    beta2: float,
    weight_decay: float,
    warmup_steps: int,
    d_coef: float,
    safeguard_warmup: bool,
    weight_average: str | None,
) -> None:
    """A one-line error naming the first optimizer setting outside its domain."""
    optimizer_record(optimizer)
    for name, value in (("beta1", beta1), ("beta2", beta2)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise UserError(f"{name} must be a number in [0, 1), got {value!r}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not 0 <= weight_decay < math.inf:
        raise UserError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise UserError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    if isinstance(d_coef, bool) or not isinstance(d_coef, (int, float)) or not 0 < d_coef < math.inf:
        raise UserError(f"d_coef must be a finite number > 0, got {d_coef!r}")
    if not isinstance(safeguard_warmup, bool):
        raise UserError(f"safeguard_warmup must be true or false, got {safeguard_warmup!r}")
    parse_weight_average(weight_average)


def parse_weight_average(spec: str | None) -> float | None:
    """The EMA decay of a ``weight_average`` setting; ``uniform`` gives 0.0 and None (off) gives None."""
    if spec is None:
        return None
    if spec == "uniform":
        return 0.0
    kind, _, decay = str(spec).partition(":")
    try:
        value = float(decay)
    except ValueError:
        value = math.nan
    if kind != "ema" or not 0 < value < 1:
        raise UserError(
            f"weight_average must be ema:DECAY with DECAY in (0, 1) (e.g. ema:0.95) or uniform, got {spec!r}"
        )
    return value


def build_optimizer(
    params: Iterable[torch.Tensor], lr: float, *, optimizer: str = "adam", **settings: Any
) -> torch.optim.Optimizer:
    """The child's optimizer ``optimizer`` over ``params`` at ``lr``, ready for training steps.

    ``settings`` are :data:`OPTIMIZER_FIELDS` (a config's, passed whole); those the optimizer does not read
    are ignored.
    """
    record = optimizer_record(optimizer)
    return record.build(params, lr, {name: settings[name] for name in record.reads})


def optimizer_class(name: str) -> type:
    """The class :func:`build_optimizer` makes for ``name`` (for checks of a user's optimizer)."""
    module, _, attribute = optimizer_record(name).class_path.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def _record_of(optimizer: torch.optim.Optimizer) -> OptimizerRecord | None:
    """The record of ``optimizer``'s class or its nearest registered base class; None for another optimizer.
    Only the classes of packages already imported are looked at: an optimizer of any other cannot exist."""
    loaded = {
        optimizer_class(name): record
        for name, record in OPTIMIZERS.items()
        if record.class_path.partition(".")[0] in sys.modules
    }
    return next((loaded[cls] for cls in type(optimizer).__mro__ if cls in loaded), None)


@contextlib.contextmanager
def evaluation_weights(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Inside, the model holds the weights to evaluate: for an optimizer with evaluation weights (Schedule-Free),
    those (``optimizer.eval()``, undone on leaving); for any other, its weights as they are."""
    record = _record_of(optimizer)
    if record is None or not record.evaluation_weights:
        yield
        return
    optimizer.eval()
    try:
        yield
    finally:
        optimizer.train()


def effective_lr(optimizer: torch.optim.Optimizer) -> float:
    """The step size of the first param group: its LR, or what its optimizer's record makes of it (Prodigy: lr x d)."""
    record = _record_of(optimizer)
    group = optimizer.param_groups[0]
    return _group_lr(group) if record is None else record.step_size(group)


def make_averager(model: nn.Module, weight_average: str | None) -> AveragedModel | None:
    """An ``AveragedModel`` of ``model`` for ``weight_average`` (None: no averaging); buffers are averaged too."""
    decay = parse_weight_average(weight_average)
    if decay is None:
        return None
    if decay == 0.0:
        return AveragedModel(model, use_buffers=True)
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


__all__ = [
    "OPTIMIZERS",
    "OptimizerRecord",
    "build_optimizer",
    "check_optimizer",
    "effective_lr",
    "evaluation_weights",
    "make_averager",
    "optimizer_class",
    "optimizer_help",
    "optimizer_record",
    "parse_weight_average",
    "register_optimizer",
]
