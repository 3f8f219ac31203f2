"""Learning a controller: PPO on the LR environment, with a run folder (alrs.runfolder) that survives interruptions."""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from alrs.controller import Controller
from alrs.env import RANDOM_INITIAL_LRS, EnvConfig, LREnv, episode_curves
from alrs.errors import UserError
from alrs.features import FIXED_SCALE_FEATURES
from alrs.io import FolderLock, append_csv_rows, atomic_write, load_torch, save_torch
from alrs.parallel import ParallelConfig, WorkerPool
from alrs.plotting import plot_episode, plot_training
from alrs.ppo import PPO, PPOConfig
from alrs.runfolder import (
    BEST_FILE,
    EPISODE_PLOT,
    EVAL_COLUMNS,
    EVAL_FILE,
    LAST_FILE,
    LOCK_FILE,
    METRICS_COLUMNS,
    METRICS_FILE,
    TENSORBOARD_DIR,
    TRAINING_PLOT,
    csv_columns,
    evaluated_checkpoint,
    evaluated_iterations,
    evaluation_curves,
)
from alrs.tasks import task_metadata

LEGACY_METRICS_COLUMNS = METRICS_COLUMNS[:-1]
"""metrics.csv's header before the initial_lr column: resuming such a run adds the column, empty in the old rows."""

EVAL_SEED_BASE = 2000
"""Held-out evaluation seeds are 2000, 2001, ...: apart from the training resets (hashes of the run
seed and iteration), and from test.py's seeds (seed + 1000 + i) and the grid's (seed), which test.py
checks (:func:`alrs.evaluation.check_test_seeds`)."""


def evaluation_seeds(count: int) -> list[int]:
    """The held-out seeds of the deterministic evaluations that choose best.pt."""
    return [EVAL_SEED_BASE + i for i in range(count)]


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
    eval_every: int = 10,
    eval_seeds: int = 4,
    tensorboard: bool = False,
    pool: WorkerPool | None = None,
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
        eval_every: every this many PPO iterations (and after the last), run the policy's mode
            from each training initial LR on ``eval_seeds`` held-out seeds; the controller with the
            lowest mean best validation loss becomes best.pt. 0: no evaluations, and best.pt is
            the controller behind the episode with the lowest final validation loss (the seed's rule).
        eval_seeds: held-out seeds per evaluation.
        tensorboard: also write every episode's metrics, PPO's statistics and the evaluations as
            TensorBoard events under ``run_dir/tensorboard`` (needs the tensorboard package).
        pool: where the children and the evaluations run (:mod:`alrs.parallel`); None: in this process.
            The same seeds give the same episodes on any pool with the same torch threads per child.

    Returns:
        A summary: episodes done, how best.pt was chosen (the best evaluation and its iteration,
        or the best final validation loss and its episode), paths of the checkpoints.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with FolderLock(run_dir / LOCK_FILE, f"run folder {run_dir}"):  # a second writer is refused
        saved = load_torch(run_dir / LAST_FILE) if resume else None  # a bad checkpoint fails before any work
        pool = pool or WorkerPool(ParallelConfig(workers=1), 1, env_config)
        envs = pool.vector_env(env_config, num_envs, batched)
        fixed_scale = tuple(i for i, name in enumerate(env_config.features) if name in FIXED_SCALE_FEATURES)
        ppo = PPO(envs, ppo_config, seed=seed, fixed_scale=fixed_scale)
        state = {
            "episodes_done": 0,
            "best_final_val_loss": math.inf,
            "best_episode": None,
            "wall_time": 0.0,
            "best_eval_loss": math.inf,
            "best_eval_iteration": None,
            "eval_iteration": None,
            "eval_loss": math.nan,
        }
        metrics_path, eval_path = run_dir / METRICS_FILE, run_dir / EVAL_FILE
        if saved is not None:
            _check_last(saved, run_dir / LAST_FILE, env_config, ppo_config, seed, state)
            ppo.load_state_dict(saved["ppo"])
            state = {**state, **saved["progress"]}
            _truncate_csv(metrics_path, METRICS_COLUMNS, state["episodes_done"])
            if eval_path.exists():
                _truncate_csv(eval_path, EVAL_COLUMNS, ppo.iteration)
            for iteration, stale in evaluated_iterations(run_dir).items():
                if iteration > ppo.iteration:  # evaluated after the saved iteration
                    stale.unlink()
        else:
            with open(metrics_path, "w", newline="") as f:
                csv.writer(f).writerow(METRICS_COLUMNS)
        if eval_every and not eval_path.exists():
            with open(eval_path, "w", newline="") as f:
                csv.writer(f).writerow(EVAL_COLUMNS)
        # Evaluations run without LR noise, from each training initial LR.
        eval_config = replace(env_config, lr_noise=0.0, initial_lr_noise=0.0)
        seeds = evaluation_seeds(eval_seeds)

        writer = _tensorboard_writer(run_dir, purge_step=state["episodes_done"]) if tensorboard else None
        iterations = math.ceil(episodes / num_envs)
        bar = tqdm(
            total=iterations * num_envs,
            initial=state["episodes_done"],
            unit="episode",
            disable=not progress,
            dynamic_ncols=True,
        )
        start = time.perf_counter() - state["wall_time"]
        name = f"{env_config.dataset} / {env_config.architecture}"
        try:
            while ppo.iteration < iterations:
                step = ppo.train_iteration(iteration_seed(seed, ppo.iteration))
                finished, stats, snapshot = step.episodes, step.stats, step.acting_controller
                state["wall_time"] = time.perf_counter() - start
                rows = []
                for episode in finished:
                    last = episode.infos[-1]
                    state["episodes_done"] += 1
                    rows.append(
                        {
                            "episode": state["episodes_done"],
                            "iteration": ppo.iteration,
                            "env": episode.env_index,
                            "return": episode.episode_return,
                            "final_val_loss": last["val_loss"],
                            "best_val_loss": last["best_val_loss"],
                            "final_lr": last["effective_lr"],  # Prodigy's lr x d; the LR for the others
                            "wall_time": round(state["wall_time"], 2),
                            **stats,
                            "initial_lr": last["initial_lr"],
                        }
                    )
                    if not eval_every and last["val_loss"] < state["best_final_val_loss"]:
                        state["best_final_val_loss"], state["best_episode"] = last["val_loss"], state["episodes_done"]
                        snapshot["metadata"] = controller_metadata(
                            env_config,
                            ppo_config,
                            episode=state["episodes_done"],
                            final_val_loss=last["val_loss"],
                            seed=seed,
                        )
                        save_torch(snapshot, run_dir / BEST_FILE)
                append_csv_rows(metrics_path, [[row[c] for c in METRICS_COLUMNS] for row in rows])
                if eval_every and (ppo.iteration % eval_every == 0 or ppo.iteration == iterations):
                    _evaluate_and_select(
                        ppo.controller,
                        pool,
                        eval_config,
                        seeds,
                        state,
                        ppo.iteration,
                        run_dir,
                        env_config,
                        ppo_config,
                        seed,
                        time.perf_counter() - start,
                    )
                if writer is not None:
                    _write_events(
                        writer,
                        rows,
                        stats,
                        state,
                        evaluated=bool(eval_every) and state["eval_iteration"] == ppo.iteration,
                    )
                save_torch(
                    {
                        "ppo": ppo.state_dict(),
                        "progress": dict(state),
                        "controller": ppo.controller.checkpoint(controller_metadata(env_config, ppo_config, seed=seed)),
                    },
                    run_dir / LAST_FILE,
                )
                if finished:
                    plot_episode(
                        episode_curves(finished[0].infos),
                        run_dir / EPISODE_PLOT,
                        title=f"{name}, episode {state['episodes_done'] - len(finished) + 1}",
                    )
                    evaluations = evaluation_curves(eval_path) if eval_every else None
                    plot_training(
                        *csv_columns(metrics_path, "final_val_loss", "final_lr"),
                        run_dir / TRAINING_PLOT,
                        title=name,
                        evaluations=evaluations,
                    )
                    bar.set_postfix(
                        ret=f"{np.mean([e.episode_return for e in finished]):.2f}",
                        val_loss=f"{np.mean([e.infos[-1]['val_loss'] for e in finished]):.4f}",
                        # nothing for a value not yet measured (before the first evaluation)
                        **(
                            {"eval": f"{state['best_eval_loss']:.4f}"} if math.isfinite(state["best_eval_loss"]) else {}
                        ),
                        refresh=False,
                    )
                bar.update(len(rows))
        finally:
            bar.close()
            envs.close()
            if writer is not None:
                writer.close()
        best = (
            {"best_eval_loss": state["best_eval_loss"], "best_eval_iteration": state["best_eval_iteration"]}
            if eval_every
            else {"best_final_val_loss": state["best_final_val_loss"], "best_episode": state["best_episode"]}
        )
        return {
            "episodes": state["episodes_done"],
            **best,
            "last": str(run_dir / LAST_FILE),
            "best": str(run_dir / BEST_FILE),
        }


def require_tensorboard() -> type:
    """torch's SummaryWriter, or a one-line error naming the install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from exc
    return SummaryWriter


def _tensorboard_writer(run_dir: Path, purge_step: int) -> Any:
    """A SummaryWriter into ``run_dir/tensorboard``; events past ``purge_step`` (an interrupted
    iteration's) are dropped."""
    return require_tensorboard()(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=purge_step or None)


def _write_events(
    writer: Any, rows: list[dict[str, Any]], stats: dict[str, float], state: dict[str, Any], evaluated: bool
) -> None:
    """One iteration's TensorBoard events, indexed by episodes done: each episode, PPO's update, the evaluation."""
    for row in rows:
        for key in ("return", "final_val_loss", "best_val_loss", "final_lr"):
            writer.add_scalar(f"episode/{key}", row[key], row["episode"])
    for key, value in stats.items():
        writer.add_scalar(f"ppo/{key}", value, state["episodes_done"])
    if evaluated:
        writer.add_scalar("eval/mean_best_val_loss", state["eval_loss"], state["episodes_done"])
    writer.flush()


def _evaluate_and_select(
    controller: Controller,
    pool: WorkerPool,
    config: EnvConfig,
    seeds: list[int],
    state: dict[str, Any],
    iteration: int,
    run_dir: Path,
    env_config: EnvConfig,
    ppo_config: PPOConfig,
    seed: int,
    wall_time: float,
) -> None:
    """One deterministic evaluation: a row of eval.csv, the controller in evals/, and best.pt if it is
    the best so far."""
    per_lr = evaluate_policy(pool, config, controller, seeds, training_initial_lrs(env_config))
    mean = float(np.mean(list(per_lr.values())))
    state["eval_iteration"], state["eval_loss"] = iteration, mean
    per_lr_text = " ".join(f"{lr_label(lr)}:{v:.6f}" for lr, v in per_lr.items())
    append_csv_rows(run_dir / EVAL_FILE, [[iteration, state["episodes_done"], mean, per_lr_text, round(wall_time, 2)]])
    metadata = controller_metadata(
        env_config,
        ppo_config,
        iteration=iteration,
        episode=state["episodes_done"],
        eval_best_val_loss=mean,
        eval_per_initial_lr={lr_label(lr): v for lr, v in per_lr.items()},
        eval_seeds=seeds,
        seed=seed,
    )
    checkpoint, path = controller.checkpoint(metadata), evaluated_checkpoint(run_dir, iteration)
    path.parent.mkdir(exist_ok=True)
    save_torch(checkpoint, path)
    if mean < state["best_eval_loss"]:
        state["best_eval_loss"], state["best_eval_iteration"] = mean, iteration
        save_torch(checkpoint, run_dir / BEST_FILE)


def _check_last(
    saved: Any, path: Path, env_config: EnvConfig, ppo_config: PPOConfig, seed: int, state: dict[str, Any]
) -> None:
    """A one-line error unless ``saved`` is a training checkpoint made with this run's settings."""
    if not isinstance(saved, dict) or not {"ppo", "progress", "controller"} <= set(saved):
        raise UserError(f"{path}: not a training checkpoint of alrs")
    if (
        not isinstance(saved["progress"], dict)
        or set(saved["progress"]) != set(state)
        or not isinstance(saved["progress"].get("episodes_done"), int)
    ):
        raise UserError(f"{path}: its progress record is damaged or from another version of alrs")
    metadata = saved["controller"].get("metadata", {}) if isinstance(saved["controller"], dict) else {}
    ours = controller_metadata(env_config, ppo_config, seed=seed)
    runtime = {"data_dir", "device", "eval_batch_size"}  # where and how fast it runs, not what it learns
    # A setting the checkpoint does not record was added later: the run was made at its default.
    defaults = {"env": asdict(EnvConfig()), "ppo": asdict(PPOConfig())}
    differ = [
        f"{part}.{k}"
        for part in ("env", "ppo")
        for k in ours[part]
        if k not in runtime and metadata.get(part, {}).get(k, defaults[part].get(k)) != ours[part][k]
    ]
    differ += ["seed"] if metadata.get("seed") != seed else []
    if differ:
        raise UserError(
            f"{path} was made with other settings than this run's config.json ({', '.join(differ[:4])}); "
            "it belongs to another run: resume that run, or start a new one"
        )


def _truncate_csv(path: Path, columns: tuple[str, ...], keep_up_to: int) -> None:
    """Check the file's header and that it holds every row up to ``keep_up_to`` (by its first column),
    then drop the rows past it (written by an iteration interrupted before saving)."""
    if not path.is_file():
        raise UserError(f"{path}: missing, but last.pt has progress to match; the run folder is damaged")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if rows and path.name == METRICS_FILE and tuple(rows[0]) == LEGACY_METRICS_COLUMNS:
        rows = [list(columns), *[[*row, ""] for row in rows[1:]]]
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
