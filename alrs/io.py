"""Atomic writes and checked reads: a crash never leaves a half-written file behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from collections.abc import Callable
from typing import Any, BinaryIO

import torch


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write`` on a temporary file in the same folder, flush it to disk, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically."""
    atomic_write(Path(path), lambda f: torch.save(obj, f))


def save_json(obj: Any, path: str | os.PathLike) -> None:
    """Pretty JSON, written atomically."""
    atomic_write(Path(path), lambda f: f.write((json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()))


def load_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a missing or malformed one is a one-line ``ValueError`` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


def load_torch(path: str | os.PathLike) -> Any:
    """Load a checkpoint written by :func:`save_torch` (tensors and plain data only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - every unreadable file gets the same one-line answer
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}); it may be truncated or from another program") from None
