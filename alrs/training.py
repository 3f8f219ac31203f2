"""Learning a controller: PPO on the LR environment, with a run folder that survives interruptions.

A run folder holds (the one place that fixes this layout):
    config.json   every setting, the git commit and library versions (written by the caller)
    metrics.csv   one row per finished episode
    last.pt       PPO state, counters and best-so-far: enough to resume exactly
    best.pt       the controller after whose rollout an episode reached the lowest final validation loss
    episode.png   curves of the latest episode, refreshed every iteration
    training.png  final validation loss and LR of every episode so far: the controller's learning curve
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from alrs.env import FEATURES, EnvConfig
from alrs.io import atomic_write, load_torch, save_torch
from alrs.plotting import plot_episode, plot_training
from alrs.ppo import PPO, Episode, PPOConfig
from alrs.vector_env import make_lr_envs

CONFIG_FILE, METRICS_FILE, LAST_FILE, BEST_FILE = "config.json", "metrics.csv", "last.pt", "best.pt"
EPISODE_PLOT, TRAINING_PLOT = "episode.png", "training.png"
METRICS_COLUMNS = (
    "episode", "iteration", "env", "return", "final_val_loss", "best_val_loss", "final_lr", "wall_time",
    "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "explained_variance",
)


def iteration_seed(seed: int, iteration: int) -> int:
    """Seed of the env resets of one PPO iteration: distinct for every (run seed, iteration)."""
    return int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0])


def controller_metadata(env_config: EnvConfig, ppo_config: PPOConfig, **extra: Any) -> dict[str, Any]:
    """What a saved controller carries about how it was trained (checked before it is used)."""
    return {"env": asdict(env_config), "features": list(FEATURES), "ppo": asdict(ppo_config), **extra}


def episode_curves(infos: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per-step ``step``, ``train_loss``, ``val_loss`` and ``lr`` of an episode's infos."""
    return {key: [info[key] for info in infos] for key in ("step", "train_loss", "val_loss", "lr")}


def train_controller(
    run_dir: str | Path,
    env_config: EnvConfig,
    ppo_config: PPOConfig,
    num_envs: int = 4,
    episodes: int = 1000,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    batched: bool | None = None,
) -> dict[str, Any]:
    """Train a controller with PPO for ``episodes`` episodes, writing the run folder as it goes.

    Every iteration runs one episode in each of ``num_envs`` child trainings, then updates; the
    checkpoint ``last.pt`` is written after every iteration, so an interruption loses at most the
    iteration in progress, and ``resume=True`` continues to the same result as an uninterrupted run.

    Args:
        run_dir: the run folder (created if needed).
        env_config: the LR environment's settings.
        ppo_config: PPO hyper-parameters; its ``num_steps`` should be the episode length.
        num_envs: child trainings per iteration (seed: 4).
        episodes: total episodes to train for (rounded up to whole iterations).
        seed: seeds the controller and every env reset.
        resume: continue from ``run_dir/last.pt``.
        progress: show a progress bar.
        batched: train the children as one vmapped model (:class:`~alrs.vector_env.BatchedLREnv`);
            None: where it pays (CUDA, an architecture without batch norm). The two are
            equivalent, not bitwise identical (float rounding differs), so a run may resume
            with the other choice.

    Returns:
        A summary: episodes done, best final validation loss, paths of the checkpoints.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = load_torch(run_dir / LAST_FILE) if resume else None  # a bad checkpoint fails before any work
    envs = make_lr_envs(env_config, num_envs, batched)
    ppo = PPO(envs, ppo_config, seed=seed)
    state = {"episodes_done": 0, "best_final_val_loss": math.inf, "best_episode": None, "wall_time": 0.0}
    metrics_path = run_dir / METRICS_FILE
    if saved is not None:
        if not isinstance(saved, dict) or not {"ppo", "progress"} <= set(saved):
            raise ValueError(f"{run_dir / LAST_FILE}: not a training checkpoint of alrs")
        ppo.load_state_dict(saved["ppo"])
        state = saved["progress"]
        _truncate_metrics(metrics_path, state["episodes_done"])
    else:
        with open(metrics_path, "w", newline="") as f:
            csv.writer(f).writerow(METRICS_COLUMNS)

    iterations = math.ceil(episodes / num_envs)
    bar = tqdm(total=iterations * num_envs, initial=state["episodes_done"], unit="episode", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter() - state["wall_time"]
    try:
        while ppo.iteration < iterations:
            batch, finished = ppo.collect_rollout(iteration_seed(seed, ppo.iteration))
            snapshot = ppo.controller.checkpoint()  # the controller that produced these episodes
            stats = ppo.update(batch)
            ppo.iteration += 1
            state["wall_time"] = time.perf_counter() - start
            rows = []
            for episode in finished:
                last = episode.infos[-1]
                state["episodes_done"] += 1
                rows.append([state["episodes_done"], ppo.iteration, episode.env_index, episode.episode_return,
                             last["val_loss"], last["best_val_loss"], last["lr"], round(state["wall_time"], 2), *(stats[k] for k in METRICS_COLUMNS[8:])])
                if last["val_loss"] < state["best_final_val_loss"]:
                    state["best_final_val_loss"], state["best_episode"] = last["val_loss"], state["episodes_done"]
                    snapshot["metadata"] = controller_metadata(env_config, ppo_config, episode=state["episodes_done"],
                                                               final_val_loss=last["val_loss"], seed=seed)
                    save_torch(snapshot, run_dir / BEST_FILE)
            with open(metrics_path, "a", newline="") as f:
                csv.writer(f).writerows(rows)
            save_torch({"ppo": ppo.state_dict(), "progress": dict(state),
                        "controller": ppo.controller.checkpoint(controller_metadata(env_config, ppo_config, seed=seed))},
                       run_dir / LAST_FILE)
            if finished:
                name = f"{env_config.dataset} / {env_config.architecture}"
                plot_episode(episode_curves(finished[0].infos), run_dir / EPISODE_PLOT,
                             title=f"{name}, episode {state['episodes_done'] - len(finished) + 1}")
                plot_training(*_metrics_columns(metrics_path, "final_val_loss", "final_lr"), run_dir / TRAINING_PLOT, title=name)
                bar.set_postfix(ret=f"{np.mean([e.episode_return for e in finished]):.2f}",
                                val_loss=f"{np.mean([e.infos[-1]['val_loss'] for e in finished]):.4f}", refresh=False)
            bar.update(len(rows))
    finally:
        bar.close()
        envs.close()
    return {"episodes": state["episodes_done"], "best_final_val_loss": state["best_final_val_loss"],
            "best_episode": state["best_episode"], "last": str(run_dir / LAST_FILE), "best": str(run_dir / BEST_FILE)}


def _metrics_columns(path: Path, *columns: str) -> list[list[float]]:
    """Columns of metrics.csv as floats."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [[float(row[c]) for row in rows] for c in columns]


def _truncate_metrics(path: Path, episodes_done: int) -> None:
    """Drop rows past the checkpoint (written by an iteration that was interrupted before saving)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    text = io.StringIO()
    csv.writer(text).writerows(rows[: episodes_done + 1])
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))
