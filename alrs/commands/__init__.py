"""The three commands, train, baselines and test: what ``alrs-train``, ``alrs-baselines`` and ``alrs-test``
run, and ``python train.py`` etc. from a clone. This module holds what they share: how a command runs
(one-line errors, Ctrl-C and SIGTERM), torch threads, and the provenance recorded with every result."""

from __future__ import annotations

import datetime
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from alrs.errors import UserError


def invocation(script: str) -> str:
    """How the user started ``script``: ``alrs-train`` for the console script, else ``python train.py``."""
    name = Path(sys.argv[0]).name
    return name if name.startswith("alrs-") else f"python {script}.py"


def provenance() -> dict[str, Any]:
    """Git commit, library versions and machine, for the record of a run."""
    import gymnasium
    import numpy
    import torchvision

    import alrs

    here = Path(__file__).resolve().parent  # the clone's git, for an editable install

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=here,
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                cwd=here,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    return {
        "git_commit": commit + ("-dirty" if dirty else ""),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "versions": {
            "alrs": alrs.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "gymnasium": gymnasium.__version__,
            "numpy": numpy.__version__,
        },
        "machine": {
            "cpus": os.cpu_count(),
            # The CPU kernels torch chose (AVX2, AVX512, ...): runs agree to the last digit only on the same.
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def set_threads(threads: int | None) -> None:
    """Set torch's CPU threads; None keeps torch's choice (one per physical core)."""
    if threads is not None:
        if threads <= 0:
            raise UserError(f"--threads must be positive, got {threads}")
        torch.set_num_threads(threads)


_TERMINATED: list[bool] = []  # set by SIGTERM: the exit status is then 143, not Ctrl-C's 130


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM stops the work as Ctrl-C does (the same clean-up, what is kept, the resume hint)."""
    _TERMINATED.append(True)
    raise KeyboardInterrupt


def run_script(main: Callable[[], int | None]) -> None:
    """Run a script's main: a :class:`~alrs.errors.UserError` prints as one line ``error: ...`` (exit 2);
    Ctrl-C exits with 130. ``ALRS_DEBUG=1`` or ``--debug`` shows the traceback instead. SIGTERM takes
    Ctrl-C's path (worker processes and a local Ray are stopped, the resume hint printed) and exits with 143."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    debug = bool(os.environ.get("ALRS_DEBUG")) or "--debug" in sys.argv[1:]
    name = Path(sys.argv[0]).name
    try:
        code = main()
        sys.exit(128 + signal.SIGTERM if _TERMINATED and code == 130 else code)
    except UserError as exc:
        if debug:
            raise
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\n{name}: interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM if _TERMINATED else 130)
    except (MemoryError, torch.OutOfMemoryError) as exc:
        if debug:
            raise
        print(
            f"{name}: error: out of memory ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "lower --batch-size, --val-size, --hidden-sizes, --num-envs or --workers"
            + (f"; {exc.resume_hint}" if hasattr(exc, "resume_hint") else ""),  # set by a command that can resume
            file=sys.stderr,
        )
        sys.exit(1)
    except OSError as exc:  # the file system's answer: a read-only folder, a full disk, a path that is a file
        if debug or exc.filename is None:
            raise
        print(f"{name}: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(1)
