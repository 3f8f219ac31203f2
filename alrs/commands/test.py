"""alrs-test (python test.py): compare a learned schedule with the tuned baselines and peers over paired seeds,
or run a held-out suite, or redraw a finished test's figure."""

from __future__ import annotations

import dataclasses
import math
import sys
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alrs.cli import config_of, parse_args, read_run_config
from alrs.commands import run_script, set_threads
from alrs.config import EnvConfig
from alrs.env import LREnv
from alrs.errors import UserError
from alrs.evaluator import evaluation_seeds, training_initial_lrs
from alrs.formats import read_controller
from alrs.grid import (
    baseline_file,
    baseline_grid_search,
    best_keys,
    evaluation_settings,
    grid_schedules,
    load_grid,
    missing_grid_error,
)
from alrs.io import FolderLock, load_torch, save_json
from alrs.parallel import ParallelConfig, make_pool
from alrs.plotting import plot_comparison, plot_suite
from alrs.protocol import (
    TestPlan,
    check_test_seeds,
    load_learned,
    plan_jobs,
    plan_test,
    reuse_results,
    run_test,
    seeds_for_test,
    stored_curves,
)
from alrs.results import ResultStore
from alrs.schedules import HandMadeSchedule, Learned
from alrs.stats import format_table, result_title, summarize
from alrs.suite import format_suite, run_suite, suite_folder, suite_settings, summarize_suite
from alrs.tasks import load_instance_set


def replot(folder: str) -> int:
    """Redraw a finished test's curves.png from its summary.json, running nothing."""
    curves, title = stored_curves(folder)
    plot_comparison(curves, Path(folder) / "curves.png", title=title)
    print(f"written: {Path(folder) / 'curves.png'}")
    return 0


def result_name(args: Namespace) -> str:
    """The name of a controller's results: its run's, then ``_<checkpoint>`` unless best.pt, and ``_sample``
    where it samples its actions."""
    checkpoint = "" if args.checkpoint == "best" else f"_{args.checkpoint}"
    return Path(args.run_dir).name + checkpoint + ("" if args.policy == "mode" else "_sample")


def suite(args: Namespace) -> int:
    """Run the held-out suite of the instance set ``args.suite``, with the controller of ``--test-id`` if given."""
    instance_set = load_instance_set(args.suite)
    if not instance_set.heldout:
        raise UserError(f'{args.suite} has no held-out tasks; add a "heldout" set to test on')
    base = dataclasses.replace(config_of(EnvConfig, args).for_evaluation(), instance_set=None)
    seeds = seeds_for_test(args.seed, args.suite_seeds)
    learned, tag = None, "baselines"
    if args.run_dir is not None:
        first_task = LREnv(instance_set.heldout[0].env_config(base, instance_set.decisions))
        learned, _, _, sha = load_learned(args.run_dir, args.checkpoint, first_task, args.policy)
        # The store keys a controller's runs by its file's hash, and by its policy where it samples its actions.
        learned.name = f"controller {sha[:8]}" + (" (sampled actions)" if args.policy == "sample" else "")
        tag = result_name(args)
        check_test_seeds(seeds, args.seed, chosen_on(args))
    out = suite_folder(args.results_dir, args.suite)
    with FolderLock(out / ".lock", f"suite folder {out}", args.wait):
        store = ResultStore(out / "results.json", suite_settings(instance_set, args.seed, args.suite_seeds))
        try:
            with make_pool(config_of(ParallelConfig, args), base, jobs=len(seeds) * 8) as pool:
                results = run_suite(
                    instance_set, base, learned, store, pool, args.seed, args.suite_seeds, args.progress
                )
        except KeyboardInterrupt:
            return interrupted(f"every finished run is kept in {store.path}. Rerun the same command.")
        summary = summarize_suite(results, learned.name if learned else None)
        title = f"{Path(args.suite).stem}: {tag}, {len(results)} held-out tasks, {len(seeds)} seeds"
        table = format_suite(summary, title)
        save_json({"summary": summary, "controller": learned.name if learned else None}, out / f"{tag}.json")
        (out / f"{tag}.md").write_text(table)
        plot_suite(summary, out / f"{tag}.png", title=title)
    print(table)
    print(f"written: {out / tag}.json, .md, .png")
    return 0


def check_flags(args: Namespace) -> None:
    """One-line errors for flags that contradict each other or are out of range, before any work."""
    if args.replot is not None:
        if args.run_dir is not None or args.baselines_only:
            raise UserError("--replot redraws a finished test and runs nothing; drop --test-id and --baselines-only")
        return
    if args.suite is not None:
        if args.suite_seeds <= 0:
            raise UserError("--suite-seeds must be positive")
        return
    if args.num_seeds <= 0:
        raise UserError("--num-seeds must be positive")
    if args.start_lr is not None and not (math.isfinite(args.start_lr) and 0 < args.start_lr <= 1):
        raise UserError(f"--start-lr must be a learning rate in (0, 1], got {args.start_lr}")
    if args.reuse_baselines is not None and not (Path(args.reuse_baselines) / "summary.json").is_file():
        raise UserError(
            f"--reuse-baselines {args.reuse_baselines}: no summary.json there; name an earlier test's folder"
        )
    if args.baselines_only == (args.run_dir is not None):
        raise UserError("give either --test-id <run> (or --controller NAME) or --baselines-only")
    if args.controller is not None and args.checkpoint != "best":
        raise UserError("--controller tests a best.pt; --checkpoint picks another controller of a run (--test-id)")


def chosen_on(args: Namespace) -> list[int]:
    """The seeds the tested controller was chosen on: best.pt and iter-N on the run's evaluation seeds (when it
    ran them); none for last.pt."""
    if args.controller is not None:  # a best.pt outside its run: its metadata names them
        return list(read_controller(load_torch(Path(args.run_dir) / "best.pt"))["metadata"].get("eval_seeds", []))
    run = read_run_config(args.run_dir) if args.checkpoint != "last" else {}
    return evaluation_seeds(run.get("eval_seeds", 0)) if run.get("eval_every") else []


def interrupted(kept: str) -> int:
    """Ctrl-C during a test: say what is kept; the exit status 130."""
    print(f"\ninterrupted; {kept}", file=sys.stderr)
    return 130


@dataclass
class Test:
    """A test of a controller (or of the baselines alone) as the flags set it up, ready to run."""

    config: EnvConfig
    env: LREnv
    settings: dict[str, Any]
    learned: Learned | None
    transfer: bool
    controller_file: Path | None
    grid: dict[str, Any]
    plan: TestPlan
    seeds: list[int]
    out: Path


def build_test(args: Namespace) -> Test:
    """The controller and its start LRs, the env, the grid's tuned baselines (run first where asked), the plan,
    the seeds and the result folder."""
    learned, transfer, start_lrs, controller_file = None, False, [], None
    if not args.baselines_only:
        # The controller starts from each initial LR it was trained on (and from the tuned step decay's).
        start_lrs = list(training_initial_lrs(config_of(EnvConfig, args))) if args.start_lr is None else [args.start_lr]
        # Every schedule here sets its own initial LR; the env's (kept in summary.json's settings)
        # is 1e-3 for a controller trained from random ones, as in results stored before this protocol.
        args.initial_lr = 1e-3 if args.initial_lr == "random" else args.initial_lr
    config = config_of(EnvConfig, args).for_evaluation()
    env = LREnv(config)
    settings = evaluation_settings(config)
    if not args.baselines_only:
        learned, transfer, controller_file, sha = load_learned(args.run_dir, args.checkpoint, env, args.policy)
        settings.update(controller_sha256=sha)  # a copied run folder (results/runs/) reuses its own results
    grid = tuned_grid(args, env)
    # Baselines alone go to "baselines" plus the grid file's settings tag, e.g. baselines_bs500_steps200_val1000.
    tag = baseline_file(args.results_dir, config).stem.removeprefix(f"{config.dataset}_{config.architecture}")
    out_name = result_name(args) if learned else "baselines" + tag
    seeds = seeds_for_test(args.seed, args.num_seeds)
    check_test_seeds(seeds, grid["settings"]["seed"], chosen_on(args) if learned else [])
    out = Path(args.results_dir) / f"{config.dataset}_{config.architecture}" / out_name
    plan = plan_test(grid, learned, start_lrs)
    return Test(config, env, settings, learned, transfer, controller_file, grid, plan, seeds, out)


def tuned_grid(args: Namespace, env: LREnv) -> dict[str, Any]:
    """The setting's grid file (running baselines.py's grid first with --run-baselines), checked; a notice names
    the families it lacks."""
    path = baseline_file(args.results_dir, env.config)
    if not path.exists():
        if not args.run_baselines:
            raise missing_grid_error(path, env.config, args.seed)
        with make_pool(config_of(ParallelConfig, args), env.config, jobs=len(grid_schedules(env.config))) as pool:
            baseline_grid_search(env, args.seed, path, progress=args.progress, pool=pool, wait=args.wait)
    grid = load_grid(path, env.config)
    if missing := [family for family, key in best_keys().items() if key not in grid]:
        print(
            f"{path} has no {', '.join(missing)} points: run baselines.py with this test's settings to add them",
            file=sys.stderr,
        )
    return grid


def compare(args: Namespace) -> int:
    """The fair test of a controller (or of the baselines alone) over paired seeds: run, store, tabulate, plot."""
    test = build_test(args)
    plan, out = test.plan, test.out
    with FolderLock(out / ".lock", f"result folder {out}", args.wait):  # one writer at a time
        store = ResultStore(out / "summary.json", {**test.settings, "seeds": test.seeds})
        if args.reuse_baselines:  # a hand-made schedule's run does not depend on the controller
            jobs = plan_jobs(plan, test.seeds)
            hand_made = [key for key, schedule, _ in jobs if isinstance(schedule, HandMadeSchedule)]
            copied = reuse_results(store, Path(args.reuse_baselines) / "summary.json", hand_made)
            print(f"reusing {len(copied)} baseline runs of {args.reuse_baselines}", file=sys.stderr)
        try:
            jobs = len(plan.schedules) * len(test.seeds)
            with make_pool(config_of(ParallelConfig, args), test.config, jobs=jobs) as pool:
                by_schedule = run_test(test.env, plan, test.seeds, store, progress=args.progress, pool=pool)
        except KeyboardInterrupt:
            return interrupted(f"every finished run is kept in {store.path}. Rerun the same command to go on.")
        summary = summarize(by_schedule, plan.labels, plan.comparisons)
        config = test.config
        title = result_title(config.dataset, config.architecture, out.name, len(test.seeds), test.transfer)
        table = format_table(summary, reference=plan.reference, title=title)
        controller = str(test.controller_file) if test.learned else None
        store.update(summary=summary, transfer=test.transfer, controller=controller)
        (out / "table.md").write_text(table)
        curves = {plan.labels[key]: [r.curves for r in runs] for key, runs in by_schedule.items()}
        plot_comparison(curves, out / "curves.png", title=title)
    print(table)
    print(f"written: {out / 'summary.json'}, {out / 'table.md'}, {out / 'curves.png'}")
    return 0


def main() -> int:
    """Test as the flags say (a controller or the baselines alone, a suite, or a replot); the exit status."""
    args = parse_args("test")
    check_flags(args)
    if args.replot is not None:
        return replot(args.replot)
    set_threads(args.threads)
    return suite(args) if args.suite is not None else compare(args)


def cli() -> None:
    """The console script ``alrs-test``."""
    run_script(main)
