"""Shared fixtures: a data folder in torchvision's layout holding small fake datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fakedata import write_cifar_dataset, write_idx_dataset

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<tmp>/FashionMNIST/raw``, ``<tmp>/MNIST/raw`` and ``<tmp>/cifar-10-batches-py``."""
    root = tmp_path_factory.mktemp("data")
    write_idx_dataset(root / "FashionMNIST" / "raw", seed=0)
    write_idx_dataset(root / "MNIST" / "raw", seed=10)
    write_cifar_dataset(root / "cifar-10-batches-py", seed=20)
    return root


@pytest.fixture
def small_env_options(data_dir: Path) -> dict:
    """A cheap episode: the MLP, batch 50, 4 controller steps of 5 Adam steps, 500 validation examples."""
    return dict(
        dataset="fa-mnist",
        architecture="mlp",
        batch_size=50,
        update_freq=5,
        num_train_steps=20,
        val_size=500,
        data_dir=str(data_dir),
        device="cpu",
    )
