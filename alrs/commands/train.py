"""alrs-train (python train.py): learn an LR controller with PPO, in a new run folder or resuming one."""

from __future__ import annotations

import shutil
import sys
from argparse import Namespace
from pathlib import Path

import torch

from alrs.cli import config_of, parse_args, settings_of
from alrs.commands import invocation, provenance, run_script, set_threads
from alrs.config import EnvConfig, PPOConfig, TrainingConfig
from alrs.data import load_dataset
from alrs.env import resolve_device
from alrs.errors import UserError
from alrs.io import save_json
from alrs.parallel import ParallelConfig, WorkerPool
from alrs.recorder import require_tensorboard
from alrs.runfolder import CONFIG_FILE, LAST_FILE, new_run_dir
from alrs.tasks import InstanceSet, load_instance_set
from alrs.training import train_controller
from alrs.vector_env import check_batchable
from alrs.workers import WorkerDied


def check_before_start(args: Namespace, env_cfg: EnvConfig, instance_set: InstanceSet | None) -> None:
    """Fail before making a run folder: bad counts, missing data, a child that cannot be batched."""
    if args.num_envs <= 0 or args.episodes <= 0 or args.eval_seeds <= 0:
        raise UserError("--num-envs, --episodes and --eval-seeds must be positive")
    if args.eval_every < 0:
        raise UserError("--eval-every must be >= 0 (0 turns the evaluations off)")
    for task in instance_set.train if instance_set else ():
        task.env_config(env_cfg, instance_set.decisions)  # checks its horizon
        load_dataset(task.dataset, env_cfg.data_dir)  # and its data
    if not instance_set:
        load_dataset(env_cfg.dataset, env_cfg.data_dir, resolve_device(env_cfg.device))
    if args.batched_envs:
        check_batchable(env_cfg)
    if args.tensorboard:
        require_tensorboard()


def run_name(args: Namespace) -> str:
    """``<dataset>_<architecture>_s<seed>`` (``<instance set>_s<seed>`` for a run on an instance set)."""
    what = Path(args.instance_set).stem if args.instance_set else f"{args.dataset}_{args.architecture}"
    return f"{what}_s{args.seed}"


def check_workers(args: Namespace, parallel: ParallelConfig, env_cfg: EnvConfig) -> int:
    """The workers this run uses; a one-line error where they cannot share its children."""
    workers = parallel.num_workers(env_cfg, args.num_envs)
    if workers > args.num_envs:
        raise UserError(
            f"--workers {workers} is more than the {args.num_envs} children of a PPO iteration; "
            f"use --workers {args.num_envs} or fewer (or raise --num-envs)"
        )
    if workers > 1 and args.batched_envs:
        raise UserError("--batched-envs trains every child in one process; drop it or use --workers 1")
    return workers


def resumable(run_dir: Path) -> Path:
    """``run_dir``, checked to hold a last.pt to resume from."""
    if not (run_dir / LAST_FILE).is_file():
        raise UserError(
            f"{run_dir} has no {LAST_FILE}: it stopped before its first PPO iteration ended, so there "
            "is nothing to resume; start a new run"
        )
    return run_dir


def stopped(exc: BaseException, run_dir: Path | None, resume: bool) -> int:
    """A run that stopped early: a start that failed leaves no run folder; a lost worker or Ctrl-C names the
    command that continues. Re-raises what is not an interruption; Ctrl-C's exit status otherwise."""
    resumable_now = run_dir is not None and (run_dir / LAST_FILE).exists()
    fresh = run_dir is not None and not resume and not resumable_now
    if fresh:
        shutil.rmtree(run_dir, ignore_errors=True)  # a start that failed or was stopped leaves no run folder
    hint = f"{invocation('train')} --resume {run_dir}"
    if isinstance(exc, WorkerDied) and resumable_now:
        raise WorkerDied(f"{exc}; continue with: {hint}") from exc
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)) and resumable_now:
        exc.resume_hint = f"{run_dir / LAST_FILE} holds the last finished iteration; continue with: {hint}"
    if not isinstance(exc, KeyboardInterrupt):
        raise exc
    if resumable_now:
        print(
            f"\ninterrupted; {run_dir / LAST_FILE} holds the last finished iteration. Continue with: {hint}",
            file=sys.stderr,
        )
    elif fresh:
        print(f"\ninterrupted before the first iteration ended; nothing to resume, {run_dir} removed", file=sys.stderr)
    else:
        print("\ninterrupted", file=sys.stderr)
    return 130


def report(summary: dict, eval_every: int) -> None:
    """One line: the episodes trained, how best.pt was chosen, where it is."""
    if eval_every:
        chosen = (
            f"best evaluation: mean best validation loss {summary['best_eval_loss']:.4f} "
            f"(iteration {summary['best_eval_iteration']})"
        )
    else:
        chosen = f"best final validation loss {summary['best_final_val_loss']:.4f} (episode {summary['best_episode']})"
    print(f"done: {summary['episodes']} episodes, {chosen}; controller: {summary['best']}")


def main() -> int:
    """Train a controller as the flags say (a new run folder, or --resume); the exit status."""
    args = parse_args("train")
    set_threads(args.threads)
    env_cfg, ppo_cfg, training = (config_of(cls, args) for cls in (EnvConfig, PPOConfig, TrainingConfig))
    parallel = config_of(ParallelConfig, args)
    instance_set = load_instance_set(env_cfg.instance_set) if env_cfg.instance_set else None
    check_before_start(args, env_cfg, instance_set)
    workers = check_workers(args, parallel, env_cfg)
    resume = args.resume is not None
    run_dir = resumable(Path(args.resume)) if resume else None
    try:
        with WorkerPool(parallel, workers, env_cfg) as pool:  # an unreachable Ray fails here, before any run folder
            if run_dir is None:
                run_dir = new_run_dir(args.out_dir, run_name(args))
                save_json({"settings": settings_of(args), **provenance()}, run_dir / CONFIG_FILE)
            where = (
                "" if pool.in_process else f" on {workers} {'Ray' if parallel.backend == 'ray' else 'local'} workers"
            )
            print(f"{'resuming' if resume else 'run'} {run_dir}{where}", file=sys.stderr)
            summary = train_controller(
                run_dir,
                env_cfg,
                ppo_cfg,
                training,
                seed=args.seed,
                resume=resume,
                progress=args.progress,
                pool=pool,
                wait=args.wait,
            )
    except BaseException as exc:
        return stopped(exc, run_dir, resume)
    report(summary, args.eval_every)
    return 0


def cli() -> None:
    """The console script ``alrs-train``."""
    run_script(main)
