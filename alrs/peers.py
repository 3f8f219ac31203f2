"""The peers' families (ours): an optimizer a user would pick instead of a schedule, tuned over a small grid.

Each family is one :class:`PeerFamily` of :data:`PEER_FAMILIES`: its grid, how a grid point becomes a
:class:`~alrs.schedules.Peer`, how a stored ``describe()`` record becomes one again, and the key under
which a grid file names its best point. Grid files and result stores are keyed by the peers' names and
records, so a family's points, their order and their labels are part of the stored formats. Adding a
family is one :func:`register_peer_family` call (its optimizer is a record of :mod:`alrs.optim`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import product
from typing import Any

from alrs.errors import UserError
from alrs.schedules import PAPER_OPTIMIZER, Constant, Cosine, Linear, Peer, WarmupLinear


@dataclass(frozen=True)
class PeerFamily:
    """One family of peers of :data:`PEER_FAMILIES`.

    Args:
        name: the family's key (``Peer.family``), e.g. ``schedule-free``.
        grid: the grid's axes, name -> values; its points are their product, in order.
        make: (grid point, an episode's optimizer steps) -> the peer.
        rebuild: a peer's ``describe()`` record -> the same peer.
        best_key: where a grid file names the family's best point, e.g. ``best_schedule_free``.
    """

    name: str
    grid: dict[str, tuple[Any, ...]]
    make: Callable[[dict[str, Any], int], Peer]
    rebuild: Callable[[dict[str, Any]], Peer]
    best_key: str

    def points(self, total_steps: int) -> list[Peer]:
        """The family's grid for episodes of ``total_steps`` optimizer steps; points that coincide on so few
        steps (warm-ups of 5 and 10% of 10 steps are both 1 step) are one point, the first."""
        unique: dict[str, Peer] = {}
        for values in product(*self.grid.values()):
            peer = self.make(dict(zip(self.grid, values, strict=True)), total_steps)
            unique.setdefault(peer.name, peer)
        return list(unique.values())


PEER_FAMILIES: dict[str, PeerFamily] = {}
"""The peers' families by name, in the order of the grid and the tables."""


def register_peer_family(family: PeerFamily) -> PeerFamily:
    """Add ``family`` to :data:`PEER_FAMILIES`; a name or best key taken is refused."""
    if family.name in PEER_FAMILIES:
        raise ValueError(f"a peer family named {family.name!r} is registered already")
    if any(f.best_key == family.best_key for f in PEER_FAMILIES.values()):
        raise ValueError(f"the best key {family.best_key!r} is another peer family's")
    PEER_FAMILIES[family.name] = family
    return family


def schedule_free(lr: float, warmup_steps: int, beta1: float = PAPER_OPTIMIZER["beta1"]) -> Peer:
    """Schedule-Free AdamW (the ``schedulefree`` package) at a constant ``lr`` after its own warm-up; a
    ``beta1`` other than Adam's 0.9 (its authors also use 0.95) is named in the label."""
    beta = "" if beta1 == PAPER_OPTIMIZER["beta1"] else f", beta1 {beta1:g}"
    label = f"schedule-free adamw (lr={lr:g}, warm-up {warmup_steps}{beta})"
    optimizer = {"optimizer": "schedulefree-adamw", "warmup_steps": warmup_steps, "beta1": float(beta1)}
    return Peer("schedule-free", Constant(lr), label, **optimizer)


def prodigy(d_coef: float, shape: str, total_steps: int) -> Peer:
    """Prodigy (the ``prodigyopt`` package) at its default LR 1, held ``constant``, ``cosine``- or
    ``linear``-decayed to 0, or ``warmup-linear`` (a 5% warm-up, then linear to 0) with the
    ``safeguard_warmup`` its authors advise for a warm-up."""
    shapes = {
        "constant": Constant,
        "cosine": lambda lr: Cosine(lr, total_steps),
        "linear": lambda lr: Linear(lr, total_steps),
        "warmup-linear": lambda lr: WarmupLinear(lr, total_steps),
    }
    if shape not in shapes:
        raise UserError(f"prodigy's LR shape must be one of {', '.join(shapes)}, got {shape!r}")
    lr_shape = shapes[shape](1.0)
    label = f"prodigy (d_coef={d_coef:g}, {shape})"
    safeguard = shape == "warmup-linear"
    return Peer("prodigy", lr_shape, label, optimizer="prodigy", d_coef=float(d_coef), safeguard_warmup=safeguard)


def adam_ema(lr: float, decay: float) -> Peer:
    """Adam at a constant ``lr``, evaluating an exponential moving average of its weights."""
    return Peer("adam-ema", Constant(lr), f"adam + ema {decay:g} (lr={lr:g})", weight_average=f"ema:{decay:g}")


# Schedule-Free AdamW's LR x warm-up (a fraction of the episode's steps) x beta1, as widely as its authors
# tune it (warm-ups of 0 to 20%, beta1 0.9 and 0.95).
register_peer_family(
    PeerFamily(
        "schedule-free",
        {"lr": (1e-3, 3e-3, 1e-2, 3e-2), "warmup_fraction": (0.0, 0.05, 0.1, 0.2), "beta1": (0.9, 0.95)},
        lambda point, steps: schedule_free(
            point["lr"],
            max(1, round(point["warmup_fraction"] * steps)) if point["warmup_fraction"] else 0,
            point["beta1"],
        ),
        lambda record: schedule_free(
            record["shape"]["initial_lr"],
            record["optimizer"].get("warmup_steps", 0),
            record["optimizer"].get("beta1", PAPER_OPTIMIZER["beta1"]),
        ),
        "best_schedule_free",
    )
)
# Prodigy's d_coef at its default LR 1, held constant, decayed (cosine, linear) or warmed up then decayed.
register_peer_family(
    PeerFamily(
        "prodigy",
        {"d_coef": (0.5, 1.0, 2.0), "shape": ("constant", "cosine", "linear", "warmup-linear")},
        lambda point, steps: prodigy(point["d_coef"], point["shape"], steps),
        lambda record: prodigy(
            record["optimizer"].get("d_coef", 1.0), record["shape"]["family"], record["shape"].get("total_steps", 0)
        ),
        "best_prodigy",
    )
)
# Adam at a constant LR, evaluating an exponential moving average of its weights.
register_peer_family(
    PeerFamily(
        "adam-ema",
        {"lr": (3e-3, 1e-2, 3e-2), "decay": (0.9, 0.95, 0.99)},
        lambda point, steps: adam_ema(point["lr"], point["decay"]),
        lambda record: adam_ema(
            record["shape"]["initial_lr"], float(record["optimizer"]["weight_average"].removeprefix("ema:"))
        ),
        "best_adam_ema",
    )
)


def peer_grid(total_steps: int) -> list[Peer]:
    """Every peer of every family's grid, family by family, for episodes of ``total_steps`` optimizer steps."""
    return [peer for family in PEER_FAMILIES.values() for peer in family.points(total_steps)]


def peer_from_record(record: dict[str, Any]) -> Peer:
    """Rebuild a peer from its ``describe()`` record."""
    if record["family"] not in PEER_FAMILIES:
        raise UserError(f"not a peer family: {record['family']!r}; known: {', '.join(PEER_FAMILIES)}")
    return PEER_FAMILIES[record["family"]].rebuild(record)


__all__ = [
    "PEER_FAMILIES",
    "PeerFamily",
    "adam_ema",
    "peer_from_record",
    "peer_grid",
    "prodigy",
    "register_peer_family",
    "schedule_free",
]
