"""Figures: one episode's curves, and schedules compared over seeds in the style of the paper."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from alrs.io import atomic_write


def _save(fig: Figure, path: str | os.PathLike) -> None:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


def plot_episode(curves: Mapping[str, Sequence[float]], path: str | os.PathLike, title: str = "") -> None:
    """Train loss, validation loss (log scale) and LR (log scale) against optimizer steps.

    Args:
        curves: ``step``, ``train_loss``, ``val_loss`` and ``lr`` sequences of equal length.
        path: where the PNG goes.
        title: figure title.
    """
    fig = Figure(figsize=(13, 3.6))  # not pyplot: no global state, no backend chosen
    axes = fig.subplots(1, 3)
    steps = np.asarray(curves["step"])
    for ax, key, label in zip(
        axes, ("train_loss", "val_loss", "lr"), ("train loss", "validation loss", "learning rate"), strict=True
    ):
        ax.plot(steps, np.asarray(curves[key], dtype=float), drawstyle="steps-pre" if key == "lr" else "default")
        ax.set(xlabel="optimizer step", ylabel=label, yscale="log")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    _save(fig, path)


def plot_comparison(
    runs: Mapping[str, Sequence[Mapping[str, Sequence[float]]]], path: str | os.PathLike, title: str = ""
) -> None:
    """Mean and min-max band over seeds, one line per schedule: log validation loss, train loss, LR.

    Args:
        runs: schedule name -> one curves mapping per seed (``step``, ``train_loss``, ``val_loss``, ``lr``).
        path: where the PNG goes.
        title: figure title.
    """
    columns = 3  # legend columns, below the panels and off the curves
    fig = Figure(figsize=(14, 4 + 0.25 * -(-len(runs) // columns)), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = (("val_loss", "validation loss (log)"), ("train_loss", "train loss (log)"), ("lr", "learning rate (log)"))
    for name, seeds in runs.items():
        steps = np.asarray(seeds[0]["step"])
        for ax, (key, _) in zip(axes, panels, strict=True):
            values = np.array([np.asarray(s[key], dtype=float) for s in seeds])
            values = np.where(np.isfinite(values), values, np.nan)
            mean = np.nanmean(values, axis=0)
            (line,) = ax.plot(steps, mean, label=name, drawstyle="steps-pre" if key == "lr" else "default")
            if len(seeds) > 1:
                ax.fill_between(
                    steps,
                    np.nanmin(values, axis=0),
                    np.nanmax(values, axis=0),
                    color=line.get_color(),
                    alpha=0.2,
                    step="pre" if key == "lr" else None,
                )
    # Log scale once every line is drawn: a flat first line has no range.
    for ax, (_, label) in zip(axes, panels, strict=True):
        ax.set(xlabel="optimizer step", ylabel=label, yscale="log")
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=columns, frameon=False)
    fig.suptitle(title)
    _save(fig, path)


def plot_training(
    final_val_losses: Sequence[float],
    final_lrs: Sequence[float],
    path: str | os.PathLike,
    title: str = "",
    window: int = 20,
    evaluations: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
) -> None:
    """The controller's learning curve: final validation loss and final LR of every episode, with a moving mean.

    Args:
        final_val_losses: one per episode, in order.
        final_lrs: one per episode, in order.
        path: where the PNG goes.
        title: figure title.
        window: episodes in the moving mean.
        evaluations: label -> (episodes done, mean best validation loss) of the deterministic
            evaluations that choose best.pt, drawn on the loss panel: the first curve solid (the one
            best.pt is chosen on), any others dashed (e.g. one per initial LR).
    """
    fig = Figure(figsize=(11, 4.6))  # legends below the panels, off the points
    axes = fig.subplots(1, 2)
    episodes = np.arange(1, len(final_val_losses) + 1)
    labels = ("final validation loss", "final learning rate")
    for ax, values, label in zip(axes, (final_val_losses, final_lrs), labels, strict=True):
        values = np.asarray(values, dtype=float)
        ax.plot(episodes, values, ".", alpha=0.35, label="episode")
        if len(values) >= window:
            finite = np.where(np.isfinite(values), values, np.nan)
            mean = np.convolve(np.nan_to_num(finite, nan=np.nanmax(finite)), np.ones(window) / window, mode="valid")
            ax.plot(episodes[window - 1 :], mean, label=f"mean of {window}")
        if evaluations and label == "final validation loss":
            for i, (name, curve) in enumerate(evaluations.items()):
                style = {"color": "black"} if i == 0 else {"linestyle": "--", "linewidth": 1}
                ax.plot(*curve, marker="o", markersize=3, label=name, **style)
        ax.set(xlabel="episode", ylabel=label, yscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    fig.suptitle(title)
    _save(fig, path)


def plot_suite(summary: Mapping[str, object], path: str | os.PathLike, title: str = "") -> None:
    """Each schedule's mean test loss relative to the tuned linear, one row per held-out task
    (left of 0: better than the tuned linear); the controller drawn large and black.

    Args:
        summary: :func:`alrs.suite.summarize_suite`'s result.
        path: where the PNG goes.
        title: figure title.
    """
    rows = summary["tasks"]
    tasks = list(rows)
    labels = [label for label in rows[tasks[0]]["test_loss"] if label != "linear, tuned"]
    controller = summary.get("controller")
    fig = Figure(figsize=(10, 1.2 + 0.32 * len(tasks)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(tasks))
    for label in labels:
        rel = [rows[t]["test_loss"][label] / rows[t]["test_loss"]["linear, tuned"] - 1 for t in tasks]
        style = {"color": "black", "s": 40, "zorder": 3} if label == controller else {"s": 16, "alpha": 0.8}
        ax.scatter(np.asarray(rel) * 100, y, label=label, **style)
    ax.axvline(0, color="grey", linewidth=1)
    # symlog: linear within +-10%, where the close calls are, logarithmic beyond (untuned defaults reach +1000%)
    ax.set_xscale("symlog", linthresh=10)
    ax.set(yticks=y, yticklabels=tasks, xlabel="test loss relative to the tuned linear (%, symlog)")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=3, frameon=False, fontsize="small")
    fig.suptitle(title)
    _save(fig, path)
