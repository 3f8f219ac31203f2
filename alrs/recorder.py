"""What a training run writes for people to read: metrics.csv, eval.csv, TensorBoard events, the figures and
the progress bar. (last.pt is the training loop's, best.pt and evals/ the evaluator's.)"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from alrs.config import EnvConfig, TrainingConfig
from alrs.env import episode_curves
from alrs.errors import UserError
from alrs.evaluator import Evaluation, lr_label
from alrs.formats import Progress
from alrs.io import append_csv_rows
from alrs.plotting import plot_episode, plot_training
from alrs.ppo import Iteration
from alrs.runfolder import (
    EPISODE_PLOT,
    EVAL_COLUMNS,
    EVAL_FILE,
    METRICS_COLUMNS,
    METRICS_FILE,
    TENSORBOARD_DIR,
    TRAINING_PLOT,
    csv_columns,
    evaluation_curves,
    truncate_csv,
)

FIGURE_INTERVAL_S = 30.0
"""episode.png and training.png are redrawn at most this often, and after the last iteration (ours):
with small children a PPO iteration takes seconds, and drawing both figures each time cost the driver
more than its children did."""


def require_tensorboard() -> type:
    """torch's SummaryWriter, or a one-line error naming the install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from exc
    return SummaryWriter


class Recorder:
    """Writes a training run's records, and on resume cuts them back to what last.pt saw.

    Args:
        run_dir: the run folder.
        env_config: the training's environment (the figures' titles).
        config: the run's training settings (eval.csv with evaluations, TensorBoard).
        iterations: PPO iterations the run trains for (the progress bar's length).
        progress: where the run stands (from last.pt on resume).
        iteration: PPO iterations done.
        resumed: whether the run continues; else the CSV files start afresh.
        show: show a progress bar.
    """

    def __init__(
        self,
        run_dir: Path,
        env_config: EnvConfig,
        config: TrainingConfig,
        iterations: int,
        progress: Progress,
        iteration: int,
        resumed: bool,
        show: bool,
    ) -> None:
        self.run_dir, self.evaluations = run_dir, bool(config.eval_every)
        self.title = f"{env_config.dataset} / {env_config.architecture}"
        self._drawn_at = -math.inf  # the first iteration draws
        self.metrics, self.eval = run_dir / METRICS_FILE, run_dir / EVAL_FILE
        if resumed:
            truncate_csv(self.metrics, METRICS_COLUMNS, progress.episodes_done)
            if self.eval.exists():
                truncate_csv(self.eval, EVAL_COLUMNS, iteration)
        else:
            _write_header(self.metrics, METRICS_COLUMNS)
        if self.evaluations and not self.eval.exists():
            _write_header(self.eval, EVAL_COLUMNS)
        # Events past the saved progress (an interrupted iteration's) are dropped.
        self.writer = (
            require_tensorboard()(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=progress.episodes_done or None)
            if config.tensorboard
            else None
        )
        self.bar = tqdm(
            total=iterations * config.num_envs,
            initial=progress.episodes_done,
            unit="episode",
            disable=not show,
            dynamic_ncols=True,
        )

    def episodes(self, step: Iteration, iteration: int, progress: Progress) -> None:
        """A row of metrics.csv per finished episode of ``step`` (``progress`` already counts them), and
        their TensorBoard events with PPO's update statistics."""
        rows = []
        for number, episode in enumerate(step.episodes, start=progress.first_of_last(len(step.episodes))):
            last = episode.infos[-1]
            row = {
                "episode": number,
                "iteration": iteration,
                "env": episode.env_index,
                "return": episode.episode_return,
                "final_val_loss": last["val_loss"],
                "best_val_loss": last["best_val_loss"],
                "final_lr": last["effective_lr"],  # Prodigy's lr x d; the LR for the others
                "wall_time": round(progress.wall_time, 2),
                **step.stats,
                "initial_lr": last["initial_lr"],
            }
            rows.append([row[c] for c in METRICS_COLUMNS])
            if self.writer:
                for key in ("return", "final_val_loss", "best_val_loss", "final_lr"):
                    self.writer.add_scalar(f"episode/{key}", row[key], number)
        append_csv_rows(self.metrics, rows)
        if self.writer:
            for key, value in step.stats.items():
                self.writer.add_scalar(f"ppo/{key}", value, progress.episodes_done)
            self.writer.flush()  # before last.pt counts these episodes: a resume does not write them again

    def evaluation(self, evaluation: Evaluation, progress: Progress) -> None:
        """A row of eval.csv (and its TensorBoard event)."""
        per_lr = " ".join(f"{lr_label(lr)}:{v:.6f}" for lr, v in evaluation.per_initial_lr.items())
        row = [evaluation.iteration, progress.episodes_done, evaluation.mean, per_lr, round(progress.wall_time, 2)]
        append_csv_rows(self.eval, [row])
        if self.writer:
            self.writer.add_scalar("eval/mean_best_val_loss", evaluation.mean, progress.episodes_done)
            self.writer.flush()

    def figures(self, step: Iteration, progress: Progress, last: bool = False) -> None:
        """Move the progress bar; redraw episode.png and training.png after the first and the ``last``
        iteration, and otherwise once :data:`FIGURE_INTERVAL_S` has passed since they were drawn."""
        finished = step.episodes
        if finished:
            if last or time.monotonic() - self._drawn_at >= FIGURE_INTERVAL_S:
                self._drawn_at = time.monotonic()
                plot_episode(
                    episode_curves(finished[0].infos),
                    self.run_dir / EPISODE_PLOT,
                    title=f"{self.title}, episode {progress.first_of_last(len(finished))}",
                )
                plot_training(
                    *csv_columns(self.metrics, "final_val_loss", "final_lr"),
                    self.run_dir / TRAINING_PLOT,
                    title=self.title,
                    evaluations=evaluation_curves(self.eval) if self.evaluations else None,
                )
            best_eval = math.isfinite(progress.best_eval_loss)  # nothing shown for a value not yet measured
            self.bar.set_postfix(
                ret=f"{np.mean([e.episode_return for e in finished]):.2f}",
                val_loss=f"{np.mean([e.infos[-1]['val_loss'] for e in finished]):.4f}",
                **({"eval": f"{progress.best_eval_loss:.4f}"} if best_eval else {}),
                refresh=False,
            )
        self.bar.update(len(finished))

    def close(self) -> None:
        """Close the progress bar and the TensorBoard writer."""
        self.bar.close()
        if self.writer:
            self.writer.close()


def _write_header(path: Path, columns: tuple[str, ...]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerow(columns)


__all__ = ["Recorder", "require_tensorboard"]
