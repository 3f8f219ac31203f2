"""Compare a learned schedule with the tuned baselines over paired seeds (or, with --baselines-only,
test the tuned baselines alone): the grid's best constant, step decay, cosine and linear schedules,
and the controller started from each initial LR it was trained on and from the tuned step decay's.

    python test.py --test-id <run id or folder> [--num-seeds 10] [--run-baselines]
    python test.py --test-id <run> --checkpoint last      # the controller where training ended
    python test.py --baselines-only --config configs/fa-mnist_cnn.json
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
from pathlib import Path

from alrs.env import LREnv
from alrs.errors import UserError
from alrs.evaluation import (
    BASELINE_KEYS,
    ResultStore,
    baseline_file,
    baseline_grid_search,
    evaluation_settings,
    format_table,
    grid_schedules,
    plan_test,
    run_jobs,
    summarize,
)
from alrs.io import FolderLock, load_json, load_torch
from alrs.parallel import make_pool
from alrs.plotting import plot_comparison
from alrs.schedules import Learned
from alrs.training import BEST_FILE, LAST_FILE, training_initial_lrs
from utils import env_config, parallel_config, parse_args, run_script, set_threads

CHECKPOINTS = {"best": BEST_FILE, "last": LAST_FILE}
"""best.pt: the controller behind the run's best episode; last.pt: the controller where training ended."""

EVAL_SEED_OFFSET = 1000
"""Evaluation seeds are seed + 1000 + i: apart from the seed the baseline grid was chosen on."""


def main() -> int:
    args = parse_args("test")
    set_threads(args.threads)
    if args.num_seeds <= 0:
        raise UserError("--num-seeds must be positive")
    if args.start_lr is not None and not (math.isfinite(args.start_lr) and 0 < args.start_lr <= 1):
        raise UserError(f"--start-lr must be a learning rate in (0, 1], got {args.start_lr}")
    if args.baselines_only == hasattr(args, "run_dir"):
        raise UserError("give either --test-id <run> or --baselines-only")
    if args.checkpoint not in CHECKPOINTS:
        raise UserError(f"--checkpoint must be best or last, got {args.checkpoint!r}")
    learned, transfer, start_lrs = None, False, []
    if not args.baselines_only:
        # The controller starts from each initial LR it was trained on (and from the tuned step decay's).
        start_lrs = list(training_initial_lrs(env_config(args))) if args.start_lr is None else [args.start_lr]
        # Every schedule here sets its own initial LR; the env's (kept in summary.json's settings)
        # is 1e-3 for a controller trained from random ones, as in results stored before this protocol.
        args.initial_lr = 1e-3 if args.initial_lr == "random" else args.initial_lr
    config = dataclasses.replace(env_config(args), lr_noise=0.0, initial_lr_noise=0.0)  # evaluation: no LR noise
    env = LREnv(config)
    settings = evaluation_settings(config)
    if not args.baselines_only:
        run = Path(args.run_dir)
        controller_file = run / CHECKPOINTS[args.checkpoint]
        saved = load_torch(controller_file)
        if args.checkpoint == "last":  # a training checkpoint: the controller is one of its parts
            saved = saved.get("controller") if isinstance(saved, dict) else None
        learned = Learned(saved)
        trained_on = learned.metadata.get("env", {})
        transfer = (trained_on.get("dataset"), trained_on.get("architecture")) != (config.dataset, config.architecture)
        if transfer:
            learned.name = f"learned (transfer from {trained_on.get('dataset')}/{trained_on.get('architecture')})"
        learned.check(env)
        # The controller's hash, not its path, is part of the settings: results of an older best.pt
        # are never reused, and a copied run folder (results/runs/) reuses its own.
        settings.update(controller_sha256=hashlib.sha256(controller_file.read_bytes()).hexdigest()[:16])

    path = baseline_file(args.results_dir, config)
    if not path.exists():
        if not args.run_baselines:
            flags = " ".join(
                f"--{k.replace('_', '-')} {getattr(config, k)}" for k in BASELINE_KEYS if getattr(config, k) is not None
            )
            raise UserError(
                f"no baseline results at {path}; run: python baselines.py {flags} --seed {args.seed} "
                "(or add --run-baselines)"
            )
        with make_pool(parallel_config(args), config, jobs=len(grid_schedules(config))) as pool:
            baseline_grid_search(env, args.seed, path, progress=args.progress, pool=pool)
    grid = load_json(path)
    expected = evaluation_settings(config, BASELINE_KEYS)
    if {k: grid["settings"].get(k) for k in BASELINE_KEYS} != expected or "best_step_decay" not in grid:
        raise UserError(
            f"{path} is unfinished or was made with other settings; rerun baselines.py with this test's settings"
        )
    if "best_cosine" not in grid:
        print(
            f"{path} has no cosine or linear points: run baselines.py with this test's settings to add them",
            file=sys.stderr,
        )
    plan = plan_test(grid, learned, start_lrs)

    # Baselines alone go to "baselines" plus the grid file's settings tag, e.g. baselines_bs500_steps200_val1000.
    out_name = (
        run.name + ("" if args.checkpoint == "best" else "_last")
        if learned
        else "baselines" + path.stem.removeprefix(f"{config.dataset}_{config.architecture}")
    )
    out = Path(args.results_dir) / f"{config.dataset}_{config.architecture}" / out_name
    seeds = [args.seed + EVAL_SEED_OFFSET + i for i in range(args.num_seeds)]
    with FolderLock(out / ".lock", f"result folder {out}"):  # one writer at a time
        store = ResultStore(out / "summary.json", {**settings, "seeds": seeds})
        # Stored under their labels, as before stable keys existed: earlier results stay reusable.
        jobs = [
            (f"{plan.labels[key]} | seed {seed}", schedule, seed)
            for seed in seeds
            for key, schedule in plan.schedules.items()
        ]
        try:
            with make_pool(parallel_config(args), config, jobs=len(jobs)) as pool:
                results = run_jobs(env, jobs, store, progress=args.progress, desc="test", pool=pool)
        except KeyboardInterrupt:
            print(
                f"\ninterrupted; every finished run is kept in {out / 'summary.json'}. "
                "Rerun the same command to go on.",
                file=sys.stderr,
            )
            return 130
        by_schedule = {key: [results[f"{plan.labels[key]} | seed {seed}"] for seed in seeds] for key in plan.schedules}

        summary = summarize(by_schedule, plan.labels, plan.comparisons)
        title = f"{config.dataset} / {config.architecture}: {out_name}, {len(seeds)} seeds" + (
            " (transfer)" if transfer else ""
        )
        table = format_table(summary, reference=plan.reference, title=title)
        store.update(summary=summary, transfer=transfer, controller=str(controller_file) if learned else None)
        (out / "table.md").write_text(table)
        plot_comparison(
            {plan.labels[key]: [r.curves for r in runs] for key, runs in by_schedule.items()},
            out / "curves.png",
            title=title,
        )
        print(table)
        print(f"written: {out / 'summary.json'}, {out / 'table.md'}, {out / 'curves.png'}")
        return 0


if __name__ == "__main__":
    run_script(main)
