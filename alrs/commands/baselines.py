"""alrs-baselines (python baselines.py): the baseline grid search of a setting, resumable, and its best points."""

from __future__ import annotations

import sys

from alrs.cli import config_of, parse_args
from alrs.commands import run_script, set_threads
from alrs.config import EnvConfig
from alrs.env import LREnv
from alrs.grid import baseline_file, baseline_grid_search, best_keys, grid_schedules
from alrs.parallel import ParallelConfig, make_pool
from alrs.plotting import plot_episode


def main() -> int:
    """Run the baseline grid of the setting the flags give, and print each family's best point; the exit status."""
    args = parse_args("baselines")
    set_threads(args.threads)
    # Hand-made schedules run without LR noise.
    config = config_of(EnvConfig, args).for_evaluation()
    path = baseline_file(args.results_dir, config)
    print(f"grid search on {config.dataset}/{config.architecture}; results in {path}")
    env = LREnv(config)
    try:
        with make_pool(config_of(ParallelConfig, args), config, jobs=len(grid_schedules(config))) as pool:
            data = baseline_grid_search(env, args.seed, path, progress=args.progress, pool=pool, wait=args.wait)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; every finished point is kept in {path}. Rerun the same command to go on.", file=sys.stderr
        )
        return 130

    results = data["results"]
    best = results[data["best_step_decay"]]
    plot_episode(best["curves"], path.with_suffix(".png"), title=f"best step decay: {data['best_step_decay']}")
    print(f"\n{'family':<14} {'its best point (final val loss on the grid seed)':<50} {'final':>8} {'best':>8}")
    for family, best_key in best_keys().items():
        key = data[best_key]
        print(f"{family:<14} {key:<50} {results[key]['final_val_loss']:>8.4f} {results[key]['best_val_loss']:>8.4f}")
    return 0


def cli() -> None:
    """The console script ``alrs-baselines``."""
    run_script(main)
