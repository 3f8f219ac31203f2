"""Parallel workers (local processes and Ray) give the sequential run's numbers; Ctrl-C leaves nothing behind."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from cli import ROOT, call_script, run_script, small_flags, start_script

from alrs.config import EnvConfig, PPOConfig, TrainingConfig
from alrs.env import LREnv
from alrs.episodes import run_jobs
from alrs.io import load_json, load_torch
from alrs.parallel import ParallelConfig, WorkerPool
from alrs.results import ResultStore
from alrs.schedules import Constant, Cosine, StepDecay
from alrs.training import train_controller
from alrs.workers import WorkerDied


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray with 2 CPUs for the module (pools join it and leave it running)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def _train(
    run: Path, config: EnvConfig, parallel: ParallelConfig, prepare: Callable[[WorkerPool], None] | None = None
) -> tuple[list[list[str]], list[list[str]], dict, int]:
    """A 3-iteration run of 4 children with an evaluation each iteration: metrics and eval rows
    (without wall times), the final controller weights, and how many workers were replaced."""
    with WorkerPool(parallel, parallel.workers or 1, config) as pool:
        if prepare is not None:
            prepare(pool)
        train_controller(
            run,
            config,
            PPOConfig(),
            TrainingConfig(num_envs=4, episodes=12, eval_every=1, eval_seeds=2),
            seed=5,
            progress=False,
            pool=pool,
        )
    metrics = [row[:7] + row[8:] for row in csv.reader(open(run / "metrics.csv"))]
    evals = [row[:4] for row in csv.reader(open(run / "eval.csv"))]
    return metrics, evals, load_torch(run / "last.pt")["controller"]["state_dict"], pool.restarts


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_parallel_training_equals_the_sequential_run(
    small_env_options: dict, tmp_path: Path, backend: str, request
) -> None:
    """Same seeds, one torch thread per child: every metric, evaluation and weight to the last digit."""
    if backend == "ray":
        request.getfixturevalue("local_ray")
    torch.set_num_threads(1)
    try:
        config = EnvConfig(**small_env_options, initial_lr="random")
        sequential = _train(tmp_path / "sequential", config, ParallelConfig(workers=1, threads=1))
        parallel = _train(tmp_path / backend, config, ParallelConfig(workers=2, backend=backend, threads=1))
    finally:
        torch.set_num_threads(2)
    assert len(sequential[0]) == 13 and len(sequential[1]) == 4
    assert parallel[0] == sequential[0]
    assert parallel[1] == sequential[1]
    assert all(torch.equal(parallel[2][k], v) for k, v in sequential[2].items())


def _kill_on(pool: WorkerPool, method: str, call: int) -> None:
    """Kill the pool's first worker (SIGKILL, as the OOM killer does) just after its ``call``-th ``method`` call."""
    worker, count = pool.workers[0], [0]
    real = worker.submit

    def submit(name: str, *args) -> None:
        real(name, *args)
        count[0] += name == method
        if name == method and count[0] == call:
            if hasattr(worker, "process"):
                os.kill(worker.process.pid, signal.SIGKILL)
            else:
                import ray

                ray.kill(worker.actor, no_restart=False)  # Ray restarts it (max_restarts)

    worker.submit = submit


@pytest.mark.parametrize(("backend", "method", "call"), [("local", "step", 5), ("local", "run", 2), ("ray", "step", 6)])
def test_a_killed_worker_is_replaced_and_the_run_equals_the_undisturbed_one(
    small_env_options: dict, tmp_path: Path, backend: str, method: str, call: int, request
) -> None:
    """A worker killed mid-rollout (its children are rebuilt and replayed) or mid-evaluation (its job reruns):
    the run ends as the undisturbed one does, to the last digit."""
    if backend == "ray":
        request.getfixturevalue("local_ray")
    torch.set_num_threads(1)
    try:
        config = EnvConfig(**small_env_options, initial_lr="random")
        undisturbed = _train(tmp_path / "undisturbed", config, ParallelConfig(workers=2, backend=backend, threads=1))
        parallel = ParallelConfig(workers=2, backend=backend, threads=1)
        killed = _train(tmp_path / "killed", config, parallel, lambda pool: _kill_on(pool, method, call))
    finally:
        torch.set_num_threads(2)
    assert killed[0] == undisturbed[0] and killed[1] == undisturbed[1]
    assert all(torch.equal(killed[2][k], v) for k, v in undisturbed[2].items())
    assert killed[3] == 1  # one restart


def test_more_worker_deaths_than_allowed_stop_with_the_cause(small_env_options: dict, tmp_path: Path) -> None:
    config = EnvConfig(**small_env_options)
    parallel = ParallelConfig(workers=2, threads=1, max_worker_restarts=0)
    with pytest.raises(
        WorkerDied, match=r"died \(killed by SIGKILL \(exit -9\), most likely the kernel's out-of-memory"
    ):
        _train(tmp_path / "run", config, parallel, lambda pool: _kill_on(pool, "step", 2))


def _jobs() -> list[tuple[str, object, int]]:
    schedules = [StepDecay(1e-2, 10, 0.5), StepDecay(1e-3, 5, 0.9), Constant(1e-2), Constant(1e-3), Cosine(1e-2, 20)]
    return [(f"{s.name} | seed {seed}", s, seed) for s in schedules for seed in (1000, 1001)]


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_parallel_jobs_equal_sequential_and_an_interrupted_store_resumes(
    small_env_options: dict, tmp_path: Path, backend: str, request
) -> None:
    """Test seeds on two workers store the sequential results; interrupted after 3 of 10, the rerun
    runs exactly the 7 missing jobs and ends with the same store."""
    if backend == "ray":
        request.getfixturevalue("local_ray")
    torch.set_num_threads(1)
    try:
        config = EnvConfig(**small_env_options, initial_lr="random")
        env = LREnv(config)
        expected = run_jobs(env, _jobs(), ResultStore(tmp_path / "sequential.json", {}), progress=False)
        with WorkerPool(ParallelConfig(workers=2, backend=backend, threads=1), 2, config) as pool:
            store = ResultStore(tmp_path / "parallel.json", {})
            added = 0

            def add_then_interrupt(key, result, **extra):
                nonlocal added
                ResultStore.add(store, key, result, **extra)
                added += 1
                if added == 3:
                    raise KeyboardInterrupt

            store.add = add_then_interrupt
            with pytest.raises(KeyboardInterrupt):
                run_jobs(env, _jobs(), store, progress=False, pool=pool)
        assert len(load_json(tmp_path / "parallel.json")["results"]) == 3

        submitted = []
        with WorkerPool(ParallelConfig(workers=2, backend=backend, threads=1), 2, config) as pool:
            run = pool.run
            pool.run = lambda fn, cfg, jobs: (submitted.extend(jobs), run(fn, cfg, jobs))[1]
            results = run_jobs(env, _jobs(), ResultStore(tmp_path / "parallel.json", {}), progress=False, pool=pool)
    finally:
        torch.set_num_threads(2)
    assert len(submitted) == 7
    assert results == expected


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--workers", "0"], "--workers must be a positive integer"),
        (["--workers", "3", "--num-envs", "2"], "--workers 3 is more than the 2 children"),
        (["--workers", "2", "--num-envs", "2", "--batched-envs"], "--batched-envs trains every child in one process"),
        (["--backend", "spark"], "--backend must be one of local, ray"),
        (["--ray-address", "127.0.0.1:9"], "--ray-address needs --backend ray"),
        (
            ["--backend", "ray", "--ray-address", "127.0.0.1:9"],
            "cannot reach the Ray cluster at --ray-address 127.0.0.1:9",
        ),
    ],
)
def test_bad_parallel_settings_are_one_line_errors_before_any_run_folder(
    data_dir: Path, tmp_path: Path, flags: list[str], message: str
) -> None:
    args = [*small_flags(data_dir), "--out-dir", str(tmp_path / "runs"), *flags]
    # In this process, but for the Ray cluster it tries to join (it would meet this process's own Ray).
    result = (
        run_script("train.py", *args) if "--backend" in flags and "ray" in flags else call_script("train.py", *args)
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and message in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "runs").exists()


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid``."""
    found, frontier = set(), [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            kids = {int(k) for k in (task / "children").read_text().split()} if (task / "children").exists() else set()
            frontier += sorted(kids - found)
            found |= kids
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the worker processes through /proc")
def test_ctrl_c_on_parallel_training_leaves_no_workers_and_resumes_without_loss(data_dir: Path, tmp_path: Path) -> None:
    flags = [
        *small_flags(data_dir),
        "--num-envs",
        "2",
        "--workers",
        "2",
        "--eval-every",
        "0",
        "--out-dir",
        str(tmp_path),
    ]
    proc = start_script("train.py", *flags, "--episodes", "400")
    deadline = time.time() + 120
    metrics: list[Path] = []
    while time.time() < deadline and not (metrics and len(metrics[0].read_text().splitlines()) > 3):
        time.sleep(0.2)
        metrics = list(tmp_path.glob("*/metrics.csv"))
    workers = _children(proc.pid)
    assert len(workers) >= 2, "the two workers should be running"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert "Continue with: python train.py --resume" in stderr
    time.sleep(0.5)
    assert not [pid for pid in workers if _alive(pid)]

    run = metrics[0].parent
    done = len(metrics[0].read_text().splitlines()) - 1
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--resume", str(run), "--episodes", str(done + 4), "--no-progress"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    episodes = [int(row["episode"]) for row in csv.DictReader(open(run / "metrics.csv"))]
    assert episodes == list(range(1, done + 5))
