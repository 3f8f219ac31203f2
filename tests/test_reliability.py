"""What a careless user or a damaged file can throw at the toolkit: every case ends in correct
behaviour or in a one-line error naming the problem and the fix; no traceback, nothing lost."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli import ROOT, call_script, small_flags, start_script

from alrs import commands, parallel
from alrs.actions import action_of
from alrs.cli import parse_args
from alrs.commands.train import stopped
from alrs.config import EnvConfig, PPOConfig, TrainingConfig
from alrs.controller import Controller
from alrs.env import LREnv
from alrs.errors import UserError
from alrs.features import fixed_scale_indices
from alrs.io import FolderLock, load_torch, save_json, save_torch
from alrs.parallel import ParallelConfig, WorkerPool
from alrs.results import EpisodeResult, ResultStore
from alrs.runfolder import resolve_run
from alrs.scheduler import LearnedLRScheduler
from alrs.suite import suite_folder
from alrs.training import controller_metadata, train_controller
from alrs.workers import ProcessWorker


def _small(data_dir: Path) -> list[str]:
    return [*small_flags(data_dir), "--workers", "1"]


def _one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    """A non-zero exit whose last stderr line is ``<script>: error: ...`` holding ``words``; no traceback."""
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "error:" in last and all(w in last for w in words), last


def _trainrun_script(data_dir: Path, out: Path, *flags: str) -> Path:
    result = call_script(
        "train.py",
        *_small(data_dir),
        "--num-envs",
        "2",
        "--episodes",
        "4",
        "--eval-every",
        "1",
        "--eval-seeds",
        "1",
        "--out-dir",
        str(out),
        *flags,
    )
    assert result.returncode == 0, result.stderr
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


# ---------------------------------------------------------------------------------------------- files read back
@pytest.mark.parametrize(
    "content,words",
    [
        (None, ["is a folder"]),  # --config names a directory
        ('{"lr_noise": NaN}', ["lr_noise", "finite"]),  # Python's JSON reader accepts NaN
        ('{"gamma": Infinity}', ["gamma", "finite"]),
        ('{"num_envs": "1"}', ["num_envs", "should be int"]),
        ('{"workers": 1.5}', ["workers", "integer or null"]),
        ("\x00\xff", ["not valid JSON"]),
    ],
)
def test_a_bad_config_file_is_refused_naming_the_file_and_the_setting(
    tmp_path: Path, data_dir: Path, content: str | None, words: list[str]
) -> None:
    config = tmp_path / "c.json"
    if content is None:
        config.mkdir()
    else:
        config.write_text(content)
    result = call_script("train.py", *_small(data_dir), "--config", str(config), "--out-dir", str(tmp_path / "runs"))
    _one_line_error(result, str(config), *words)
    assert not (tmp_path / "runs").exists()


def test_a_run_config_with_a_wrongly_typed_setting_is_refused_on_resume(tmp_path: Path, data_dir: Path) -> None:
    run = _trainrun_script(data_dir, tmp_path / "runs")
    config = json.loads((run / "config.json").read_text())
    config["settings"]["num_envs"] = "1"
    (run / "config.json").write_text(json.dumps(config))
    _one_line_error(call_script("train.py", "--resume", str(run), "--episodes", "6"), "config.json", "num_envs")


def test_last_pt_of_another_run_is_refused_and_best_pt_survives(tmp_path: Path, data_dir: Path) -> None:
    mlp = _trainrun_script(data_dir, tmp_path / "a")
    other = _trainrun_script(data_dir, tmp_path / "b", "--action-range", "1.2")
    best = (mlp / "best.pt").read_bytes()
    (mlp / "last.pt").write_bytes((other / "last.pt").read_bytes())
    _one_line_error(
        call_script("train.py", "--resume", str(mlp), "--episodes", "8"),
        "last.pt",
        "other settings",
        "env.action_range",
    )
    assert (mlp / "best.pt").read_bytes() == best


@pytest.mark.parametrize(
    "damage,words",
    [
        (lambda p: p.write_text(""), ["metrics.csv", "header"]),
        (lambda p: p.write_text(p.read_text().splitlines()[0] + "\n"), ["metrics.csv", "holds 0 episodes", "has 4"]),
        (lambda p: p.unlink(), ["metrics.csv", "missing"]),
    ],
)
def test_a_damaged_metrics_csv_is_refused_on_resume_and_left_as_it_is(
    tmp_path: Path, data_dir: Path, damage, words: list[str]
) -> None:
    run = _trainrun_script(data_dir, tmp_path / "runs")
    damage(run / "metrics.csv")
    before = (run / "metrics.csv").read_bytes() if (run / "metrics.csv").exists() else None
    _one_line_error(call_script("train.py", "--resume", str(run), "--episodes", "6"), *words)
    after = (run / "metrics.csv").read_bytes() if (run / "metrics.csv").exists() else None
    assert after == before


@pytest.mark.parametrize(
    "edit,words",
    [
        (lambda d: d["results"].update(x={"seed": 1}), ["'x'", "missing or of the wrong type"]),
        (lambda d: next(iter(d["results"].values())).update(final_val_loss="low"), ["final_val_loss = 'low'"]),
        (lambda d: d.update(results=[]), ["not a result store"]),
    ],
)
def test_a_damaged_result_store_is_refused_naming_the_entry(tmp_path: Path, edit, words: list[str]) -> None:
    path = tmp_path / "store.json"
    store = ResultStore(path, {"a": 1})
    store.add("k", EpisodeResult({"name": "c"}, 1, 0.5, 0.4, 3, False, 0.5, 0.8, math.nan, math.nan))
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(UserError) as info:
        ResultStore(path, {"a": 1})
    assert str(path) in str(info.value) and all(w in str(info.value) for w in words)


def test_stored_undefined_figures_are_strict_json_and_read_back_as_nan(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    ResultStore(path, {}).add(
        "k", EpisodeResult({"name": "c"}, 1, math.inf, math.nan, 0, True, math.nan, math.nan, math.nan, math.nan)
    )
    text = path.read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))
    result = ResultStore(path, {})["k"]
    assert result.diverged and math.isnan(result.test_loss_best) and math.isnan(result.final_val_loss)


# ---------------------------------------------------------------------------------------------- poisoned inputs
def _poisoned(edit) -> dict:
    """A controller checkpoint of the default settings, with ``edit`` applied to its state_dict."""
    config = EnvConfig()
    controller = Controller(
        len(config.features), action_of(config).spec(), fixed_scale=fixed_scale_indices(config.features)
    )
    checkpoint = controller.checkpoint(controller_metadata(config, PPOConfig()))
    edit(checkpoint["state_dict"])
    return checkpoint


@pytest.mark.parametrize(
    "edit,words",
    [
        (lambda s: s["actor.0.weight"].fill_(math.nan), ["actor.0.weight", "NaN or infinite"]),
        (lambda s: s["obs_rms.mean"].fill_(math.inf), ["obs_rms.mean", "NaN or infinite"]),
        (lambda s: s["obs_rms.var"].fill_(math.nan), ["obs_rms.var", "NaN or infinite"]),
        (lambda s: s["obs_rms.var"].fill_(-1.0), ["obs_rms.var", "negative"]),
        (lambda s: s.update({"actor.0.weight": torch.zeros(32, 3)}), ["actor.0.weight", "shape [32, 3]", "make [32,"]),
        (lambda s: s.pop("critic.0.bias"), ["lacks critic.0.bias"]),
    ],
)
def test_a_poisoned_controller_checkpoint_is_one_line_naming_the_file_before_any_work(
    tmp_path: Path, edit, words: list[str]
) -> None:
    path = tmp_path / "best.pt"
    save_torch(_poisoned(edit), path)
    optimizer = torch.optim.Adam(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(UserError) as info:
        LearnedLRScheduler(optimizer, path, torch.nn.Linear(2, 2))
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message and all(w in message for w in words), message


def test_a_poisoned_last_pt_is_refused_on_resume_and_test(tmp_path: Path, data_dir: Path) -> None:
    run = _trainrun_script(data_dir, tmp_path / "runs")
    saved = load_torch(run / "last.pt")
    saved["controller"]["state_dict"]["obs_rms.var"].fill_(math.nan)
    save_torch(saved, run / "last.pt")
    _one_line_error(call_script("train.py", "--resume", str(run), "--episodes", "6"), "last.pt", "obs_rms.var", "NaN")
    best = load_torch(run / "best.pt")
    best["state_dict"]["actor.0.weight"].fill_(math.inf)
    save_torch(best, run / "best.pt")
    _one_line_error(
        call_script("test.py", "--test-id", str(run), "--data-dir", str(data_dir), "--results-dir", str(tmp_path)),
        "best.pt",
        "actor.0.weight",
    )


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_result_record_with_a_non_finite_figure_is_refused_naming_it(tmp_path: Path, value: str) -> None:
    path = tmp_path / "store.json"
    ResultStore(path, {}).add("k", EpisodeResult({"name": "c"}, 1, 0.5, 0.4, 3, False, 0.5, 0.8, 0.5, 0.8))
    path.write_text(path.read_text().replace('"best_val_loss": 0.4', f'"best_val_loss": {value}'))
    with pytest.raises(UserError, match=r"store.json: result 'k': best_val_loss = .* is not finite"):
        ResultStore(path, {})


# ---------------------------------------------------------------------------------------------- numeric settings
@pytest.mark.parametrize(
    "flags,words",
    [
        (["--gamma", "nan"], ["gamma", "finite"]),
        (["--lr-noise", "nan"], ["lr_noise", "finite"]),
        (["--action-range", "inf"], ["action_range", "finite"]),
        (["--ppo-lr", "-1"], ["learning_rate"]),
        (["--hidden-sizes", "1000000000000"], ["hidden_sizes", "65536"]),
        (["--initial-lr", "nan"], ["initial_lr"]),
        (["--threads", "0"], ["--threads"]),
        (["--out-dir", "/proc/alrs-cannot-make-this"], ["/proc/alrs-cannot-make-this"]),
    ],
)
def test_bad_numbers_and_paths_are_refused_before_any_run_folder(
    tmp_path: Path, data_dir: Path, flags: list[str], words: list[str]
) -> None:
    out = ["--out-dir", str(tmp_path / "runs")] if "--out-dir" not in flags else []
    _one_line_error(call_script("train.py", *_small(data_dir), *out, *flags), *words)
    assert not (tmp_path / "runs").exists()


def test_an_out_dir_that_is_a_file_is_a_one_line_error(tmp_path: Path, data_dir: Path) -> None:
    (tmp_path / "file").write_text("x")
    _one_line_error(call_script("train.py", *_small(data_dir), "--out-dir", str(tmp_path / "file")), "is a file")


@pytest.mark.parametrize("lr", [math.inf, math.nan, -1.0, 0.0])
def test_env_refuses_a_non_finite_or_non_positive_initial_lr(small_env_options: dict, lr: float) -> None:
    env = LREnv(EnvConfig(**small_env_options))
    with pytest.raises(UserError, match="initial_lr"):
        env.reset(seed=0, options={"initial_lr": lr})


def test_env_refuses_a_nan_continuous_action(small_env_options: dict) -> None:
    env = LREnv(EnvConfig(**small_env_options, discrete=False))
    env.reset(seed=0)
    with pytest.raises(UserError):
        env.step(np.array([math.nan], dtype=np.float32))


def test_test_py_refuses_a_nan_start_lr(tmp_path: Path) -> None:
    _one_line_error(
        call_script("test.py", "--baselines-only", "--start-lr", "nan", "--results-dir", str(tmp_path)), "--start-lr"
    )


# ---------------------------------------------------------------------------------------------- Ctrl-C
def _interrupt_when(proc: subprocess.Popen, ready, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while not ready() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=240)  # generous: a loaded CI machine runs several times slower
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
        raise AssertionError(f"still running 240 s after Ctrl-C; its stderr:\n{stderr}") from None
    return stderr


def test_ctrl_c_in_baselines_exits_130_without_traceback_and_the_rerun_loses_nothing(
    tmp_path: Path, data_dir: Path
) -> None:
    path = tmp_path / "baselines" / "fa-mnist_mlp_bs50_steps20_k5_val500.json"
    proc = start_script("baselines.py", *_small(data_dir), "--results-dir", str(tmp_path))
    stderr = _interrupt_when(proc, lambda: path.exists() and len(json.loads(path.read_text())["results"]) >= 3)
    assert proc.returncode == 130 and "Traceback" not in stderr and "Rerun the same command" in stderr
    kept = json.loads(path.read_text())["results"]
    assert 3 <= len(kept) < 117
    result = call_script("baselines.py", *_small(data_dir), "--results-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    final = json.loads(path.read_text())["results"]
    assert len(final) == 117 and all(final[k] == v for k, v in kept.items())
    assert not list(path.parent.glob("*.tmp"))


def test_ctrl_c_in_the_first_iteration_leaves_no_run_folder_and_no_resume_advice(
    tmp_path: Path, data_dir: Path
) -> None:
    out = tmp_path / "runs"
    flags = [
        *_small(data_dir),
        "--num-train-steps",
        "2000",
        "--update-freq",
        "10",
        "--num-envs",
        "1",
        "--out-dir",
        str(out),
    ]
    proc = start_script("train.py", *flags)
    stderr = _interrupt_when(proc, lambda: any(out.glob("*/config.json")))
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert "--resume" not in stderr and "nothing to resume" in stderr
    assert not [p for p in out.iterdir()] if out.exists() else True


def test_resuming_a_run_without_last_pt_says_there_is_nothing_to_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"settings": {"architecture": "mlp"}}))
    _one_line_error(call_script("train.py", "--resume", str(run)), "nothing to resume")


# ---------------------------------------------------------------------------------------------- one writer
def test_a_second_writer_of_a_run_folder_is_refused_naming_the_holder(small_env_options: dict, tmp_path: Path) -> None:
    config = EnvConfig(**small_env_options)
    with FolderLock(tmp_path / ".lock", "run folder"):
        with pytest.raises(UserError, match=f"in use by process {os.getpid()} on host"):
            train_controller(tmp_path, config, PPOConfig(), TrainingConfig(num_envs=1, episodes=1), progress=False)
    assert not (tmp_path / "metrics.csv").exists()
    # Released (or left by a process that died): the lock file is free again.
    train_controller(
        tmp_path, config, PPOConfig(), TrainingConfig(num_envs=1, episodes=1, eval_every=0), progress=False
    )
    assert len(list(csv.reader(open(tmp_path / "metrics.csv")))) == 2


def test_two_resumes_of_one_run_at_once_never_duplicate_an_episode(tmp_path: Path, data_dir: Path) -> None:
    run = _trainrun_script(data_dir, tmp_path / "runs")
    cmd = [sys.executable, str(ROOT / "train.py"), "--resume", str(run), "--episodes", "40", "--no-progress"]
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "in use by process" in refused.strip().splitlines()[-1]
    episodes = [int(r["episode"]) for r in csv.DictReader(open(run / "metrics.csv"))]
    assert episodes == list(range(1, 41))


_DRIVER = """
import sys
from pathlib import Path
from alrs.config import EnvConfig
from alrs.episodes import run_jobs
from alrs.io import FolderLock
from alrs.parallel import ParallelConfig, WorkerPool
from alrs.results import ResultStore
from alrs.schedules import Constant

address, data_dir, path, seeds = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4].split(",")
config = EnvConfig(dataset="fa-mnist", architecture="mlp", batch_size=50, update_freq=5, num_train_steps=10,
                   val_size=200, data_dir=data_dir, device="cpu")
jobs = [(f"seed {seed}", Constant(1e-3), int(seed)) for seed in seeds]
with WorkerPool(ParallelConfig(workers=1, threads=1, backend="ray", ray_address=address), 1, config) as pool:
    with FolderLock(path.with_name(".store.lock"), f"result file {path}", wait=True):
        store = ResultStore(path, {"test": "two drivers"})
        before = set(store.data["results"])
        run_jobs(config, jobs, store, progress=False, pool=pool)
        print("ran", ",".join(sorted(set(store.data["results"]) - before)))
"""


def test_two_drivers_on_a_ray_cluster_writing_one_store_lose_and_repeat_nothing(tmp_path: Path, data_dir: Path) -> None:
    """Two drivers of overlapping jobs, started at once with --wait's lock: every record once, each run once."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    try:
        path = tmp_path / "store.json"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _DRIVER, cluster.address, str(data_dir), str(path), seeds],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for seeds in ("1,2,3", "2,3,4")
        ]
        outputs = [(p.wait(timeout=240), *p.communicate()) for p in procs]
    finally:
        cluster.shutdown()
    assert [code for code, _, _ in outputs] == [0, 0], outputs
    assert all("Traceback" not in err for _, _, err in outputs), outputs
    ran = [out.strip().splitlines()[-1].removeprefix("ran ").split(",") for _, out, _ in outputs]
    assert sorted(key for keys in ran for key in keys if key) == [f"seed {s}" for s in (1, 2, 3, 4)], ran
    assert sum("waiting for result file" in err for _, _, err in outputs) == 1, outputs
    data = json.loads(path.read_text())  # whole, strict JSON
    assert sorted(data["results"]) == [f"seed {s}" for s in (1, 2, 3, 4)]
    ResultStore(path, {"test": "two drivers"})  # every record checked


def test_a_waiting_writer_takes_the_lock_when_the_holder_exits(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from alrs.io import FolderLock\nwith FolderLock({str(tmp_path / '.lock')!r}, 'x'):\n"
            "    print('held', flush=True)\n    input()",
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match=rf"x is in use by process {holder.pid} on host {socket.gethostname()}.*--wait"):
        FolderLock(tmp_path / ".lock", "x").__enter__()
    holder.kill()  # as the OOM killer would: the lock is released with the process
    holder.wait()
    with FolderLock(tmp_path / ".lock", "x", wait=True):
        assert f"process {os.getpid()}" in (tmp_path / ".lock.holder").read_text()
    assert not (tmp_path / ".lock.holder").exists()


# ---------------------------------------------------------------------------------------------- resource limits
@pytest.mark.parametrize(
    "error", [MemoryError(), torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8 GiB")]
)
def test_out_of_memory_in_training_is_one_line_with_the_settings_and_the_resume_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture, error: BaseException
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"the last finished iteration")
    error.add_note("in worker process 1:\nTraceback (most recent call last): ...")  # as a worker's error comes back

    def main() -> int:
        try:
            raise error
        except BaseException as exc:
            return stopped(exc, run, resume=False)

    with pytest.raises(SystemExit) as info:
        commands.run_script(main)
    lines = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1 and len(lines) == 1, lines
    assert all(w in lines[0] for w in ("out of memory", "--batch-size", "--num-envs", f"--resume {run}")), lines
    assert (run / "last.pt").read_bytes() == b"the last finished iteration"


def test_more_local_workers_than_cores_run_with_a_one_line_warning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(parallel, "available_cores", lambda: 1)
    with WorkerPool(ParallelConfig(workers=2, threads=1), 2, EnvConfig()) as pool:
        assert len(pool.workers) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("warning: 2 workers on the 1 cores") and "--workers 1" in line


@pytest.mark.parametrize("test_id", ["../elsewhere", "/abs/run", "a\x00b", "x/../../y"])
def test_a_test_id_that_would_leave_its_folder_is_refused(tmp_path: Path, test_id: str) -> None:
    with pytest.raises(UserError, match=r"NUL|cannot leave it"):
        resolve_run(test_id, tmp_path / "runs")


def test_nul_in_a_flag_or_config_value_and_a_suite_named_dotdot_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args("train", ["--out-dir", "runs\x00x"])
    assert info.value.code == 2 and "--out-dir holds a NUL character" in capsys.readouterr().err
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"results_dir": "r\x00"}))
    with pytest.raises(SystemExit):
        parse_args("baselines", ["--config", str(config)])
    assert "results_dir" in capsys.readouterr().err
    with pytest.raises(UserError, match="name an instance-set file"):
        suite_folder(tmp_path, "..")


# ---------------------------------------------------------------------------------------------- leftovers
def test_a_stray_tmp_file_from_a_killed_write_is_cleared_by_the_next_write(tmp_path: Path) -> None:
    stray = tmp_path / ".summary.json.abc123.tmp"
    stray.write_text("half a file")
    save_json({"a": 1}, tmp_path / "summary.json")
    assert not stray.exists() and json.loads((tmp_path / "summary.json").read_text()) == {"a": 1}


def test_checkpoint_of_a_run_is_loadable_after_resume(tmp_path: Path, data_dir: Path) -> None:
    """The checks on resume accept the run's own last.pt (the normal case)."""
    run = _trainrun_script(data_dir, tmp_path / "runs")
    result = call_script("train.py", "--resume", str(run), "--episodes", "6")
    assert result.returncode == 0, result.stderr
    assert load_torch(run / "last.pt")["progress"]["episodes_done"] == 6
    assert torch.load(run / "best.pt", weights_only=True)["format"]


# ---------------------------------------------------------------------------------------------- full disk
def test_a_file_size_limit_during_training_is_one_line_and_the_last_state_resumes(
    tmp_path: Path, data_dir: Path
) -> None:
    import resource

    out = tmp_path / "runs"
    flags = [*_small(data_dir), "--num-envs", "2", "--episodes", "16", "--eval-every", "0", "--out-dir", str(out)]
    proc = start_script("train.py", *flags)
    deadline = time.time() + 120
    while not list(out.glob("*/last.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    # As `ulimit -f` would: from now on no file of the run may grow past 20 kB (last.pt is ~70 kB, a figure ~40 kB).
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
    _, stderr = proc.communicate(timeout=120)
    (run,) = out.iterdir()
    last_line = stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in stderr, stderr
    assert last_line.startswith(f"train.py: error: {run}") and last_line.endswith(": File too large")
    assert not list(run.glob(".*.tmp"))  # the failed write left no temporary file
    kept = load_torch(run / "last.pt")["progress"]["episodes_done"]
    assert 2 <= kept < 16
    resumed = call_script("train.py", "--resume", str(run), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    episodes = [int(row["episode"]) for row in csv.DictReader(open(run / "metrics.csv"))]
    assert episodes == list(range(1, 17))  # every episode exactly once


# ---------------------------------------------------------------------------------------------- SIGTERM under Ray
def test_sigterm_under_ray_stops_cleanly_with_the_resume_hint(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "runs"
    flags = [*small_flags(data_dir), "--num-envs", "2", "--episodes", "400", "--out-dir", str(out)]
    proc = start_script("train.py", *flags, "--backend", "ray", "--workers", "2", "--threads", "1")
    deadline = time.time() + 300
    while not list(out.glob("*/last.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # what a cluster scheduler or `timeout` sends
    _, stderr = proc.communicate(timeout=120)
    (run,) = out.iterdir()
    assert proc.returncode == 143, stderr
    assert f"Continue with: python train.py --resume {run}" in stderr
    assert "SIGTERM received" not in stderr and "Traceback" not in stderr and "PC: @" not in stderr

    # The local Ray the run started is gone: no raylet of its session (named after the driver's pid) is left.
    def raylets() -> list[str]:
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
        return [line for line in ps if "raylet" in line and f"_{proc.pid}/" in line]

    deadline = time.time() + 30
    while raylets() and time.time() < deadline:
        time.sleep(0.5)
    assert not raylets()


# ---------------------------------------------------------------------------------------------- killed workers
def _kill_a_worker(driver: subprocess.Popen, ready) -> None:
    """SIGKILL one of the driver's worker processes (as the OOM killer would) once ``ready()``."""
    deadline = time.time() + 180
    while not ready() and time.time() < deadline and driver.poll() is None:
        time.sleep(0.05)
    ps = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(driver.pid)], capture_output=True, text=True)
    workers = [int(line.split()[0]) for line in ps.stdout.splitlines() if "spawn_main" in line]
    assert workers, ps.stdout
    os.kill(workers[0], signal.SIGKILL)


def test_a_worker_killed_while_the_pool_starts_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    killed: list[int] = []

    class KilledAtStart(ProcessWorker):
        def _start(self) -> None:
            super()._start()
            if not killed:  # the first process dies before it answers, as the OOM killer may do
                killed.append(self.process.pid)
                os.kill(self.process.pid, signal.SIGKILL)

    monkeypatch.setattr(parallel, "ProcessWorker", KilledAtStart)
    with WorkerPool(ParallelConfig(workers=2, threads=1), 2, EnvConfig()) as pool:
        assert pool.restarts == 1 and len(pool.workers) == 2 and killed
        assert killed[0] not in [worker.pid for worker in pool.workers]


@pytest.mark.parametrize("restarts", [3, 0])
def test_a_killed_worker_costs_nothing_or_stops_with_the_cause(restarts: int, tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "runs"
    flags = [*small_flags(data_dir), "--num-envs", "2", "--episodes", "12", "--out-dir", str(out), "--workers", "2"]
    proc = start_script("train.py", *flags, "--threads", "1", "--max-worker-restarts", str(restarts))
    _kill_a_worker(proc, lambda: bool(list(out.glob("*/last.pt"))))
    _, stderr = proc.communicate(timeout=300)
    (run,) = out.iterdir()
    assert "Traceback" not in stderr, stderr
    if restarts:
        assert proc.returncode == 0, stderr
        episodes = [int(row["episode"]) for row in csv.DictReader(open(run / "metrics.csv"))]
        assert episodes == list(range(1, 13))
    else:
        last = stderr.strip().splitlines()[-1]
        assert proc.returncode == 2
        assert "died (killed by SIGKILL (exit -9), most likely the kernel's out-of-memory killer" in last
        assert last.endswith(f"more than --max-worker-restarts 0; continue with: python train.py --resume {run}")


# ---------------------------------------------------------------------------------------------- kill -9 of the driver
def test_a_driver_killed_at_many_points_loses_at_most_the_iteration_in_flight(tmp_path: Path, data_dir: Path) -> None:
    """SIGKILL the training at five points of its iterations (between and during the writes of metrics.csv,
    eval.csv, evals/, best.pt, last.pt and the figures), resume after each: every episode is recorded exactly
    once, and the run ends with the undisturbed run's controller."""
    flags = [*_small(data_dir), "--num-envs", "2", "--episodes", "24", "--eval-every", "2", "--eval-seeds", "1"]
    whole = call_script("train.py", *flags, "--out-dir", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    proc = start_script("train.py", *flags, "--out-dir", str(out))
    for delay in (0.0, 0.05, 0.15, 0.3, 0.6):
        last = list(out.glob("*/last.pt"))
        seen = last[0].stat().st_mtime_ns if last else None
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            last = list(out.glob("*/last.pt"))
            if last and last[0].stat().st_mtime_ns != seen:  # an iteration was just saved
                break
            time.sleep(0.005)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        (run,) = out.iterdir()
        proc = start_script("train.py", "--resume", str(run), "--no-progress")
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    episodes = [int(row["episode"]) for row in csv.DictReader(open(run / "metrics.csv"))]
    iterations = [int(row["iteration"]) for row in csv.DictReader(open(run / "eval.csv"))]
    assert episodes == list(range(1, 25)) and iterations == [2, 4, 6, 8, 10, 12]
    (reference,) = (tmp_path / "whole").iterdir()
    ours, theirs = load_torch(run / "last.pt")["controller"], load_torch(reference / "last.pt")["controller"]
    assert all(torch.equal(ours["state_dict"][k], v) for k, v in theirs["state_dict"].items())


def test_a_worker_whose_driver_died_mid_call_exits_quietly() -> None:
    """The driver killed while a worker computes: the worker's answer meets a closed pipe, and the worker
    ends without a traceback (the chaos soak counts tracebacks in the logs)."""
    import multiprocessing

    from alrs.workers import _serve

    driver, worker = multiprocessing.Pipe()
    driver.send(("ping", ()))
    driver.close()  # gone before the answer
    sigint, threads = signal.getsignal(signal.SIGINT), torch.get_num_threads()
    try:
        assert _serve(worker, threads) is None  # returns, where it used to raise BrokenPipeError
    finally:
        signal.signal(signal.SIGINT, sigint)
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- chaos soak
def test_a_short_chaos_soak_loses_nothing_and_ends_as_the_undisturbed_run(tmp_path: Path, data_dir: Path) -> None:
    """benchmarks/chaos.py for 0.75 minutes (and on until the driver has been killed and resumed twice, each
    time after an iteration since its start), workers killed every 8 to 16 s: every episode once, the
    undisturbed run's figures and controller."""
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "chaos.py"),
        "--minutes",
        "0.75",
        "--worker-kills-every",
        "8",
        "16",
    ]
    result = subprocess.run(
        [*cmd, "--out", str(tmp_path), "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=1200
    )
    figures = json.loads((tmp_path / "chaos.json").read_text())
    assert result.returncode == 0 and figures["passed"], (figures, result.stderr[-2000:])
    assert figures["driver_kills"] == 2 and figures["worker_kills"] >= 2 and figures["tracebacks"] == 0, figures
