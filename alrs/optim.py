"""The child network's optimizer, by name, and weight averaging: the one place that builds them.

The paper trains every child with Adam (Sec. 4), the default here. The others are ours, chosen by
``EnvConfig.optimizer``; the peers (an optimizer a user would pick instead of a schedule) come from
their authors' packages, never re-implemented:

- ``adam``, ``adamw``: ``torch.optim.Adam`` / ``AdamW`` (betas ``beta1``, ``beta2``; ``weight_decay``).
- ``sgd``: ``torch.optim.SGD`` with momentum 0.9 (``weight_decay``).
- ``schedulefree-adamw``: ``schedulefree.AdamWScheduleFree`` (Defazio et al., 2024) with
  ``warmup_steps``. Its evaluation weights are an average of the iterates: every validation, test
  and saved copy must run inside :func:`evaluation_weights`, which swaps them in (``optimizer.eval()``).
- ``prodigy``: ``prodigyopt.Prodigy`` (Mishchenko & Defazio, 2024) with ``d_coef``. Its LR is a
  multiplier of its own estimate ``d``; :func:`effective_lr` gives the step size it takes (lr x d).

``weight_average`` (ours) evaluates an average of the weights instead of the weights themselves,
with ``torch.optim.swa_utils.AveragedModel``: ``ema:DECAY`` (an exponential moving average,
updated after every optimizer step) or ``uniform`` (the mean of every iterate, as in SWA).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from alrs.config import OPTIMIZER_FIELDS
from alrs.errors import UserError

OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd", "schedulefree-adamw", "prodigy")
"""The child's optimizers, by name; ``adam`` is the paper's."""


SGD_MOMENTUM = 0.9


def check_optimizer(
    optimizer: str,
    beta1: float,
    beta2: float,
    weight_decay: float,
    warmup_steps: int,
    d_coef: float,
    weight_average: str | None,
) -> None:
    """A one-line error naming the first optimizer setting outside its domain."""
    if optimizer not in OPTIMIZERS:
        raise UserError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    for name, value in (("beta1", beta1), ("beta2", beta2)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise UserError(f"{name} must be a number in [0, 1), got {value!r}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not 0 <= weight_decay < math.inf:
        raise UserError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise UserError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    if isinstance(d_coef, bool) or not isinstance(d_coef, (int, float)) or not 0 < d_coef < math.inf:
        raise UserError(f"d_coef must be a finite number > 0, got {d_coef!r}")
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
    params: Iterable[torch.Tensor],
    lr: float,
    *,
    optimizer: str = "adam",
    beta1: float = 0.9,
    beta2: float = 0.999,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    d_coef: float = 1.0,
    **_: Any,
) -> torch.optim.Optimizer:
    """The child's optimizer ``optimizer`` over ``params`` at ``lr``, ready for training steps.

    Settings an optimizer has no use for are ignored (``d_coef`` for Adam, say); extra keywords
    (the other :data:`OPTIMIZER_FIELDS`) are accepted so that a config's fields can be passed whole.
    """
    betas = (beta1, beta2)
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM, weight_decay=weight_decay)
    if optimizer == "schedulefree-adamw":
        import schedulefree

        opt = schedulefree.AdamWScheduleFree(
            params, lr=lr, betas=betas, weight_decay=weight_decay, warmup_steps=warmup_steps
        )
        opt.train()  # schedule-free optimizers start in neither mode; training steps need train()
        return opt
    if optimizer == "prodigy":
        import prodigyopt

        return prodigyopt.Prodigy(params, lr=lr, betas=betas, weight_decay=weight_decay, d_coef=d_coef)
    raise UserError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")


def optimizer_class(name: str) -> type:
    """The class :func:`build_optimizer` makes for ``name`` (for checks of a user's optimizer)."""
    if name == "schedulefree-adamw":
        import schedulefree

        return schedulefree.AdamWScheduleFree
    if name == "prodigy":
        import prodigyopt

        return prodigyopt.Prodigy
    classes = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    if name not in classes:
        raise UserError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    return classes[name]


def _is_schedule_free(optimizer: torch.optim.Optimizer) -> bool:
    return "train_mode" in optimizer.param_groups[0]  # the mark the schedulefree package keeps


@contextlib.contextmanager
def evaluation_weights(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Inside, the model holds the weights to evaluate: a schedule-free optimizer's average of its
    iterates (``optimizer.eval()``, undone on leaving); any other optimizer's weights as they are."""
    if not _is_schedule_free(optimizer):
        yield
        return
    optimizer.eval()
    try:
        yield
    finally:
        optimizer.train()


def effective_lr(optimizer: torch.optim.Optimizer) -> float:
    """The step size of the first param group: its LR, times Prodigy's estimate ``d`` where it has one."""
    group = optimizer.param_groups[0]
    return float(group["lr"]) * float(group.get("d", 1.0))


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
    "OPTIMIZER_FIELDS",
    "build_optimizer",
    "check_optimizer",
    "effective_lr",
    "evaluation_weights",
    "make_averager",
    "optimizer_class",
    "parse_weight_average",
]
