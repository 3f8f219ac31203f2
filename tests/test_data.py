from __future__ import annotations

import dataclasses
import gzip
import shutil
from pathlib import Path

import pytest
import torch

from alrs.data import DATASETS, NUM_VAL, DatasetError, load_dataset
from fakedata import NUM_TEST, NUM_TRAIN_EXTRA, write_idx_dataset


def _image_ids(x: torch.Tensor) -> set[int]:
    """The index each fake image carries in its first two pixels."""
    flat = (x.flatten(1)[:, :2] * 255).round().long()
    return set((flat[:, 0] * 256 + flat[:, 1]).tolist())


@pytest.mark.parametrize("name,shape", [("fa-mnist", (1, 28, 28)), ("mnist", (1, 28, 28)), ("cifar10", (3, 32, 32))])
def test_splits_have_paper_sizes_and_are_disjoint(data_dir: Path, name: str, shape: tuple) -> None:
    d = load_dataset(name, data_dir, download=False)
    assert d.train_x.shape == (NUM_TRAIN_EXTRA, *shape) and d.val_x.shape == (NUM_VAL, *shape)
    assert d.test_x.shape == (NUM_TEST, *shape)
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    assert 0.0 <= float(d.train_x.min()) and float(d.train_x.max()) <= 1.0
    train_ids, val_ids = _image_ids(d.train_x), _image_ids(d.val_x)
    assert len(train_ids) == NUM_TRAIN_EXTRA and len(val_ids) == NUM_VAL
    assert not train_ids & val_ids and len(train_ids | val_ids) == NUM_VAL + NUM_TRAIN_EXTRA


def test_split_is_fixed_across_loads(data_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(data_dir / "FashionMNIST", copy / "FashionMNIST")
    a, b = load_dataset("fa-mnist", data_dir, download=False), load_dataset("fa-mnist", copy, download=False)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)


def test_uncompressed_idx_files_are_read(data_dir: Path, tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in (data_dir / "FashionMNIST" / "raw").glob("*.gz"):
        (raw / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    plain, zipped = (
        load_dataset("fa-mnist", tmp_path, download=False),
        load_dataset("fa-mnist", data_dir, download=False),
    )
    assert torch.equal(plain.test_x, zipped.test_x)


def test_offline_without_files_says_what_was_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "MNIST", no_network)
    mnist = DATASETS["mnist"]
    files = dataclasses.replace(mnist.load, system_dirs=(str(tmp_path / "system"),))
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(mnist, load=files))
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", tmp_path / "empty")
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message and str(tmp_path / "system") in message
    assert "download" in message and "network is unreachable" in message


def test_truncated_file_is_named(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    write_idx_dataset(raw)
    broken = raw / "t10k-images-idx3-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:200])
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte\.gz"):
        load_dataset("fa-mnist", tmp_path, download=False)


def test_corrupt_cifar_batch_is_named(data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    shutil.copytree(data_dir / "cifar-10-batches-py", folder)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path, download=False)


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=", ".join(DATASETS)):
        load_dataset("svhn")


REAL = Path(DATASETS["fa-mnist"].load.system_dirs[0])


@pytest.mark.skipif(
    not (REAL / "train-images-idx3-ubyte.gz").exists(), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_real_fashion_mnist_from_system_folder(tmp_path: Path) -> None:
    d = load_dataset("fa-mnist", tmp_path, download=False)
    assert (len(d.train_x), len(d.val_x), len(d.test_x)) == (50_000, 10_000, 10_000)
    assert d.train_x.shape[1:] == (1, 28, 28) and float(d.train_x.max()) == 1.0
    assert torch.bincount(d.test_y).tolist() == [1000] * 10
