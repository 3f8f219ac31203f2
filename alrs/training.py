"""Learning a controller: the PPO loop on the LR environment, resumable from its run folder (alrs.runfolder).

The loop reads top to bottom: each iteration plays one episode in each child training, updates the
controller, records (alrs.recorder), evaluates every few iterations to choose best.pt (alrs.evaluator),
and saves last.pt, so that an interruption loses at most the iteration in progress.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from alrs.config import EnvConfig, PPOConfig, TrainingConfig
from alrs.controller import Controller
from alrs.errors import UserError
from alrs.evaluator import Evaluator
from alrs.features import fixed_scale_indices
from alrs.formats import Progress, read_training_state, training_state
from alrs.io import FolderLock, load_torch, save_torch
from alrs.parallel import ParallelConfig, WorkerPool
from alrs.ppo import PPO
from alrs.recorder import Recorder
from alrs.runfolder import BEST_FILE, LAST_FILE, LOCK_FILE
from alrs.settings import runtime_settings
from alrs.tasks import episode_decisions, task_metadata


def iteration_seed(seed: int, iteration: int) -> int:
    """Seed of the env resets of one PPO iteration: distinct for every (run seed, iteration)."""
    return int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0])


def controller_metadata(env_config: EnvConfig, ppo_config: PPOConfig, **extra: Any) -> dict[str, Any]:
    """What a saved controller carries about how it was trained (checked before it is used)."""
    return {
        "env": asdict(env_config),
        "features": list(env_config.features),
        "ppo": asdict(ppo_config),
        **task_metadata(env_config),
        **extra,
    }


def train_controller(
    run_dir: str | Path,
    env_config: EnvConfig,
    ppo_config: PPOConfig,
    config: TrainingConfig | None = None,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    pool: WorkerPool | None = None,
    wait: bool = False,
) -> dict[str, Any]:
    """Train a controller with PPO, writing the run folder ``run_dir`` (alrs.runfolder) as it goes.

    ``seed`` seeds the controller and every reset; ``resume`` continues from run_dir/last.pt to the same
    result as an uninterrupted run; ``progress`` shows a progress bar; ``pool`` is where the children and
    evaluations run (None: this process); ``wait``: wait for another writer of run_dir instead of refusing.
    Returns episodes done, how best.pt was chosen, the checkpoints.
    """
    config = config or TrainingConfig()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with FolderLock(run_dir / LOCK_FILE, f"run folder {run_dir}", wait):  # a second writer is refused or waits
        saved = load_torch(run_dir / LAST_FILE) if resume else None  # a bad checkpoint fails before any work
        pool = pool or WorkerPool(ParallelConfig(workers=1), 1, env_config)
        envs = pool.vector_env(env_config, config.num_envs, config.batched_envs)
        fixed_scale = fixed_scale_indices(env_config.features)
        # A rollout is one whole episode of every child.
        ppo = PPO(envs, ppo_config, num_steps=episode_decisions(env_config), seed=seed, fixed_scale=fixed_scale)
        metadata = controller_metadata(env_config, ppo_config, seed=seed)
        evaluator = Evaluator(run_dir, env_config, config.eval_every, config.eval_seeds, pool, metadata)
        state = Progress() if saved is None else _resume(saved, run_dir / LAST_FILE, ppo, evaluator, metadata)
        iterations = math.ceil(config.episodes / config.num_envs)
        recorder = Recorder(run_dir, env_config, config, iterations, state, ppo.iteration, saved is not None, progress)
        start = time.perf_counter() - state.wall_time
        try:
            while ppo.iteration < iterations:
                step = ppo.train_iteration(iteration_seed(seed, ppo.iteration))
                state.episodes_done += len(step.episodes)
                state.wall_time = time.perf_counter() - start
                evaluator.consider_episodes(step.episodes, step.acting_controller, state)
                recorder.episodes(step, ppo.iteration, state)
                if evaluator.due(ppo.iteration, iterations):
                    recorder.evaluation(evaluator.evaluate(ppo.controller, ppo.iteration, state), state)
                checkpoint = ppo.controller.checkpoint(metadata)
                save_torch(training_state(ppo.state_dict(), state, checkpoint), run_dir / LAST_FILE)
                recorder.figures(step, state, last=ppo.iteration == iterations)
        finally:
            recorder.close()
            envs.close()
    best = ("best_eval_loss", "best_eval_iteration") if config.eval_every else ("best_final_val_loss", "best_episode")
    return {
        "episodes": state.episodes_done,
        **{key: getattr(state, key) for key in best},
        "last": str(run_dir / LAST_FILE),
        "best": str(run_dir / BEST_FILE),
    }


def _resume(saved: Any, path: Path, ppo: PPO, evaluator: Evaluator, metadata: dict[str, Any]) -> Progress:
    """Load last.pt's PPO state into ``ppo`` after checking it belongs to this run; forget later evaluations."""
    ppo_state, progress, controller = read_training_state(saved, path)
    check_same_run(controller.get("metadata", {}), metadata, path)
    try:
        Controller.from_checkpoint(controller)  # its weights and statistics: finite, of its shapes
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from exc
    ppo.load_state_dict(ppo_state)
    evaluator.resume(ppo.iteration)
    return progress


def check_same_run(saved: dict[str, Any], ours: dict[str, Any], path: Path) -> None:
    """A one-line error unless the controller metadata ``saved`` in a last.pt (migrated to the current
    format) records the settings of this run, ``ours``."""
    runtime = {"env": runtime_settings(EnvConfig), "ppo": runtime_settings(PPOConfig)}  # may change on resume
    differ = [
        f"{part}.{key}"
        for part in ("env", "ppo")
        for key in ours[part]
        if key not in runtime[part] and saved.get(part, {}).get(key) != ours[part][key]
    ]
    differ += ["seed"] if saved.get("seed") != ours["seed"] else []
    if differ:
        raise UserError(
            f"{path} was made with other settings than this run's config.json ({', '.join(differ[:4])}); "
            "it belongs to another run: resume that run, or start a new one"
        )
