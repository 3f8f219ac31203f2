"""baselines.py and test.py end to end on small data, and their answers to bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cli import call_script, small_flags

from alrs.errors import UserError
from alrs.protocol import check_test_seeds, stored_curves


@pytest.fixture(scope="module")
def trained_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    flags = [*small_flags(data_dir), "--num-envs", "2", "--episodes", "4", "--out-dir", str(out)]
    result = call_script("train.py", *flags)
    assert result.returncode == 0, result.stderr
    (run,) = out.iterdir()
    return run


def run_test_py(run: Path, data_dir: Path, results_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """test.py on ``run`` with small data on the CPU, its results written under ``results_dir``."""
    flags = ["--test-id", str(run), "--data-dir", str(data_dir), "--device", "cpu", "--results-dir", str(results_dir)]
    return call_script("test.py", *flags, *extra)


def test_baselines_then_test_write_summary_table_and_figures(trained_run: Path, data_dir: Path, tmp_path: Path) -> None:
    flags = [*small_flags(data_dir), "--results-dir", str(tmp_path)]
    result = call_script("baselines.py", *flags)
    assert result.returncode == 0, result.stderr
    grid = tmp_path / "baselines" / "fa-mnist_mlp_bs50_steps20_k5_val500.json"
    data = json.loads(grid.read_text())
    assert (
        len(data["results"]) == 117
        and data["best_step_decay"].startswith("step decay")
        and data["best_cosine"].startswith("cosine")
        and data["best_schedule_free"].startswith("schedule-free adamw")
        and data["best_prodigy"].startswith("prodigy")
        and data["best_adam_ema"].startswith("adam + ema")
    )
    assert "schedule-free" in result.stdout and "adam-ema" in result.stdout
    assert grid.with_suffix(".png").exists()

    result = run_test_py(trained_run, data_dir, tmp_path, "--no-progress", "--num-seeds", "3")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "fa-mnist_mlp" / trained_run.name
    summary = json.loads((out / "summary.json").read_text())
    # The fair protocol: the controller (trained from lr 1e-3) starts from 1e-3 and from the tuned step
    # decay's LR; it is compared with the tuned step decay, cosine and linear, the tuned peers, and with
    # the best step decay from 1e-3 (when the tuned one starts elsewhere).
    tuned_lr = data["results"][data["best_step_decay"]]["schedule"]["initial_lr"]
    learned = {f"learned@{lr:g}" for lr in {1e-3, tuned_lr}}
    same_lr = set() if tuned_lr == 1e-3 else {"step-decay@0.001"}
    families = {"constant", "step-decay", "cosine", "linear", "schedule-free", "prodigy", "adam-ema"}
    assert set(summary["summary"]["schedules"]) == {*families, *learned, *same_lr}
    assert summary["summary"]["schedules"]["step-decay"]["label"] == f"step decay ({data['best_step_decay'][11:]})"
    assert len(summary["results"]) == 3 * len(summary["summary"]["schedules"]) and summary["transfer"] is False
    pairs = {(c["schedule"], c["reference"]) for c in summary["summary"]["comparisons"]}
    references = ("step-decay", "cosine", "linear", "schedule-free", "prodigy", "adam-ema")
    assert pairs == {(key, ref) for key in learned for ref in references} | {("learned@0.001", ref) for ref in same_lr}
    results = summary["results"]
    assert {r["seed"] for r in results.values()} == {1000, 1001, 1002}
    assert {r["curves"]["lr"][0] for k, r in results.items() if k.startswith("learned from lr=0.001 |")} == {1e-3}
    table = (out / "table.md").read_text()
    assert (
        "| learned from lr=0.001 |" in table
        and "paired t-test p" in table
        and "| learned from lr=0.001 | cosine (lr=" in table
        and "| learned from lr=0.001 | schedule-free adamw (lr=" in table
    )
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"

    # --replot redraws the figure from summary.json alone: every row of the table, each seed's curves.
    curves, title = stored_curves(out)
    labels = [entry["label"] for entry in summary["summary"]["schedules"].values()]
    assert list(curves) == labels and all(len(runs) == 3 for runs in curves.values())
    assert title == f"fa-mnist / mlp: {trained_run.name}, 3 seeds"
    stored = (out / "summary.json").read_bytes()
    (out / "curves.png").unlink()
    replotted = call_script("test.py", "--replot", str(out))
    assert replotted.returncode == 0, replotted.stderr
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG" and (out / "summary.json").read_bytes() == stored

    alone = call_script("test.py", "--baselines-only", "--num-seeds", "2", *flags, "--no-progress")
    assert alone.returncode == 0, alone.stderr
    table = (tmp_path / "fa-mnist_mlp" / "baselines_bs50_steps20_k5_val500" / "table.md").read_text()
    assert table.count("\n| ") == 8 and "learned" not in table and "Welch" not in table

    # --reuse-baselines takes the hand-made schedules' runs from an earlier test instead of rerunning them.
    baselines_dir = tmp_path / "fa-mnist_mlp" / "baselines_bs50_steps20_k5_val500"
    reuse = ["--checkpoint", "last", "--num-seeds", "2", "--reuse-baselines", str(baselines_dir)]
    last = run_test_py(trained_run, data_dir, tmp_path, "--no-progress", *reuse)
    assert last.returncode == 0, last.stderr
    assert "reusing 14 baseline runs of" in last.stderr  # 7 hand-made schedules (4 families, 3 peers) x 2 seeds
    baselines = json.loads((baselines_dir / "summary.json").read_text())
    summary = json.loads((tmp_path / "fa-mnist_mlp" / f"{trained_run.name}_last" / "summary.json").read_text())
    assert summary["controller"].endswith("last.pt")
    assert all(summary["results"][key] == record for key, record in baselines["results"].items())

    sampled = run_test_py(trained_run, data_dir, tmp_path, "--no-progress", "--policy", "sample", "--num-seeds", "2")
    assert sampled.returncode == 0, sampled.stderr
    summary = json.loads((tmp_path / "fa-mnist_mlp" / f"{trained_run.name}_sample" / "summary.json").read_text())
    policies = {r["schedule"].get("policy") for k, r in summary["results"].items() if k.startswith("learned")}
    assert policies == {"sample"} and "learned (sampled actions) from lr=0.001 |" in sampled.stdout

    # Test seeds are seed + 1000 + i; --seed 1000 would test on the evaluation seeds (2000, ...) that
    # chose best.pt, or an evaluated controller (the run's last iteration, 2, is one).
    for checkpoint in ("best", "iter-2"):
        chosen = ["--checkpoint", checkpoint, "--seed", "1000"]
        clash = call_script("test.py", "--test-id", str(trained_run), *chosen, *flags)
        assert clash.returncode == 2 and "an evaluation seed the controller was chosen on" in clash.stderr
        assert len(clash.stderr.strip().splitlines()) == 1

    transfer = run_test_py(
        trained_run, data_dir, tmp_path, "--no-progress", "--num-seeds", "2", "--dataset", "mnist", "--run-baselines"
    )
    assert transfer.returncode == 0, transfer.stderr
    assert "transfer from fa-mnist/mlp" in transfer.stdout


def test_a_test_on_the_grids_seed_is_refused() -> None:
    check_test_seeds([1000, 1001], grid_seed=7, selection_seeds=[2000])
    with pytest.raises(UserError, match="test seed 1001 is the seed the baseline grid was chosen on"):
        check_test_seeds([1000, 1001], grid_seed=1001)


def test_test_needs_a_run_or_baselines_only(trained_run: Path) -> None:
    for args in ([], ["--test-id", str(trained_run), "--baselines-only"]):
        result = call_script("test.py", *args)
        assert result.returncode != 0 and "give either --test-id <run> (or --controller NAME) or --baselines-only" in (
            result.stderr
        )


def test_unknown_test_id_lists_the_runs(trained_run: Path) -> None:
    result = call_script("test.py", "--test-id", "nope", "--out-dir", str(trained_run.parent))
    assert result.returncode == 2 and trained_run.name in result.stderr and "Traceback" not in result.stderr


def test_test_id_is_found_under_the_config_files_out_dir(trained_run: Path, tmp_path: Path) -> None:
    from alrs.cli import parse_args

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"out_dir": str(trained_run.parent)}))
    args = parse_args("test", ["--test-id", trained_run.name, "--config", str(config)])
    assert args.run_dir == str(trained_run) and args.architecture == "mlp" and args.batch_size == 50


def test_a_released_controller_is_tested_by_name_with_its_own_settings() -> None:
    from alrs.cli import parse_args
    from alrs.controllers import CONTROLLERS

    args = parse_args("test", ["--controller", "generalist", "--suite", "configs/suites/fa-mnist-small.json"])
    assert Path(args.run_dir) == CONTROLLERS["generalist"].checkpoint.parent and args.controller == "generalist"
    assert args.feature_scale == "relative" and args.lr_feature == "log-lr" and args.action_range == 1.2
    assert args.instance_set is None  # the suite names the tasks; the training tasks' file may not be here
    for flags, message in [
        (["--controller", "nope"], f"no released controller named 'nope': the names are {', '.join(CONTROLLERS)}"),
        (["--controller", "generalist", "--test-id", "x"], "--test-id and --controller each name the controller"),
    ]:
        result = call_script("test.py", *flags)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_missing_baselines_give_the_command(trained_run: Path, data_dir: Path, tmp_path: Path) -> None:
    result = run_test_py(trained_run, data_dir, tmp_path)
    assert result.returncode == 2
    assert (
        "python baselines.py --dataset fa-mnist --architecture mlp --batch-size 50 --update-freq 5 "
        "--num-train-steps 20 --val-size 500 --seed 0"
    ) in result.stderr and "--run-baselines" in result.stderr


def test_controller_of_another_action_mode_is_refused(trained_run: Path, data_dir: Path, tmp_path: Path) -> None:
    result = run_test_py(trained_run, data_dir, tmp_path, "--no-discrete")
    assert result.returncode == 2 and "the controller's actions are" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_reuse_of_a_folder_without_results_is_refused(trained_run: Path, data_dir: Path, tmp_path: Path) -> None:
    result = run_test_py(trained_run, data_dir, tmp_path, "--reuse-baselines", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "--reuse-baselines" in result.stderr and "no summary.json" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_replot_needs_a_finished_test(tmp_path: Path) -> None:
    missing = call_script("test.py", "--replot", str(tmp_path))
    assert missing.returncode == 2 and "no summary.json there" in missing.stderr
    (tmp_path / "summary.json").write_text(json.dumps({"settings": {}, "results": {}}))
    unfinished = call_script("test.py", "--replot", str(tmp_path))
    assert unfinished.returncode == 2 and "not a finished test" in unfinished.stderr
    assert len(unfinished.stderr.strip().splitlines()) == 1
