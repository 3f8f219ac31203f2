"""Choosing best.pt: deterministic evaluations of the policy's mode on held-out seeds, every few PPO iterations.

With evaluations off (``eval_every=0``), best.pt is the controller after whose rollout an episode reached
the lowest final validation loss: the seed reimplementation's rule.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from alrs.config import EnvConfig
from alrs.controller import Controller
from alrs.env import LREnv
from alrs.formats import Progress
from alrs.io import save_torch
from alrs.parallel import WorkerPool
from alrs.runfolder import BEST_FILE, evaluated_checkpoint, evaluated_iterations

if TYPE_CHECKING:
    from alrs.ppo import Episode
from alrs.tracker import RANDOM_INITIAL_LRS

EVAL_SEED_BASE = 2000
"""Held-out evaluation seeds are 2000, 2001, ...: apart from the training resets (hashes of the run
seed and iteration), and from test.py's seeds (seed + 1000 + i) and the grid's (seed), which test.py
checks (:func:`alrs.protocol.check_test_seeds`)."""


def evaluation_seeds(count: int) -> list[int]:
    """The held-out seeds of the deterministic evaluations that choose best.pt."""
    return [EVAL_SEED_BASE + i for i in range(count)]


def training_initial_lrs(config: EnvConfig) -> tuple[float | None, ...]:
    """The initial LRs a controller of ``config`` is trained from; ``(None,)``: each task's own (an instance set)."""
    if config.instance_set is not None:
        return (None,)
    return RANDOM_INITIAL_LRS if config.initial_lr == "random" else (float(config.initial_lr),)


def lr_label(lr: float | None) -> str:
    """An initial LR in eval.csv and checkpoints: ``0.01``, or ``task`` for each task's own."""
    return "task" if lr is None else f"{lr:g}"


def policy_episode(env: LREnv, controller: Controller, seed: int, initial_lr: float | None) -> float:
    """Best validation loss of one episode of the policy's mode (frozen statistics) from ``initial_lr``
    (None: the env's own, each task's in an instance set)."""
    obs, info = env.reset(seed=seed, options=None if initial_lr is None else {"initial_lr": initial_lr})
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(controller.act(obs))
        done = terminated or truncated
    return info["best_val_loss"]


def evaluate_policy(
    pool: WorkerPool, config: EnvConfig, controller: Controller, seeds: list[int], initial_lrs: tuple[float, ...]
) -> dict[float, float]:
    """Mean best validation loss of the policy's mode per initial LR, over ``seeds``, on envs of ``config``
    (one episode per pair, run on ``pool``'s workers).

    The best validation loss is the quantity the paper's test evaluates (its checkpoint goes to
    the test set), so it is what selects best.pt.
    """
    jobs = [(controller, seed, lr) for lr in initial_lrs for seed in seeds]
    losses = dict(pool.run(policy_episode, config, jobs))
    return {lr: float(np.mean([losses[i] for i, job in enumerate(jobs) if job[2] == lr])) for lr in initial_lrs}


@dataclass(frozen=True)
class Evaluation:
    """One deterministic evaluation: after which iteration, and the mean best validation loss per initial LR."""

    iteration: int
    per_initial_lr: dict[float | None, float]

    @property
    def mean(self) -> float:
        """The mean over initial LRs: what chooses best.pt."""
        return float(np.mean(list(self.per_initial_lr.values())))


class Evaluator:
    """Runs the deterministic evaluations of a training run and keeps best.pt (and evals/) up to date.

    Args:
        run_dir: the run folder.
        env_config: the training's environment; evaluations run it without LR noise, from each training initial LR.
        eval_every: PPO iterations between evaluations (and one after the last); 0: none, the seed's rule.
        eval_seeds: held-out seeds per evaluation.
        pool: where the evaluation episodes run.
        metadata: what every saved controller carries (:func:`alrs.training.controller_metadata`).
    """

    def __init__(
        self,
        run_dir: Path,
        env_config: EnvConfig,
        eval_every: int,
        eval_seeds: int,
        pool: WorkerPool,
        metadata: dict[str, Any],
    ) -> None:
        self.run_dir, self.eval_every, self.pool, self.metadata = run_dir, eval_every, pool, metadata
        # An instance set's evaluations draw its validation tasks (its training tasks where it has none).
        self.config = dataclasses.replace(env_config.for_evaluation(), task_split="validation")
        self.initial_lrs = training_initial_lrs(env_config)
        self.seeds = evaluation_seeds(eval_seeds)

    def resume(self, iteration: int) -> None:
        """Forget the controllers evaluated after ``iteration`` (by an iteration interrupted before last.pt)."""
        for evaluated, stale in evaluated_iterations(self.run_dir).items():
            if evaluated > iteration:
                stale.unlink()

    def due(self, iteration: int, last_iteration: int) -> bool:
        """Whether an evaluation follows ``iteration``."""
        return bool(self.eval_every) and (iteration % self.eval_every == 0 or iteration == last_iteration)

    def evaluate(self, controller: Controller, iteration: int, progress: Progress) -> Evaluation:
        """Evaluate ``controller``, keep it in evals/, and make it best.pt if it is the best so far."""
        evaluation = Evaluation(
            iteration, evaluate_policy(self.pool, self.config, controller, self.seeds, self.initial_lrs)
        )
        progress.eval_iteration, progress.eval_loss = iteration, evaluation.mean
        checkpoint = controller.checkpoint(
            {
                **self.metadata,
                "iteration": iteration,
                "episode": progress.episodes_done,
                "eval_best_val_loss": evaluation.mean,
                "eval_per_initial_lr": {lr_label(lr): v for lr, v in evaluation.per_initial_lr.items()},
                "eval_seeds": self.seeds,
            }
        )
        path = evaluated_checkpoint(self.run_dir, iteration)
        path.parent.mkdir(exist_ok=True)
        save_torch(checkpoint, path)
        if evaluation.mean < progress.best_eval_loss:
            progress.best_eval_loss, progress.best_eval_iteration = evaluation.mean, iteration
            save_torch(checkpoint, self.run_dir / BEST_FILE)
        return evaluation

    def consider_episodes(self, episodes: list[Episode], acting: dict[str, Any], progress: Progress) -> None:
        """Without evaluations (the seed's rule): best.pt is ``acting`` (the controller that played ``episodes``)
        when one of them ends with the lowest final validation loss so far. ``progress`` counts them already."""
        if self.eval_every:
            return
        for number, episode in enumerate(episodes, start=progress.first_of_last(len(episodes))):
            final = episode.infos[-1]["val_loss"]
            if final < progress.best_final_val_loss:
                progress.best_final_val_loss, progress.best_episode = final, number
                acting["metadata"] = {**self.metadata, "episode": number, "final_val_loss": final}
                save_torch(acting, self.run_dir / BEST_FILE)
