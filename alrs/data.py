"""Datasets as in-memory tensors, split as the paper does, and their variants (ours).

Each dataset is one :class:`DatasetRecord` of :data:`DATASETS`: its loader, image shape, classes and
split rule. Adding one is one :func:`register_dataset` call; its variants come with it.

Xu et al. (2019), Sec. 4: Fashion-MNIST is split 50k/10k/10k and CIFAR10 40k/10k/10k
(train/validation/test). Both splits carve the validation set out of the official training
set, so one rule gives both: validation = 10,000 examples of the official training set drawn
with a fixed seed, training = the rest, test = the official test set. Pixels are scaled to
[0, 1] as torchvision's ``ToTensor`` does; no normalization and no augmentation (paper Sec. 4).

Ours, for tasks the controller never saw (:mod:`alrs.tasks`):

- ``digits``: scikit-learn's bundled handwritten digits (``load_digits``: 1,797 8x8 images, 17
  grey levels, no download), split 60/20/20 into training, validation and test (1,078 / 359 /
  360 images) by the fixed :data:`SPLIT_SEED` (:class:`Shares`).
- A variant of any dataset is its name followed by ``:``-separated modifiers, applied in order:
  ``classes=0-4`` (only those classes, relabelled 0..k-1, in every split), ``14x14`` (images
  average-pooled to that size; it must divide the original), ``fraction=0.1`` (the first 10% of a
  fixed permutation of the training split), ``noise=0.2`` (20% of the training labels replaced by
  a different class, drawn by a fixed seed; validation and test stay clean).
  E.g. ``fa-mnist:classes=0-4:14x14``.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from alrs.errors import UserError
from alrs.settings import one_of

NUM_VAL = 10_000
"""Validation examples carved out of the official training set (paper: 50k/10k and 40k/10k)."""

SPLIT_SEED = 0
"""Seed of the train/validation split; fixed so every run sees the same split."""

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = ("test_batch",)

VARIANT_SEED = 1
"""Seed of the variants' draws (the training fraction's permutation, the flipped labels)."""

VARIANT_HELP = "NAME[:classes=A-B or A,B,...][:HxW][:fraction=F][:noise=P]"


class DatasetError(UserError):
    """A dataset could not be found, downloaded or parsed; the message says how to fix it."""


@dataclass(frozen=True)
class Splits:
    """Train, validation and test tensors: images float32 in [0, 1] (N, C, H, W), labels int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, device: torch.device | str) -> Splits:
        """The same splits on ``device`` (no copy when already there)."""
        return Splits(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


Arrays = tuple[torch.Tensor, ...]
"""What a dataset's loader returns and its split rule takes: (train_x, train_y, test_x, test_y) for a dataset
with an official split, (x, y) for one without; images float32 in [0, 1] (N, C, H, W), labels int64."""


@dataclass(frozen=True)
class TorchvisionFiles:
    """A loader of official train and test files in torchvision's layout, from the first place that has them:
    ``<data_dir>/<folder>``, then the system folders, then torchvision's download into ``data_dir``.

    Args:
        torchvision_class: the ``torchvision.datasets`` class that downloads them.
        folder: their folder under ``data_dir``.
        files: the files that must be there (each raw or ``.gz``).
        read: a folder -> (train_x, train_y, test_x, test_y).
        system_dirs: other folders that may hold them (a system package's).
        hint: how else to get them, for the error that finds none (`` or ...``).
    """

    torchvision_class: str
    folder: str
    files: tuple[str, ...]
    read: Callable[[Path], Arrays]
    system_dirs: tuple[str, ...] = ()
    hint: str = ""

    def __call__(self, name: str, data_dir: Path, download: bool) -> Arrays:
        folders = [data_dir / self.folder, *map(Path, self.system_dirs)]
        for folder in folders:
            if _has_files(folder, self.files):
                return self.read(folder)
        if download:
            import torchvision

            try:
                getattr(torchvision.datasets, self.torchvision_class)(root=str(data_dir), download=True)
            except Exception as exc:
                reason = f"the download into {data_dir} failed ({type(exc).__name__}: {exc})"
            else:
                return self.read(folders[0])
        else:
            reason = "downloading is off"
        tried = ", ".join(str(f) for f in folders)
        raise DatasetError(
            f"{name}: no dataset files in {tried}, and {reason}; "
            f"put the official files there{self.hint}, or rerun with network access to download them"
        )


def carve_validation(name: str, arrays: Arrays) -> Splits:
    """The paper's split of an official train/test split: :data:`NUM_VAL` validation examples of the official
    training set drawn with :data:`SPLIT_SEED`, training = the rest, test = the official test set."""
    train_x, train_y, test_x, test_y = arrays
    if len(train_x) <= NUM_VAL:
        raise DatasetError(
            f"{name}: the training set has {len(train_x)} examples, "
            f"fewer than the {NUM_VAL} validation examples plus one"
        )
    perm = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    val_idx, train_idx = perm[:NUM_VAL], perm[NUM_VAL:]
    return Splits(train_x[train_idx], train_y[train_idx], train_x[val_idx], train_y[val_idx], test_x, test_y)


@dataclass(frozen=True)
class Shares:
    """The split of a dataset without an official one: a permutation of all examples by :data:`SPLIT_SEED`,
    its first ``train`` share for training, the next ``val`` share for validation, the rest for the test."""

    train: float
    val: float

    def __call__(self, name: str, arrays: Arrays) -> Splits:
        x, y = arrays
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
        n_train, n_val = round(self.train * len(x)), round(self.val * len(x))
        train, val, test = perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]
        return Splits(x[train], y[train], x[val], y[val], x[test], y[test])


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset or variant: its image shape and its number of classes."""

    image_shape: tuple[int, int, int]
    num_classes: int = 10


@dataclass(frozen=True)
class DatasetRecord:
    """One dataset of :data:`DATASETS`.

    Args:
        name: its ``--dataset`` name (no ``:``: that starts a variant's modifiers).
        description: a few words for ``--help``.
        image_shape: (C, H, W) of its images.
        load: (name, data_dir, download) -> the :data:`Arrays` that ``split`` takes.
        split: (name, arrays) -> the train/validation/test :class:`Splits`; the name is for errors.
        num_classes: its labels are 0 .. num_classes - 1.
    """

    name: str
    description: str
    image_shape: tuple[int, int, int]
    load: Callable[[str, Path, bool], Arrays]
    split: Callable[[str, Arrays], Splits]
    num_classes: int = 10


DATASETS: dict[str, DatasetRecord] = {}
"""The datasets by name, in the order of ``--help``."""


def register_dataset(record: DatasetRecord) -> DatasetRecord:
    """Add ``record`` to :data:`DATASETS`; a name taken, or one with a ``:``, is refused."""
    if record.name in DATASETS:
        raise ValueError(f"a dataset named {record.name!r} is registered already")
    if ":" in record.name:
        raise ValueError(f"a dataset's name has no ':' (it starts a variant's modifiers), got {record.name!r}")
    DATASETS[record.name] = record
    return record


def dataset_help() -> str:
    """The ``--dataset`` help: every registered dataset with its description, and the variants."""
    names = [f"{r.name} ({r.description})" if r.description else r.name for r in DATASETS.values()]
    return f"{one_of(names)}; or a variant, {VARIANT_HELP}, e.g. fa-mnist:classes=0-4:14x14; see alrs.data."


def _variant_error(name: str, why: str) -> UserError:
    return UserError(f"dataset {name!r}: {why}; a variant is {VARIANT_HELP} with NAME one of {', '.join(DATASETS)}")


def parse_variant(name: str) -> tuple[str, list[tuple[str, Any]]]:
    """The base dataset and the modifiers of a dataset variant such as ``fa-mnist:classes=0-4:14x14``."""
    if not isinstance(name, str):
        raise UserError(f"a dataset is a name such as fa-mnist, got {name!r}")
    base, *parts = name.split(":")
    if base not in DATASETS:
        raise UserError(f"unknown dataset {base!r}; choose one of {', '.join(DATASETS)}")
    mods: list[tuple[str, Any]] = []
    for part in parts:
        key, eq, value = part.partition("=")
        try:
            if key == "classes" and eq:
                if "-" in value:
                    lo, hi = (int(v) for v in value.split("-"))
                    classes = tuple(range(lo, hi + 1))
                else:
                    classes = tuple(int(v) for v in value.split(","))
                mods.append(("classes", classes))
            elif key in ("fraction", "noise") and eq:
                mods.append((key, float(value)))
            elif not eq and "x" in key:
                h, w = (int(v) for v in key.split("x"))
                mods.append(("size", (h, w)))
            else:
                raise ValueError
        except ValueError:
            raise _variant_error(name, f"cannot read {part!r}") from None
    return base, mods


def check_dataset(name: str) -> DatasetInfo:
    """The info (image shape, classes) of a dataset or variant, or a one-line error naming the problem."""
    base, mods = parse_variant(name)
    record = DATASETS[base]
    channels, height, width = record.image_shape
    num_classes = record.num_classes
    for key, value in mods:
        if key == "classes":
            if len(value) < 2 or len(set(value)) != len(value) or not all(0 <= c < num_classes for c in value):
                raise _variant_error(name, f"classes must be 2 or more distinct labels in 0..{num_classes - 1}")
            num_classes = len(value)
        elif key == "size":
            h, w = value
            if not (0 < h <= height and 0 < w <= width and height % h == 0 and width % w == 0):
                raise _variant_error(name, f"{h}x{w} must divide the {height}x{width} images")
            height, width = h, w
        elif key == "fraction" and not 0 < value <= 1:
            raise _variant_error(name, f"fraction must be in (0, 1], got {value}")
        elif key == "noise" and not 0 <= value < 1:
            raise _variant_error(name, f"noise must be in [0, 1), got {value}")
    return DatasetInfo((channels, height, width), num_classes)


def load_dataset(
    name: str, data_dir: str | os.PathLike = "./data", device: torch.device | str = "cpu", download: bool = True
) -> Splits:
    """Load ``name`` once per process and return its train/validation/test splits on ``device``.

    Args:
        name: a dataset of :data:`DATASETS` or a variant of one.
        data_dir: folder in torchvision's layout (``<data_dir>/FashionMNIST/raw``,
            ``<data_dir>/cifar-10-batches-py``); looked at first, then the system dataset
            folders, then a torchvision download into it (:class:`TorchvisionFiles`).
        device: where the tensors live; loaded once and shared by every environment.
        download: allow the torchvision download as the last resort.
    """
    check_dataset(name)
    return _load_cached(name, str(Path(data_dir).expanduser().resolve()), str(torch.device(device)), download)


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, data_dir: str, device: str, download: bool) -> Splits:
    if device != "cpu":
        return _load_cached(name, data_dir, "cpu", download).to(device)
    base, mods = parse_variant(name)
    if mods:
        return apply_variant(_load_cached(base, data_dir, "cpu", download), mods)
    record = DATASETS[name]
    return record.split(name, record.load(name, Path(data_dir), download))


def apply_variant(splits: Splits, mods: list[tuple[str, Any]]) -> Splits:
    """``splits`` changed by the modifiers of :func:`parse_variant`, in order; deterministic (fixed seeds)."""
    s = dict(vars(splits))
    for key, value in mods:
        if key == "classes":
            lookup = torch.full((int(max(value)) + 1,), -1, dtype=torch.long)
            lookup[list(value)] = torch.arange(len(value))
            for part in ("train", "val", "test"):
                x, y = s[f"{part}_x"], s[f"{part}_y"]
                keep = torch.isin(y, torch.tensor(value))
                s[f"{part}_x"], s[f"{part}_y"] = x[keep], lookup[y[keep]]
        elif key == "size":
            for part in ("train", "val", "test"):
                x = s[f"{part}_x"]
                s[f"{part}_x"] = F.avg_pool2d(x, (x.shape[2] // value[0], x.shape[3] // value[1]))
        elif key == "fraction":
            n = max(1, round(value * len(s["train_x"])))
            keep = torch.randperm(len(s["train_x"]), generator=torch.Generator().manual_seed(VARIANT_SEED))[:n]
            s["train_x"], s["train_y"] = s["train_x"][keep], s["train_y"][keep]
        elif key == "noise":
            generator = torch.Generator().manual_seed(VARIANT_SEED)
            y = s["train_y"].clone()
            num_classes = int(torch.cat([s["train_y"], s["val_y"], s["test_y"]]).max()) + 1
            flip = torch.rand(len(y), generator=generator) < value
            shift = torch.randint(1, num_classes, (len(y),), generator=generator)  # another class, never the same
            y[flip] = (y[flip] + shift[flip]) % num_classes
            s["train_y"] = y
    return Splits(**{k: v.contiguous() for k, v in s.items()})


def _has_files(folder: Path, names: tuple[str, ...]) -> bool:
    return all((folder / n).is_file() or (folder / f"{n}.gz").is_file() for n in names)


def _read_idx_folder(folder: Path) -> Arrays:
    return (*_read_idx_pair(folder, *_IDX_FILES["train"]), *_read_idx_pair(folder, *_IDX_FILES["test"]))


def _read_cifar_folder(folder: Path) -> Arrays:
    train_x, train_y = _read_cifar_batches([folder / f for f in _CIFAR_TRAIN])
    test_x, test_y = _read_cifar_batches([folder / f for f in _CIFAR_TEST])
    return train_x, train_y, test_x, test_y


def _read_idx_pair(folder: Path, images: str, labels: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) in [0, 1] and labels (N,) from IDX files, raw or gzip-compressed."""
    x = _read_idx(folder, images).unsqueeze(1).float().div_(255.0)
    y = _read_idx(folder, labels).long()
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
        raise DatasetError(
            f"{folder / images} and {folder / labels}: shapes {tuple(x.shape)} and {tuple(y.shape)} do not match"
        )
    return x, y


def _read_idx(folder: Path, name: str) -> torch.Tensor:
    """Parse one IDX file with torchvision's reader; a .gz is read through gzip."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    path = folder / name if (folder / name).is_file() else folder / f"{name}.gz"
    try:
        if path.suffix != ".gz":
            return read_sn3_pascalvincent_tensor(str(path))
        with gzip.open(path, "rb") as f, tempfile.NamedTemporaryFile(suffix=".idx") as tmp:
            tmp.write(f.read())
            tmp.flush()
            return read_sn3_pascalvincent_tensor(tmp.name)
    except (OSError, EOFError, AssertionError, RuntimeError, ValueError, KeyError) as exc:
        raise DatasetError(
            f"{path}: not a valid IDX file ({type(exc).__name__}: {exc}); delete it and fetch it again"
        ) from exc


def _read_cifar_batches(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) in [0, 1] and labels (N,) from CIFAR10's python pickle batches."""
    xs, ys = [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(batch["labels"], dtype=np.int64)
            if len(data) != len(labels):
                raise UserError(f"{len(data)} images but {len(labels)} labels")
        except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as exc:
            raise DatasetError(
                f"{path}: not a valid CIFAR10 batch ({type(exc).__name__}: {exc}); delete it and fetch it again"
            ) from exc
        xs.append(torch.from_numpy(data))
        ys.append(torch.from_numpy(labels))
    return torch.cat(xs).float().div_(255.0), torch.cat(ys)


def _load_digits(name: str, data_dir: Path, download: bool) -> Arrays:
    """scikit-learn's bundled digits (no download), all 1,797 of them."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).div_(16.0).unsqueeze(1)  # 17 grey levels -> [0, 1]
    return x, torch.as_tensor(digits.target, dtype=torch.long)


def _idx_files(torchvision_class: str, system_dirs: tuple[str, ...] = (), hint: str = "") -> TorchvisionFiles:
    files = _IDX_FILES["train"] + _IDX_FILES["test"]
    return TorchvisionFiles(torchvision_class, f"{torchvision_class}/raw", files, _read_idx_folder, system_dirs, hint)


register_dataset(
    DatasetRecord("mnist", "MNIST", (1, 28, 28), _idx_files("MNIST", ("/usr/share/datasets/mnist",)), carve_validation)
)
register_dataset(
    DatasetRecord(
        "fa-mnist",
        "Fashion-MNIST, the paper's",
        (1, 28, 28),
        _idx_files(
            "FashionMNIST", ("/usr/share/datasets/fashion-mnist",), " or install Debian's dataset-fashion-mnist"
        ),
        carve_validation,
    )
)
register_dataset(
    DatasetRecord(
        "cifar10",
        "CIFAR10, the paper's",
        (3, 32, 32),
        TorchvisionFiles("CIFAR10", "cifar-10-batches-py", _CIFAR_TRAIN + _CIFAR_TEST, _read_cifar_folder),
        carve_validation,
    )
)
register_dataset(
    DatasetRecord(
        "digits", "scikit-learn's 8x8 digits, no download", (1, 8, 8), _load_digits, Shares(train=0.6, val=0.2)
    )
)


class BatchSampler:
    """Minibatch indices of one child: a fresh permutation each epoch, the last partial batch dropped."""

    def __init__(self, num_examples: int, batch_size: int, seed: int, device: torch.device):
        self.num_examples, self.batch_size, self.device = num_examples, batch_size, device
        # A CPU generator: CUDA's draws another order from the same seed, and a seed must mean the same
        # batches on every device, so that results stored on one pair with results stored on another.
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long, device=device)
        self.cursor = 0

    def next(self) -> torch.Tensor:
        """The next minibatch's indices, shape (batch_size,)."""
        if self.cursor + self.batch_size > len(self.order):
            # Once an epoch: a permutation drawn on the host and copied over.
            self.order = torch.randperm(self.num_examples, generator=self.generator).to(self.device)
            self.cursor = 0
        idx = self.order[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return idx
