"""The speed benchmark must keep running; its figures are read by people, not asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_env_speed_benchmark_runs_and_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "env_speed.py"),
            "--dataset",
            "mnist",
            "--architecture",
            "mlp",
            "--data-dir",
            str(tmp_path / "none"),
            "--batch-size",
            "100",
            "--update-freq",
            "2",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--rounds",
            "1",
            "--json",
            str(out),
            "--variants",
            "env",
            "floor",
            "naive",
            "batched",
            "--num-envs",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert figures["data"] == "generated"
    assert set(figures["seconds_per_controller_step"]) == {"env", "floor", "naive", "batched"}
    assert all(s > 0 for s in figures["seconds_per_controller_step"].values())
    assert figures["naive_over_env"] > 0 and figures["env_over_floor"] > 0 and min(figures["peak_rss_mb"].values()) > 0
    assert figures["batched_speedup"] > 0 and figures["num_envs"] == 2
    assert "naive / env" in result.stdout and "2 x env / batched" in result.stdout


def test_scheduler_overhead_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "scheduler_overhead.py"), "--settings", "mlp-quick"]
    command += ["--steps", "10", "--rounds", "1", "--data-dir", str(tmp_path / "none"), "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())["settings"]["mlp-quick"]
    assert set(figures["median_seconds"]) == {"adam", "learned", "schedulefree"}
    assert set(figures["median_ratio"]) == {"learned_over_adam", "schedulefree_over_adam"}
    assert 0 < figures["median_scheduler_share"] < 1
