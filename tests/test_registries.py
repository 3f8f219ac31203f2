"""The registries are enough: an optimizer, a peer family and a dataset added through them alone (no other file
edited) show in the help, run in the baseline grid with their best point named, and run in a held-out suite."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from test_scheduler import _checkpoint

from alrs.cli import build_parser
from alrs.config import EnvConfig
from alrs.data import DATASETS, DatasetRecord, Shares, load_dataset, register_dataset
from alrs.env import make_env
from alrs.episodes import run_episode
from alrs.grid import baseline_grid_search, best_keys, schedule_from_record
from alrs.optim import OPTIMIZERS, OptimizerRecord, effective_lr, register_optimizer
from alrs.parallel import ParallelConfig, WorkerPool
from alrs.peers import PEER_FAMILIES, PeerFamily, peer_grid, register_peer_family
from alrs.protocol import plan_test
from alrs.results import ResultStore
from alrs.schedules import Constant, Learned, Peer
from alrs.suite import DEFAULTS, TUNED, run_suite, suite_settings
from alrs.tasks import InstanceSet, Task


def _radam(params: Iterable[torch.Tensor], lr: float, settings: dict[str, Any]) -> torch.optim.Optimizer:
    betas = (settings["beta1"], settings["beta2"])
    return torch.optim.RAdam(params, lr=lr, betas=betas, weight_decay=settings["weight_decay"])


def _radam_peer(lr: float) -> Peer:
    return Peer("radam", Constant(lr), f"radam (lr={lr:g})", optimizer="radam")


def _random_images(name: str, data_dir: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(80, 1, 4, 4, generator=generator), torch.randint(0, 3, (80,), generator=generator)


RADAM = OptimizerRecord("radam", "RAdam", "torch.optim.RAdam", _radam, ("beta1", "beta2", "weight_decay"))
RADAM_PEERS = PeerFamily(
    "radam",
    {"lr": (1e-3, 1e-2)},
    lambda point, steps: _radam_peer(point["lr"]),
    lambda record: _radam_peer(record["shape"]["initial_lr"]),
    "best_radam",
)
RANDOM = DatasetRecord("random", "random 4x4 images", (1, 4, 4), _random_images, Shares(train=0.5, val=0.25), 3)
TINY = {"dataset": "random", "architecture": "mlp:8", "batch_size": 8, "device": "cpu"}


@pytest.fixture
def registered() -> Iterator[None]:
    """The throwaway optimizer, peer family and dataset, registered for one test and removed after it."""
    register_optimizer(RADAM)
    register_peer_family(RADAM_PEERS)
    register_dataset(RANDOM)
    yield
    del OPTIMIZERS["radam"], PEER_FAMILIES["radam"], DATASETS["random"]


def test_a_name_is_registered_once(registered: None) -> None:
    for register, record in ((register_optimizer, RADAM), (register_peer_family, RADAM_PEERS)):
        with pytest.raises(ValueError, match="registered already"):
            register(record)
    with pytest.raises(ValueError, match="registered already"):
        register_dataset(RANDOM)
    with pytest.raises(ValueError, match="no ':'"):
        register_dataset(dataclasses.replace(RANDOM, name="random:14x14"))
    with pytest.raises(ValueError, match="reads 'momentum'"):
        register_optimizer(dataclasses.replace(RADAM, name="radam2", reads=("momentum",)))


def test_the_help_lists_what_the_registries_hold(registered: None) -> None:
    flags = build_parser("train")._option_string_actions
    assert "radam (RAdam)" in flags["--optimizer"].help and "random (random 4x4 images)" in flags["--dataset"].help
    for name in (*OPTIMIZERS, *DATASETS):
        assert name in flags["--optimizer"].help + flags["--dataset"].help


def test_a_registered_optimizer_peer_family_and_dataset_run_the_grid(registered: None, tmp_path: Path) -> None:
    env = make_env(**TINY, update_freq=1, num_train_steps=2)
    assert (len(env.data.train_x), len(env.data.val_x), len(env.data.test_x)) == (40, 20, 20)
    assert torch.equal(load_dataset("random:classes=0-1").test_y, env.data.test_y[env.data.test_y < 2])
    peer = RADAM_PEERS.points(2)[1]
    run_episode(env, peer, seed=0, test=False)
    assert type(env.optimizer) is torch.optim.RAdam and effective_lr(env.optimizer) == 1e-2

    data = baseline_grid_search(env, seed=0, path=tmp_path / "grid.json", progress=False)
    radam = {k for k, r in data["results"].items() if r["schedule"]["family"] == "radam"}
    # 101: on 2 steps, warm-ups of 5, 10 and 20% are all 1 step, so 16 of Schedule-Free's 32 points coincide.
    assert radam == {"radam lr=0.001", "radam lr=0.01"} and len(data["results"]) == 101 + 2
    assert best_keys()["radam"] == "best_radam" and data["best_radam"] in radam
    record = data["results"][data["best_radam"]]["schedule"]
    assert schedule_from_record(record).describe() == record
    assert [p.family for p in peer_grid(2)][-2:] == ["radam", "radam"]
    assert list(plan_test(data).schedules)[-1] == "radam"  # the tuned peer, last in the test's table


def test_a_registered_optimizer_and_dataset_run_a_suite(registered: None, tmp_path: Path) -> None:
    task = {"dataset": "random", "architecture": "mlp:8", "batch_size": 8, "num_train_steps": 2, "val_size": None}
    instance_set = InstanceSet((Task(**task, initial_lr=0.01),), (Task(**task, initial_lr=0.001),), decisions=2)
    base = EnvConfig(device="cpu", optimizer="radam", feature_scale="relative", time_feature=True)
    learned = Learned(_checkpoint(instance_set.heldout[0].env_config(base, 2)), name="radam controller")
    store = ResultStore(tmp_path / "suite.json", suite_settings(instance_set, 0, 1))
    pool = WorkerPool(ParallelConfig(workers=1), 1, EnvConfig())
    results = run_suite(instance_set, base, learned, store, pool, seed=0, num_seeds=1, progress=False)
    (by_label,) = results.values()
    assert len(by_label) == len(DEFAULTS) + len(TUNED) + 1 and len(by_label["radam controller"]) == 1
    assert by_label["radam controller"][0].curves["lr"][0] == 0.001


def test_the_best_keys_are_a_stored_format() -> None:
    # Committed grid files name each family's best point under these keys: they never change.
    assert best_keys() == {
        "step-decay": "best_step_decay",
        "constant": "best_constant",
        "cosine": "best_cosine",
        "linear": "best_linear",
        "schedule-free": "best_schedule_free",
        "prodigy": "best_prodigy",
        "adam-ema": "best_adam_ema",
    }
