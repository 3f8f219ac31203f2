"""Small datasets written in the real on-disk formats (IDX .gz, CIFAR10 python batches).

Images are a class template plus noise, so a child network can learn them; each image also
carries its own index in its first pixels, so tests can check that splits are disjoint.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

from alrs.data import NUM_VAL

NUM_TRAIN_EXTRA = 400
"""Training examples beyond the validation split: the fake train split's size."""
NUM_TEST = 200


def _images(n: int, shape: tuple[int, ...], seed: int, split: int) -> tuple[np.ndarray, np.ndarray]:
    templates = np.random.default_rng(seed).integers(0, 256, size=(10, *shape))  # shared by train and test
    rng = np.random.default_rng([seed, split])
    labels = rng.integers(0, 10, size=n)
    noise = rng.integers(0, 256, size=(n, *shape))
    images = (0.7 * templates[labels] + 0.3 * noise).astype(np.uint8).reshape(n, -1)
    images[:, 0], images[:, 1] = np.arange(n) // 256, np.arange(n) % 256  # unique per image
    return images.reshape(n, *shape), labels.astype(np.uint8)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_idx_dataset(folder: Path, seed: int = 0) -> None:
    """The four MNIST-format .gz files (NUM_VAL + NUM_TRAIN_EXTRA train, NUM_TEST test) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, (prefix, n) in enumerate((("train", NUM_VAL + NUM_TRAIN_EXTRA), ("t10k", NUM_TEST))):
        x, y = _images(n, (28, 28), seed, split)
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)


def write_cifar_dataset(folder: Path, seed: int = 0) -> None:
    """CIFAR10's five training batches and test batch, as python pickles, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    x, y = _images(NUM_VAL + NUM_TRAIN_EXTRA, (3, 32, 32), seed, 0)
    for i, (xs, ys) in enumerate(zip(np.array_split(x, 5), np.array_split(y, 5), strict=True), start=1):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": xs.reshape(len(xs), -1), "labels": ys.tolist()}, f)
    tx, ty = _images(NUM_TEST, (3, 32, 32), seed, 1)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": tx.reshape(len(tx), -1), "labels": ty.tolist()}, f)
