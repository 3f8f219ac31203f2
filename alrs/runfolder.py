"""The run folder of a controller's training: its layout, and reading it back (the one place that fixes it).

A run folder holds:
    config.json   every setting, the git commit and library versions (written by the script)
    metrics.csv   one row per finished episode
    last.pt       PPO state, counters and best-so-far: enough to resume exactly
    best.pt       the controller with the lowest mean best validation loss in the deterministic
                  evaluations (eval.csv); with evaluations off (eval_every=0), the controller after
                  whose rollout an episode reached the lowest final validation loss (the seed's rule)
    eval.csv      one row per deterministic evaluation: the policy's mode on held-out seeds
    evals/        every evaluated controller, iter_NNNN.pt (``test.py --checkpoint iter-N``), so that a
                  controller can be tested on another rule than best.pt's (from one initial LR, say)
    .lock         held by the process writing the folder (an advisory lock; see alrs.io.FolderLock)
    .lock.holder  the host and PID of that process, while it writes (for the message a second writer gets)
    tensorboard/  the same figures as TensorBoard events (with ``tensorboard=True``; metrics.csv stays the record)
    episode.png   curves of the latest episode, redrawn at most every 30 s and after the last iteration
    training.png  final validation loss and LR of every episode so far: the controller's learning curve
"""

from __future__ import annotations

import csv
import datetime
import io
import os
from pathlib import Path

from alrs.errors import UserError
from alrs.formats import migrate_metrics_header
from alrs.io import atomic_write

CONFIG_FILE, METRICS_FILE, EVAL_FILE, LAST_FILE, BEST_FILE = (
    "config.json",
    "metrics.csv",
    "eval.csv",
    "last.pt",
    "best.pt",
)
EPISODE_PLOT, TRAINING_PLOT, LOCK_FILE, EVALS_DIR, TENSORBOARD_DIR = (
    "episode.png",
    "training.png",
    ".lock",
    "evals",
    "tensorboard",
)
METRICS_COLUMNS = (
    "episode",
    "iteration",
    "env",
    "return",
    "final_val_loss",
    "best_val_loss",
    "final_lr",
    "wall_time",
    "policy_loss",
    "value_loss",
    "entropy",
    "approx_kl",
    "clip_fraction",
    "explained_variance",
    "initial_lr",
)
EVAL_COLUMNS = ("iteration", "episodes", "mean_best_val_loss", "per_initial_lr", "wall_time")


def new_run_dir(out_dir: str | os.PathLike, name: str) -> Path:
    """A fresh folder ``<out_dir>/<name>_<time>`` (``-2``, ``-3``, ... if taken); an ``out_dir`` that is a
    file is a one-line error."""
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UserError(f"--out-dir {out_dir} is a file, not a folder; name a folder")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(out_dir) / f"{name.replace(':', '-')}_{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def resolve_run(test_id: str, out_dir: str | os.PathLike) -> Path:
    """The run folder named by ``test_id``: a path, or an id under ``out_dir`` (one that would leave it, with
    ``..`` or as an absolute path, is refused); else an error listing the runs."""
    if "\x00" in test_id:
        raise UserError(f"--test-id {test_id!r} holds a NUL character; name a run")
    if (Path(test_id) / CONFIG_FILE).is_file():
        return Path(test_id)
    if Path(test_id).is_absolute() or ".." in Path(test_id).parts:
        raise UserError(
            f"--test-id {test_id}: no run folder there, and an id under {out_dir} cannot leave it (.. or an "
            "absolute path); name an existing run folder or a run under --out-dir"
        )
    if (Path(out_dir) / test_id / CONFIG_FILE).is_file():
        return Path(out_dir) / test_id
    runs = sorted(p.parent.name for p in Path(out_dir).glob(f"*/{CONFIG_FILE}"))
    listing = ", ".join(runs) if runs else "none"
    raise UserError(
        f"no run {test_id!r} (looked for {test_id} and {Path(out_dir) / test_id}); runs in {out_dir}: {listing}"
    )


def evaluated_checkpoint(run_dir: str | Path, iteration: int) -> Path:
    """The file of the controller evaluated after ``iteration`` (in ``run_dir/evals``)."""
    return Path(run_dir) / EVALS_DIR / f"iter_{iteration:04d}.pt"


def evaluated_iterations(run_dir: str | Path) -> dict[int, Path]:
    """The run's kept evaluated controllers, by iteration in increasing order."""
    found = {int(p.stem.removeprefix("iter_")): p for p in (Path(run_dir) / EVALS_DIR).glob("iter_*.pt")}
    return dict(sorted(found.items()))


def checkpoint_file(run_dir: str | Path, checkpoint: str) -> Path:
    """The file ``test.py --checkpoint`` names: ``best`` (best.pt, chosen by the run's deterministic
    evaluations), ``last`` (last.pt, where training ended) or ``iter-N`` (the controller evaluated
    after iteration N, in the run's evals/); a one-line error for anything else or a missing file."""
    run_dir = Path(run_dir)
    if checkpoint in ("best", "last"):
        return run_dir / (BEST_FILE if checkpoint == "best" else LAST_FILE)
    number = checkpoint.removeprefix("iter-")
    if not (checkpoint.startswith("iter-") and number.isdigit()):
        raise UserError(f"--checkpoint must be best, last or iter-N (an evaluated iteration), got {checkpoint!r}")
    path = evaluated_checkpoint(run_dir, int(number))
    if not path.is_file():
        saved = [f"iter-{i}" for i in evaluated_iterations(run_dir)]
        raise UserError(
            f"--checkpoint {checkpoint}: {path} does not exist; the run's evaluated controllers are: "
            f"{', '.join(saved) or 'none (a run before evals/ was kept, or without evaluations)'}"
        )
    return path


def csv_columns(path: Path, *columns: str) -> list[list[float]]:
    """Columns of metrics.csv or eval.csv as floats."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [[float(row[c]) for row in rows] for c in columns]


def evaluation_curves(path: Path) -> dict[str, tuple[list[float], list[float]]]:
    """The evaluations of an ``eval.csv`` as learning curves (episodes done, mean best validation loss):
    the mean that chooses best.pt first, then one curve per initial LR when the run trains from several."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    episodes = [float(row["episodes"]) for row in rows]
    per_lr = [dict(item.split(":") for item in row["per_initial_lr"].split()) for row in rows]
    label = "policy mode, held-out seeds (best val loss)" + (", mean" if len(per_lr[0]) > 1 else "")
    curves = {label: (episodes, [float(row["mean_best_val_loss"]) for row in rows])}
    if len(per_lr[0]) > 1:
        for lr in per_lr[0]:
            curves[f"policy mode from lr={lr}"] = (episodes, [float(losses[lr]) for losses in per_lr])
    return curves


def truncate_csv(path: Path, columns: tuple[str, ...], keep_up_to: int) -> None:
    """On resume: check the file's header and that it holds every row up to ``keep_up_to`` (by its first
    column), then drop the rows past it (written by an iteration interrupted before last.pt was saved)."""
    if not path.is_file():
        raise UserError(f"{path}: missing, but last.pt has progress to match; the run folder is damaged")
    with open(path, newline="") as f:
        rows = (
            migrate_metrics_header(list(csv.reader(f)), columns) if path.name == METRICS_FILE else list(csv.reader(f))
        )
    if not rows or tuple(rows[0]) != columns:
        raise UserError(
            f"{path}: its header is missing or not {','.join(columns[:3])},...; the run folder is damaged "
            "(restore the file, or start a new run)"
        )
    try:  # a row cut short by a failed write (a full disk) is dropped with the rows past the saved iteration
        kept = [row for row in rows[1:] if len(row) == len(columns) and int(row[0]) <= keep_up_to]
    except (ValueError, IndexError) as exc:
        raise UserError(f"{path}: a row does not start with a number; the run folder is damaged") from exc
    if path.name == METRICS_FILE and len(kept) < keep_up_to:
        raise UserError(
            f"{path} holds {len(kept)} episodes but last.pt has {keep_up_to}; the run folder is damaged "
            "(restore metrics.csv, or start a new run)"
        )
    text = io.StringIO()
    csv.writer(text).writerows([rows[0], *kept])
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))
