"""Atomic writes and checked reads: a crash never leaves a half-written file behind."""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import filelock
import torch

from alrs.errors import UserError


def _umask() -> int:
    """The process's umask, read without changing it (Linux reports it in /proc; elsewhere it is set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write`` on a temporary file in the same folder, flush it to disk, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer that was killed (kill -9)
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a file-size limit: the old file stays whole; name the one being written
        Path(tmp).unlink(missing_ok=True)
        raise with_filename(exc, path) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def with_filename(exc: OSError, path: str | os.PathLike) -> OSError:
    """``exc`` with ``path`` as its file name where it has none (a failed write() names no file)."""
    if exc.filename is not None:
        return exc
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path))


def append_csv_rows(path: str | os.PathLike, rows: list[list[Any]]) -> None:
    """Append rows to a CSV file; a failed write names the file (a partial last row is dropped on resume)."""
    import csv

    try:
        with open(path, "a", newline="") as f:
            csv.writer(f).writerows(rows)
    except OSError as exc:
        raise with_filename(exc, path) from exc


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically."""
    atomic_write(Path(path), lambda f: torch.save(obj, f))


def strict_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None: strict JSON has no NaN or Infinity
    (the writer puts the reason for an undefined figure beside it)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def save_json(obj: Any, path: str | os.PathLike) -> None:
    """Pretty, strict JSON (NaN and infinities written as null), written atomically."""
    text = json.dumps(strict_json(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write(Path(path), lambda f: f.write(text.encode()))


def load_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a missing or malformed one is a one-line :class:`UserError` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise UserError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise UserError(f"{path} is a folder; name a JSON file") from exc
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a text file (JSON expected)") from exc
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc


def load_torch(path: str | os.PathLike) -> Any:
    """Load a checkpoint written by :func:`save_torch` (tensors and plain data only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise UserError(f"{path}: no such checkpoint") from exc
    except Exception as exc:
        raise UserError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}); it may be truncated or from another program"
        ) from exc


class FolderLock:
    """An advisory lock: one process at a time writes what ``path`` guards (a run folder, a result file).

    The lock is the operating system's, taken through the ``filelock`` package (``flock`` on Unix,
    ``LockFileEx`` on Windows), so it is released when its holder exits, however it exits: a lock file
    left behind by a dead process is free again. The holder records its host and PID in ``<path>.holder``
    for the message a second writer gets; that writer is refused, or with ``wait`` waits for the lock.
    On a network file system the lock holds across machines where the file system supports locks
    (docs/reliability.md).

    Args:
        path: the lock file (created if missing; kept, empty of meaning, after release).
        what: how the message names what is locked, e.g. ``run folder runs/x``.
        wait: wait for the holder to finish instead of refusing.
    """

    def __init__(self, path: str | os.PathLike, what: str, wait: bool = False):
        self.path, self.what, self.wait = Path(path), what, wait
        self.holder_file = self.path.with_name(f"{self.path.name}.holder")
        self._lock = filelock.FileLock(self.path, thread_local=False)

    def _holder(self) -> str:
        try:
            return self.holder_file.read_text().strip() or "an unknown process"
        except OSError:
            return "an unknown process"

    def __enter__(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            try:
                self._lock.acquire(timeout=0)
            except filelock.Timeout:
                holder = self._holder()
                if not self.wait:
                    raise UserError(
                        f"{self.what} is in use by {holder}; wait for it to finish (or pass --wait), "
                        "or stop that process on its host"
                    ) from None
                print(f"waiting for {self.what}, in use by {holder}", file=sys.stderr, flush=True)
                self._lock.acquire(timeout=-1, poll_interval=0.2)
        except OSError as exc:  # a file system without locks (NFS mounted with nolock), a read-only folder
            raise UserError(
                f"cannot lock {self.path} ({exc.strerror or exc}); write to a folder whose file system supports locks"
            ) from exc
        holder = f"process {os.getpid()} on host {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})"
        try:
            atomic_write(self.holder_file, lambda f: f.write(f"{holder}\n".encode()))
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.holder_file.unlink(missing_ok=True)
        self._lock.release()
