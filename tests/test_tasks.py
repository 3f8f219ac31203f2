"""Tasks as data: architecture specs, dataset variants, the digits, instance sets, relative features and the
held-out suite (resumable, and equal on local workers and on a two-node Ray cluster)."""

from __future__ import annotations

import dataclasses
import json
import math
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from cli import ROOT, call_script
from test_scheduler import _checkpoint, _Loop
from torch import nn

from alrs.config import EnvConfig, PPOConfig, TrainingConfig
from alrs.data import DatasetError, apply_variant, check_dataset, load_dataset, parse_variant
from alrs.env import LREnv, TaskEnv, make_env
from alrs.errors import UserError
from alrs.models import architecture_spec, build_model
from alrs.models.mlp import SeededDropout
from alrs.parallel import ParallelConfig, WorkerPool
from alrs.results import EpisodeResult, ResultStore
from alrs.schedules import Learned
from alrs.suite import format_suite, run_suite, speedup, suite_key, suite_settings, summarize_suite
from alrs.tasks import InstanceSet, Task, load_instance_set, task_metadata
from alrs.training import train_controller
from alrs.workers import node_id


def _one_line(call, match: str) -> None:
    with pytest.raises(UserError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------ architectures
def test_architecture_specs_build_the_right_shapes() -> None:
    mlp = build_model("mlp:256-128:tanh", "fa-mnist")
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 256), (256, 128), (128, 10)]
    assert sum(isinstance(m, nn.Tanh) for m in mlp.modules()) == 2 and mlp.output_layer is linears[-1]
    cnn = build_model("convnet:16-32:fc64", "fa-mnist")
    convs = [m for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 16, (5, 5)), (16, 32, (5, 5))]
    assert cnn.output_layer.in_features == 64 and cnn(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    bn = build_model("convnet:8-16-32:fc32:bn", "digits")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 3 and bn(torch.zeros(2, 1, 8, 8)).shape == (
        2,
        10,
    )
    assert build_model("mlp:64:gelu", "fa-mnist:classes=0-4:14x14")(torch.zeros(2, 1, 14, 14)).shape == (2, 5)
    assert architecture_spec({"family": "mlp", "hidden": [256, 128], "activation": "tanh"}) == "mlp:256-128:tanh"
    assert architecture_spec({"family": "convnet", "channels": [16], "batch_norm": True}) == "convnet:16:fc64:bn"
    ln = build_model("mlp:64-32:gelu:ln:drop0.25", "fa-mnist")
    assert [m.normalized_shape for m in ln.modules() if isinstance(m, nn.LayerNorm)] == [(64,), (32,)]
    assert [m.p for m in ln.modules() if isinstance(m, SeededDropout)] == [0.25, 0.25]
    spec = {"family": "mlp", "hidden": [64, 32], "activation": "gelu", "layer_norm": True, "dropout": 0.25}
    assert architecture_spec(spec) == "mlp:64-32:gelu:ln:drop0.25"


def test_dropout_masks_follow_the_childs_seed_whatever_else_draws(small_env_options: dict) -> None:
    """A seed fixes a dropout child's episode: its masks come from its own generators, not torch's global one."""
    env = make_env(**{**small_env_options, "architecture": "mlp:64:drop0.5"})

    def episode() -> list[float]:
        env.reset(seed=3)
        torch.manual_seed(int(torch.randint(1000, ()).item()) + 1)  # the global generator moves on between runs
        return [env.step(2)[4]["train_loss"] for _ in range(3)]

    first, second = episode(), episode()
    assert first == second
    env.reset(seed=3)
    env.model.eval()
    x = env.data.val_x[:8]
    assert torch.equal(env.model(x), env.model(x))  # no dropout in evaluation
    env.model.train()
    assert not torch.equal(env.model(x), env.model(x))  # fresh masks at every training forward


@pytest.mark.parametrize(
    "spec",
    [
        "mlp:",
        "mlp:0",
        "mlp:64:swish",
        "mlp:64:drop1",
        "mlp:64:dropx",
        "convnet:1-2-3-4",
        "convnet:8:fc",
        "vgg",
        {"family": "rnn"},
    ],
)
def test_a_bad_architecture_spec_is_one_line(spec: object) -> None:
    _one_line(lambda: build_model(architecture_spec(spec), "fa-mnist"), "architecture .*an architecture is")


# ------------------------------------------------------------------------------------------ datasets
def test_dataset_variants_have_the_right_sizes_and_are_deterministic(data_dir: Path) -> None:
    base = load_dataset("fa-mnist", data_dir, download=False)
    sub = load_dataset("fa-mnist:classes=2-4", data_dir, download=False)
    for part in ("train", "val", "test"):
        y = getattr(base, f"{part}_y")
        assert len(getattr(sub, f"{part}_y")) == int(((y >= 2) & (y <= 4)).sum())
    assert set(sub.train_y.tolist()) == {0, 1, 2} and check_dataset("fa-mnist:classes=2-4").num_classes == 3
    small = load_dataset("fa-mnist:14x14", data_dir, download=False)
    assert small.train_x.shape[1:] == (1, 14, 14) and torch.allclose(
        small.val_x[0, 0, 0, 0], base.val_x[0, 0, :2, :2].mean()
    )
    fraction = load_dataset("fa-mnist:fraction=0.25", data_dir, download=False)
    assert len(fraction.train_x) == round(0.25 * len(base.train_x)) and len(fraction.val_x) == len(base.val_x)
    noisy = load_dataset("fa-mnist:noise=0.3", data_dir, download=False)
    flipped = (noisy.train_y != base.train_y).float().mean()
    assert 0.2 < flipped < 0.4 and torch.equal(noisy.val_y, base.val_y) and torch.equal(noisy.test_y, base.test_y)
    again = apply_variant(base, parse_variant("fa-mnist:noise=0.3:fraction=0.25")[1])
    assert torch.equal(again.train_y, apply_variant(base, parse_variant("fa-mnist:noise=0.3:fraction=0.25")[1]).train_y)


def test_the_digits_load_offline_split_60_20_20() -> None:
    digits = load_dataset("digits")
    assert [len(digits.train_x), len(digits.val_x), len(digits.test_x)] == [1078, 359, 360]
    assert digits.train_x.shape[1:] == (1, 8, 8) and float(digits.train_x.max()) == 1.0
    assert torch.equal(load_dataset("digits", "/nonexistent").test_y, digits.test_y)


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("fa-mnist:13x13", "must divide the 28x28 images"),
        ("fa-mnist:classes=3", "2 or more distinct labels"),
        ("fa-mnist:noise=1", "noise must be in"),
        ("fa-mnist:fraction=0", "fraction must be in"),
        ("fa-mnist:blur", "cannot read 'blur'"),
        ("svhn:14x14", "unknown dataset 'svhn'"),
    ],
)
def test_a_bad_dataset_variant_is_one_line(name: str, match: str) -> None:
    _one_line(lambda: check_dataset(name), match)


# ------------------------------------------------------------------------------------------ instance sets
def _write_set(path: Path, heldout: list[dict], **sample: object) -> Path:
    choices = {
        "dataset": ["fa-mnist:14x14", "fa-mnist:classes=0-4:14x14"],
        "architecture": ["mlp:16", "convnet:4:fc8"],
        "batch_size": 16,
        "num_train_steps": [8, 16],
        "initial_lr": [0.001, 0.01],
        "val_size": 100,
        **sample,
    }
    count = choices.pop("count", 5)
    data = {"decisions": 4, "train": {"sample": {"seed": 0, "count": count, **choices}}, "heldout": {"tasks": heldout}}
    path.write_text(json.dumps(data))
    return path


HELDOUT = [
    {"dataset": "digits", "architecture": "mlp:16:tanh", "batch_size": 32, "num_train_steps": 12, "initial_lr": 0.003},
    {
        "dataset": "fa-mnist:14x14",
        "architecture": "convnet:4:fc8",
        "batch_size": 16,
        "num_train_steps": 8,
        "initial_lr": 0.01,
        "val_size": 100,
    },
]


def test_instance_set_sampling_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    path = _write_set(tmp_path / "set.json", HELDOUT)
    first, second = load_instance_set(path), load_instance_set(path)
    assert first == second and len(first.train) == 5 and first.decisions == 4
    assert not {t.name for t in first.heldout} & {t.name for t in first.train}
    # The second held-out task is a point of the sampling grid (16 points): it is never drawn for training.
    every_other = load_instance_set(_write_set(tmp_path / "all.json", HELDOUT, count=15)).train
    assert len({t.name for t in every_other}) == 15 and Task(**HELDOUT[1]).name not in {t.name for t in every_other}
    _one_line(lambda: load_instance_set(_write_set(tmp_path / "big.json", HELDOUT, count=16)), "only 15 distinct")
    _one_line(lambda: InstanceSet(first.heldout, first.heldout, 4), "both a training and a held-out task")
    _one_line(lambda: load_instance_set(tmp_path / "missing.json"), "missing.json")


def test_validation_tasks_are_disjoint_and_what_the_evaluations_draw(data_dir: Path, tmp_path: Path) -> None:
    validation = [{**HELDOUT[1], "initial_lr": 0.003}, {**HELDOUT[1], "architecture": "mlp:16", "batch_size": 32}]
    path = _write_set(tmp_path / "set.json", HELDOUT, count=14)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "validation": {"tasks": validation}}))
    instance_set = load_instance_set(path)
    names = {split: {t.name for t in getattr(instance_set, split)} for split in ("train", "heldout", "validation")}
    assert len(names["validation"]) == 2 and len(names["train"]) == 14
    assert not names["train"] & names["validation"] and not names["heldout"] & names["validation"]
    assert (
        instance_set.split("validation") == instance_set.validation
        and instance_set.split("train") == instance_set.train
    )
    _one_line(
        lambda: InstanceSet(instance_set.train, (), 4, instance_set.train[:1]), "both a training and a validation"
    )
    # The evaluations that choose best.pt draw the validation tasks; training draws the training tasks.
    config = EnvConfig(data_dir=str(data_dir), device="cpu", instance_set=str(path), feature_scale="relative")
    for split in ("train", "validation"):
        env = TaskEnv(dataclasses.replace(config, task_split=split))
        assert {env.reset(seed=s)[1]["task"] for s in range(12)} <= names[split]
    from alrs.evaluator import Evaluator

    evaluator = Evaluator(tmp_path, config, 1, 2, None, {})  # type: ignore[arg-type]
    assert evaluator.config.task_split == "validation" and config.task_split == "train"
    assert [t["architecture"] for t in task_metadata(config)["validation_tasks"]] == ["convnet:4:fc8", "mlp:16"]
    # Without validation tasks the evaluations draw training tasks, as before.
    assert load_instance_set(_write_set(tmp_path / "plain.json", HELDOUT)).split("validation")[0].num_train_steps


def test_task_configs_read_no_data_and_the_env_takes_at_most_the_split(monkeypatch: pytest.MonkeyPatch) -> None:
    import alrs.data

    def no_data(*args: object) -> None:
        raise AssertionError(f"a dataset was read: {args}")

    with monkeypatch.context() as patch:
        patch.setattr(alrs.data, "_load_cached", no_data)
        suite = load_instance_set(ROOT / "configs" / "suites" / "fa-mnist-small.json")
        tasks = suite.train + suite.heldout
        configs = [task.env_config(EnvConfig(device="cpu"), suite.decisions) for task in tasks]
    assert [c.val_size for c in configs] == [t.val_size for t in tasks] and None in [c.val_size for c in configs]
    digits = Task("digits", "mlp:16", 32, 20, 0.003)  # val_size 1000, of a 359-image split
    assert len(LREnv(digits.env_config(EnvConfig(device="cpu"), 4)).val_x) == 359


def test_an_instance_set_is_read_once_per_training_run(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import alrs.tasks

    reads: list[str] = []
    real = alrs.tasks.load_json
    monkeypatch.setattr(alrs.tasks, "load_json", lambda path: reads.append(path) or real(path))
    path = _write_set(tmp_path / "set.json", HELDOUT)
    config = EnvConfig(data_dir=str(data_dir), device="cpu", instance_set=str(path), feature_scale="relative")
    instance_set = load_instance_set(config.instance_set)  # the train command's
    training = TrainingConfig(num_envs=2, episodes=4, eval_every=1, eval_seeds=1)
    with WorkerPool(ParallelConfig(workers=1, threads=1), 1, config) as pool:
        train_controller(tmp_path / "run", config, PPOConfig(), training, seed=0, progress=False, pool=pool)
    assert reads == [str(path)] and load_instance_set(path) is instance_set
    path.write_text(path.read_text().replace('"count": 5', '"count": 6'))  # a changed file is read again
    assert len(load_instance_set(path).train) == 6 and len(reads) == 2


def test_training_stops_before_its_run_folder_when_a_task_cannot_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import alrs.commands.train as train

    def missing(name: str, *args: object) -> None:
        raise DatasetError(f"{name}: no dataset files")

    monkeypatch.setattr(train, "load_dataset", missing)
    args = Namespace(num_envs=2, episodes=4, eval_seeds=1, eval_every=0, batched_envs=False, tensorboard=False)
    instance_set = load_instance_set(_write_set(tmp_path / "set.json", HELDOUT))
    _one_line(lambda: train.check_before_start(args, EnvConfig(), instance_set), "no dataset files")
    odd = InstanceSet(instance_set.train, (), 3)
    _one_line(lambda: train.check_before_start(args, EnvConfig(), odd), "3 decisions must divide")


def test_a_task_env_draws_its_task_from_the_seed(data_dir: Path, tmp_path: Path) -> None:
    instance_set = load_instance_set(_write_set(tmp_path / "set.json", HELDOUT))
    base = EnvConfig(data_dir=str(data_dir), device="cpu", feature_scale="relative", time_feature=True)
    env = TaskEnv(base, instance_set.train, instance_set.decisions)
    tasks = [env.reset(seed=s)[1]["task"] for s in range(12)]
    assert tasks == [env.reset(seed=s)[1]["task"] for s in range(12)] and len(set(tasks)) > 1
    _, info = env.reset(seed=3)
    steps = 0
    while True:
        _, _, terminated, truncated, info = env.step(2)
        steps += 1
        if terminated or truncated:
            break
    assert steps == instance_set.decisions and info["task"] == tasks[3]


def test_relative_features_are_scale_free_and_the_same_in_a_plain_loop(small_env_options: dict) -> None:
    config = EnvConfig(
        **{**small_env_options, "num_train_steps": 40}, feature_scale="relative", lr_feature="log-lr", time_feature=True
    )
    checkpoint = _checkpoint(config)
    env, learned = LREnv(config), Learned(checkpoint).starting_at(1e-3)
    obs, info = env.reset(seed=7, options={"initial_lr": 1e-3})
    learned.start(7)
    observations, done = [obs], False
    while not done:
        obs, _, terminated, truncated, info = learned.step(env, obs, info)
        observations.append(obs)
        done = terminated or truncated
    first = observations[0]
    assert first[0] == first[1] == pytest.approx(1.0) and first[5] == pytest.approx(1.0)
    assert all(0 <= o[2] <= 1 and 0 <= o[3] <= 1 for o in observations)
    loop = _Loop(config, checkpoint, 7, 1e-3)
    loop.run(config.num_train_steps)
    loop.finish()
    assert np.allclose(np.stack(loop.observations), np.stack(observations), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------ the suite
def _suite(data_dir: Path, tmp_path: Path, pool: WorkerPool, name: str, learned: Learned | None = None) -> dict:
    instance_set = load_instance_set(_write_set(tmp_path / "set.json", HELDOUT))
    base = EnvConfig(data_dir=str(data_dir), device="cpu", feature_scale="relative", time_feature=True)
    store = ResultStore(tmp_path / name, suite_settings(instance_set, 0, 2))
    results = run_suite(instance_set, base, learned, store, pool, seed=0, num_seeds=2, progress=False)
    return {
        task: {label: [r.test_loss_best for r in runs] for label, runs in by.items()} for task, by in results.items()
    }


def test_a_suite_runs_resumes_and_reports(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import alrs.episodes as episodes

    pool = WorkerPool(ParallelConfig(workers=1), 1, EnvConfig())
    real, calls = episodes.run_episode, []

    def interrupted(env, schedule, seed, test=True):
        if len(calls) == 20:
            raise KeyboardInterrupt
        calls.append(schedule.name)
        return real(env, schedule, seed, test)

    monkeypatch.setattr(episodes, "run_episode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _suite(data_dir, tmp_path, pool, "store.json")
    monkeypatch.setattr(episodes, "run_episode", lambda *a: calls.append(a[1].name) or real(*a))
    whole = _suite(data_dir, tmp_path, pool, "store.json")
    per_task = 14 + 2 * 8  # the grid on the grid seed; 6 defaults and 2 tuned schedules on 2 test seeds
    assert len(calls) == 2 * per_task  # nothing ran twice
    assert set(whole) == {Task(**t).name for t in HELDOUT}
    labels = set(next(iter(whole.values())))
    assert labels == {
        "adam 1e-3",
        "adam 1e-3 cosine",
        "adam task lr linear",
        "schedule-free adamw default",
        "prodigy default",
        "prodigy linear",
        "linear, tuned",
        "step decay, tuned",
    }
    sequential = _suite(data_dir, tmp_path, pool, "again.json")
    assert sequential == whole

    stored = json.loads((tmp_path / "store.json").read_text())["results"]
    task = Task(**HELDOUT[0])
    assert suite_key(task, "adam 1e-3", 1000) in stored


def test_the_suite_report_counts_wins_with_a_sign_test() -> None:
    def runs(loss: float) -> list[EpisodeResult]:
        return [EpisodeResult({}, 0, 0, 0, 0, False, loss, 0, loss, 0)]

    results = {
        f"task {i}": {"linear, tuned": runs(1.0), "adam 1e-3": runs(1.2), "ctrl": runs(0.9 if i < 7 else 1.1)}
        for i in range(8)
    }
    summary = summarize_suite(results, "ctrl")
    assert summary["against"]["linear, tuned"] == {
        "wins": 7,
        "losses": 1,
        "win_rate": 7 / 8,
        "sign_p": pytest.approx(0.0703125),
    }
    assert summary["against"]["adam 1e-3"]["wins"] == 8 and summary["tasks"]["task 0"]["controller_rank"] == 1
    assert summary["median_relative_to_linear"] == pytest.approx(-0.1)


def test_the_speedup_counts_the_steps_each_run_needs_to_reach_the_loss_both_reach() -> None:
    def run(val_losses: list[float], test_loss: float = 1.0) -> EpisodeResult:
        curves = {"step": [10 * i for i in range(len(val_losses))], "val_loss": val_losses}
        best = min(val_losses)
        return EpisodeResult({}, 0, val_losses[-1], best, 0, False, test_loss, 0, test_loss, 0, curves)

    fast, slow = run([2.0, 1.0, 0.6, 0.5, 0.5]), run([2.0, 1.5, 1.2, 0.9, 0.6])
    assert speedup(fast, slow) == 2.0 and speedup(slow, fast) == 0.5  # 0.6: step 20 against step 40
    assert speedup(fast, fast) == 1.0
    assert speedup(run([0.5, 0.4]), run([0.6, 0.45])) == 1.0  # both start below 0.6: one controller step each
    assert math.isnan(speedup(run([math.nan, math.nan]), slow))
    assert math.isnan(speedup(EpisodeResult({}, 0, 1, 1, 0, False, 1, 0, 1, 0), slow))  # a record without curves
    # per task, the geometric mean over the paired seeds; over tasks, the median
    results = {
        "a": {"linear, tuned": [slow, fast], "ctrl": [fast, fast]},  # x2 and x1: x1.41
        "b": {"linear, tuned": [fast, fast], "ctrl": [slow, slow]},  # x0.5
        "c": {"linear, tuned": [slow, slow], "ctrl": [fast, fast]},  # x2
    }
    summary = summarize_suite(results, "ctrl")
    assert [summary["tasks"][t]["speedup_vs_linear"] for t in "abc"] == pytest.approx([2**0.5, 0.5, 2.0])
    assert summary["median_speedup_vs_linear"] == pytest.approx(2**0.5)
    assert "median x1.41; faster on 2 of 3 tasks" in format_suite(summary, "t")


def test_the_suite_on_local_workers_and_a_two_node_ray_cluster_equals_the_sequential_run(
    data_dir: Path, tmp_path: Path
) -> None:
    import ray
    from ray.cluster_utils import Cluster

    with WorkerPool(ParallelConfig(workers=1, threads=1), 1, EnvConfig()) as pool:
        sequential = _suite(data_dir, tmp_path, pool, "sequential.json")
    with WorkerPool(ParallelConfig(workers=2, threads=1), 2, EnvConfig()) as pool:
        assert _suite(data_dir, tmp_path, pool, "local.json") == sequential
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        parallel = ParallelConfig(workers=2, threads=1, backend="ray", ray_address=cluster.address)
        with WorkerPool(parallel, 2, EnvConfig()) as pool:
            tiny = EnvConfig(data_dir=str(data_dir), device="cpu", architecture="mlp", batch_size=50)
            nodes = {where for _, where in pool.run(node_id, tiny, [()] * 8)}
            assert len(nodes) == 2  # one worker on each node (each has one CPU)
            assert _suite(data_dir, tmp_path, pool, "ray.json") == sequential
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_test_py_suite_end_to_end(data_dir: Path, tmp_path: Path) -> None:
    path = _write_set(tmp_path / "set.json", HELDOUT)
    flags = ["--data-dir", str(data_dir), "--device", "cpu", "--no-progress", "--feature-scale", "relative"]
    train = call_script(
        "train.py",
        "--instance-set",
        str(path),
        *flags,
        "--time-feature",
        "--num-envs",
        "2",
        "--episodes",
        "4",
        "--out-dir",
        str(tmp_path / "runs"),
        "--eval-every",
        "2",
        "--eval-seeds",
        "2",
    )
    assert train.returncode == 0, train.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("set_s0_")
    suite = [
        "--suite",
        str(path),
        "--test-id",
        str(run),
        *flags,
        "--suite-seeds",
        "2",
        "--results-dir",
        str(tmp_path / "results"),
    ]
    result = call_script("test.py", *suite)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "results" / "suites" / "set"
    assert (out / f"{run.name}.md").is_file() and (out / f"{run.name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "controller's rank" in result.stdout and "sign test p" in result.stdout

    # Sampled actions are other runs than the mode's: their own keys in the store, and their own report.
    sampled = call_script("test.py", *suite, "--policy", "sample")
    assert sampled.returncode == 0, sampled.stderr
    stored = json.loads((out / "results.json").read_text())["results"]
    controller = {key: r["schedule"]["policy"] for key, r in stored.items() if " | controller " in key}
    assert sorted(controller.values()) == ["mode"] * 4 + ["sample"] * 4  # 2 tasks x 2 seeds each
    assert all(("(sampled actions)" in key) == (policy == "sample") for key, policy in controller.items())
    assert (out / f"{run.name}_sample.md").is_file() and "(sampled actions)" in sampled.stdout

    # The same controller by its best.pt (as a released one by name): the same runs, reused, the same report.
    by_file = [*suite[:2], "--controller", str(run / "best.pt"), *suite[4:]]
    again = call_script("test.py", *by_file)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split("written:")[0] == result.stdout.split("written:")[0]


def test_training_on_an_instance_set_on_workers_equals_the_sequential_run(data_dir: Path, tmp_path: Path) -> None:
    from test_parallel import _train

    path = _write_set(tmp_path / "set.json", HELDOUT)
    config = EnvConfig(data_dir=str(data_dir), device="cpu", instance_set=str(path), feature_scale="relative")
    torch.set_num_threads(1)
    try:
        sequential = _train(tmp_path / "sequential", config, ParallelConfig(workers=1, threads=1))
        parallel = _train(tmp_path / "parallel", config, ParallelConfig(workers=2, threads=1))
    finally:
        torch.set_num_threads(2)
    assert parallel[0] == sequential[0] and parallel[1] == sequential[1]
    assert all(torch.equal(parallel[2][k], v) for k, v in sequential[2].items())
