"""Episodes per hour of controller training: sequential, local worker processes and local Ray.

With ``reward: relative`` (a reference run per child) the variant ``unshared-reference`` is the
sequential one whose every child trains its own reference run, as before the envs of a process
shared them (:data:`alrs.env.REFERENCE_RUNS`); the others share them.

Each variant trains a fresh controller for ``--warmup`` PPO iterations and then ``--iterations``
timed ones of ``--num-envs`` children (no deterministic evaluations) from the same seed, in one run,
variants interleaved round by round (these machines are shared and noisy). The pool's start
(spawning processes, starting Ray) and the warm-up (loading the data in each worker) are not in
the episodes per hour (with ``--warmup 0``, the first iteration's start is timed with it); the start
is reported beside them. Prints a table and, with ``--json``, writes the figures.

    python benchmarks/throughput.py --config configs/quick-recipe.json --iterations 2 --rounds 2
    python benchmarks/throughput.py --architecture cnn --num-envs 2 --warmup 0     # LeNet-5, paper settings
    python benchmarks/throughput.py --config configs/generalist-relative.json --variants sequential-1thread \
        unshared-reference workers --iterations 2 --rounds 2
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from alrs import env as env_module
from alrs.config import EnvConfig, PPOConfig, TrainingConfig
from alrs.io import load_json
from alrs.parallel import ParallelConfig, WorkerPool, available_cores
from alrs.training import train_controller

VARIANTS = {
    "sequential-1thread": lambda cores: ParallelConfig(workers=1, threads=1),  # how the committed runs were made
    "sequential": lambda cores: ParallelConfig(workers=1, threads=cores),  # torch's intra-op threads on every core
    "workers": lambda cores: ParallelConfig(workers=cores, threads=1),
    "ray": lambda cores: ParallelConfig(workers=cores, backend="ray", threads=1),
    "unshared-reference": lambda cores: ParallelConfig(workers=1, threads=1),
}
REFERENCE_RUNS_KEPT = env_module.REFERENCE_RUNS_KEPT


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="a JSON config (its env settings and num_envs are used)")
    p.add_argument("--dataset", default="fa-mnist")
    p.add_argument("--architecture", default="cnn")
    p.add_argument("--num-envs", type=int, default=None, help="children per iteration (default: the config's, else 2)")
    p.add_argument("--iterations", type=int, default=1, help="PPO iterations per variant and round")
    p.add_argument("--warmup", type=int, default=1, help="untimed PPO iterations first (0: time from the start)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    settings = load_json(args.config) if args.config else {}
    env_keys = {f for f in EnvConfig.__dataclass_fields__}
    env = EnvConfig(
        **{
            "dataset": args.dataset,
            "architecture": args.architecture,
            "data_dir": args.data_dir,
            "device": "cpu",
            **{k: v for k, v in settings.items() if k in env_keys},
        }
    )
    num_envs = args.num_envs or settings.get("num_envs", 2)
    cores = available_cores()
    ppo = PPOConfig(**{k: v for k, v in settings.items() if k in PPOConfig.__dataclass_fields__})
    episodes = num_envs * (args.iterations + args.warmup)

    start_s: dict[str, list[float]] = {v: [] for v in args.variants}
    train_s: dict[str, list[float]] = {v: [] for v in args.variants}
    for r in range(args.rounds):
        for name in args.variants:
            parallel = VARIANTS[name](cores)
            torch.set_num_threads(cores)  # the driver's threads: the PPO update, and the children when sequential
            env_module.REFERENCE_RUNS.clear()
            env_module.REFERENCE_RUNS_KEPT = 0 if name == "unshared-reference" else REFERENCE_RUNS_KEPT
            t0 = time.perf_counter()
            with WorkerPool(parallel, parallel.workers, env) as pool, tempfile.TemporaryDirectory() as run:
                t1 = time.perf_counter()
                train_controller(
                    run, env, ppo, TrainingConfig(num_envs, episodes, eval_every=0), seed=0, progress=False, pool=pool
                )
                # metrics.csv's wall_time is the run's clock at the end of each iteration
                ends = [
                    0.0,
                    *sorted({float(row["wall_time"]) for row in csv.DictReader(open(Path(run) / "metrics.csv"))}),
                ]
                ends = ends[args.warmup :]
            start_s[name].append(t1 - t0)
            train_s[name].append(ends[-1] - ends[0])
            print(
                f"round {r + 1} {name}: start {t1 - t0:.1f} s, warm-up {ends[0]:.1f} s, "
                f"{num_envs * args.iterations} episodes in {ends[-1] - ends[0]:.1f} s",
                file=sys.stderr,
            )

    seconds = {name: statistics.median(train_s[name]) for name in args.variants}
    per_hour = {name: 3600 * num_envs * args.iterations / s for name, s in seconds.items()}
    base = per_hour.get("sequential-1thread")
    result = {
        "instance_set": env.instance_set,
        "dataset": env.dataset,
        "architecture": env.architecture,
        "batch_size": env.batch_size,
        "num_train_steps": env.num_train_steps,
        "val_size": env.val_size,
        "num_envs": num_envs,
        "reward": env.reward,
        "common_reset_seed": ppo.common_reset_seed,
        "iterations": args.iterations,
        "rounds": args.rounds,
        "cores": cores,
        "cpu": platform.processor() or platform.machine(),
        "episodes_per_hour": per_hour,
        "speedup_over_sequential_1thread": {n: v / base for n, v in per_hour.items()} if base else None,
        "start_seconds": {n: statistics.median(v) for n, v in start_s.items()},
        "train_seconds_all_rounds": train_s,
    }
    setting = (
        f"the tasks of {env.instance_set}"
        if env.instance_set
        else f"{env.dataset}/{env.architecture}, batch {env.batch_size}, {env.num_train_steps} steps"
    )
    print(f"\n{setting}, reward {env.reward}, {num_envs} children per iteration, {cores} cores")
    print(f"{'variant':<20} {'episodes/hour':>14} {'x sequential, 1 thread':>23} {'start (s)':>10}")
    for name in args.variants:
        ratio = f"{per_hour[name] / base:.2f}" if base else "-"
        print(f"{name:<20} {per_hour[name]:>14.0f} {ratio:>23} {result['start_seconds'][name]:>10.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
