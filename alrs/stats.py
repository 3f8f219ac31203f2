"""Statistics and tables of a test: mean and std per schedule, Welch's and the paired t-test, the Markdown table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from alrs.results import EpisodeResult

METRICS = (
    ("test_loss_best", "test loss"),
    ("test_acc_best", "test acc"),
    ("test_loss_final", "final-net test loss"),
    ("test_acc_final", "final-net test acc"),
)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's two-sample t-test (NaN when either side has < 2 finite values)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return math.nan  # undefined: too few values, or no spread at all
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample std (ddof=1) of the finite values; NaN where they are too few, with a note saying so
    (result files store it as null)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    out: dict[str, Any] = {
        "mean": float(v.mean()) if len(v) else math.nan,
        "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
    }
    if len(v) < 2:
        out["note"] = f"{len(v)} finite value(s) of {len(values)}: " + ("no std" if len(v) else "no mean and no std")
    return out


def paired_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test on seed-matched values (NaN when undefined)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    diff = a[ok] - b[ok]
    if len(diff) < 2 or np.ptp(diff) == 0:
        return math.nan
    return float(stats.ttest_rel(a[ok], b[ok]).pvalue)


def summarize(
    results: dict[str, list[EpisodeResult]], labels: dict[str, str], comparisons: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """Mean and std (ddof=1) of every metric per schedule, and for each ``(schedule, reference)``
    pair the mean paired difference, Welch's p and the paired t-test's p.

    Args:
        results: schedule key -> its results, in the same seed order for every schedule.
        labels: schedule key -> display label.
        comparisons: pairs of schedule keys to test.
    """
    table: dict[str, Any] = {"schedules": {}, "comparisons": []}
    for key, runs in results.items():
        table["schedules"][key] = {
            "label": labels[key],
            **{m: _mean_std([getattr(r, m) for r in runs]) for m, _ in METRICS},
            "diverged": sum(r.diverged for r in runs),
        }
    for key, ref in comparisons:
        a = {m: [getattr(r, m) for r in results[key]] for m, _ in METRICS}
        b = {m: [getattr(r, m) for r in results[ref]] for m, _ in METRICS}
        table["comparisons"].append(
            {
                "schedule": key,
                "reference": ref,
                "mean_diff": {m: _mean_std(np.subtract(a[m], b[m]))["mean"] for m, _ in METRICS},
                "welch_p": {m: welch_p(a[m], b[m]) for m, _ in METRICS},
                "paired_p": {m: paired_p(a[m], b[m]) for m, _ in METRICS},
            }
        )
        if any(math.isnan(table["comparisons"][-1]["welch_p"][m]) for m, _ in METRICS):
            table["comparisons"][-1]["note"] = (
                "a null p-value: fewer than 2 finite values on a side, or no spread at all"
            )
    return table


def result_title(dataset: str, architecture: str, name: str, num_seeds: int, transfer: bool = False) -> str:
    """The title of a test's table and figure, e.g. ``fa-mnist / cnn: <run>, 10 seeds``."""
    return f"{dataset} / {architecture}: {name}, {num_seeds} seeds" + " (transfer)" * transfer


def format_table(summary: dict[str, Any], reference: str | None = None, title: str = "") -> str:
    """Markdown in the style of the paper's Table 1, mean (std) over seeds, then the comparisons.

    ``*`` marks a schedule whose Welch p-value against ``reference`` (a schedule key) is below 0.05.
    """
    welch = {c["schedule"]: c["welch_p"] for c in summary["comparisons"] if c["reference"] == reference}
    header = "| schedule | " + " | ".join(label for _, label in METRICS) + " | diverged |"
    lines = [f"### {title}" if title else "", "", header, "|" + "---|" * (len(METRICS) + 2)]
    for key, row in summary["schedules"].items():
        cells = []
        for metric, _ in METRICS:
            star = "*" if key in welch and welch[key][metric] < 0.05 else ""
            cells.append(f"{row[metric]['mean']:.4f}{star} ({row[metric]['std']:.4f})")
        lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | {row['diverged']} |")
    lines += [
        "",
        "Test figures of the best-validation checkpoint (the paper's protocol) and of the final network; "
        "mean (std) over seeds.",
    ]
    if summary["comparisons"]:
        label = {key: row["label"] for key, row in summary["schedules"].items()}
        ref_label = f" against {label[reference]}" if reference in label else ""
        lines += [
            f"`*`: Welch's t-test{ref_label}, p < 0.05.",
            "",
            "| schedule | against | test loss difference (paired mean) | Welch p | paired t-test p |",
            "|---|---|---|---|---|",
        ]
        for c in summary["comparisons"]:
            m = "test_loss_best"
            lines.append(
                f"| {label[c['schedule']]} | {label[c['reference']]} | {c['mean_diff'][m]:+.4f} | "
                f"{c['welch_p'][m]:.3g} | {c['paired_p'][m]:.3g} |"
            )
        lines += ["", "A negative difference: the schedule's test loss is lower than the reference's (better)."]
    return "\n".join(lines).strip() + "\n"


__all__ = ["METRICS", "format_table", "paired_p", "result_title", "summarize", "welch_p"]
