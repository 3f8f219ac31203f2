"""Compare a learned schedule with the best step decay and the best constant LR over seeds
(or, with --baselines-only, test those two alone).

    python test.py --test-id <run id or folder> [--num-seeds 10] [--run-baselines]
    python test.py --test-id <run> --checkpoint last      # the controller where training ended
    python test.py --baselines-only --config configs/fa-mnist_cnn.json
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

from alrs.env import LREnv
from alrs.evaluation import (BASELINE_KEYS, ResultStore, baseline_file, baseline_grid_search, evaluation_settings,
                             format_table, run_jobs, schedule_from_record, summarize)
from alrs.io import load_json, load_torch
from alrs.plotting import plot_comparison
from alrs.schedules import Learned
from alrs.training import BEST_FILE, LAST_FILE
from utils import env_config, parse_args, run_script, set_threads

CHECKPOINTS = {"best": BEST_FILE, "last": LAST_FILE}
"""best.pt: the controller behind the run's best episode; last.pt: the controller where training ended."""

EVAL_SEED_OFFSET = 1000
"""Evaluation seeds are seed + 1000 + i: apart from the seed the baseline grid was chosen on."""


def main() -> int:
    args = parse_args("test")
    set_threads(args.threads)
    if args.num_seeds <= 0:
        raise ValueError("--num-seeds must be positive")
    if args.baselines_only == hasattr(args, "run_dir"):
        raise ValueError("give either --test-id <run> or --baselines-only")
    if args.checkpoint not in CHECKPOINTS:
        raise ValueError(f"--checkpoint must be best or last, got {args.checkpoint!r}")
    learned, transfer = None, False
    if not args.baselines_only and args.initial_lr == "random":
        args.initial_lr = 1e-3
        print("the controller was trained from random initial LRs; testing it from 1e-3 (set --initial-lr to change)", file=sys.stderr)
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
            flags = " ".join(f"--{k.replace('_', '-')} {getattr(config, k)}" for k in BASELINE_KEYS if getattr(config, k) is not None)
            raise ValueError(f"no baseline results at {path}; run: python baselines.py {flags} --seed {args.seed} "
                             "(or add --run-baselines)")
        baseline_grid_search(env, args.seed, path, progress=args.progress)
    baselines = load_json(path)
    expected = evaluation_settings(config, BASELINE_KEYS)
    if {k: baselines["settings"].get(k) for k in BASELINE_KEYS} != expected or "best_step_decay" not in baselines:
        raise ValueError(f"{path} is unfinished or was made with other settings; rerun baselines.py with this test's settings")
    step_decay = schedule_from_record(baselines["results"][baselines["best_step_decay"]]["schedule"])
    constant = schedule_from_record(baselines["results"][baselines["best_constant"]]["schedule"])
    step_decay.name = f"step decay (lr={step_decay.initial_lr:g} every {step_decay.discount_step} x{step_decay.factor:g})"
    constant.name = f"constant (lr={constant.initial_lr:g})"

    # Baselines alone go to "baselines" plus the grid file's settings tag, e.g. baselines_bs500_steps200_val1000.
    out_name = run.name + ("" if args.checkpoint == "best" else "_last") if learned else "baselines" + path.stem.removeprefix(f"{config.dataset}_{config.architecture}")
    out = Path(args.results_dir) / f"{config.dataset}_{config.architecture}" / out_name
    seeds = [args.seed + EVAL_SEED_OFFSET + i for i in range(args.num_seeds)]
    store = ResultStore(out / "summary.json", {**settings, "seeds": seeds})
    schedules = [constant, step_decay] + ([learned] if learned else [])
    jobs = [(f"{s.name} | seed {seed}", s, seed) for seed in seeds for s in schedules]
    results = run_jobs(env, jobs, store, progress=args.progress, desc="test")
    by_schedule = {s.name: [results[f"{s.name} | seed {seed}"] for seed in seeds] for s in schedules}

    learned_name = learned.name if learned else None
    summary = summarize(by_schedule, learned=learned_name, reference=step_decay.name)
    title = f"{config.dataset} / {config.architecture}: {out_name}, {len(seeds)} seeds" + (" (transfer)" if transfer else "")
    table = format_table(summary, learned=learned_name, reference=step_decay.name, title=title)
    store.update(summary=summary, transfer=transfer, controller=str(controller_file) if learned else None)
    (out / "table.md").write_text(table)
    plot_comparison({name: [r.curves for r in runs] for name, runs in by_schedule.items()}, out / "curves.png", title=title)
    print(table)
    print(f"written: {out / 'summary.json'}, {out / 'table.md'}, {out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    run_script(main)
