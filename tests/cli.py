"""Running the three scripts in tests: a cheap setting and a subprocess call."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

SMALL = "--architecture mlp --batch-size 50 --update-freq 5 --num-train-steps 20 --val-size 500 --device cpu".split()
"""A cheap episode: the MLP, batch 50, 4 controller steps of 5 Adam steps, 500 validation examples."""


def small_flags(data_dir: Path) -> list[str]:
    """The cheap setting on the data in ``data_dir``, without progress bars."""
    return ["--data-dir", str(data_dir), *SMALL, "--no-progress"]


def run_script(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python <script> <args>`` from the repository root; its output captured."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


def start_script(script: str, *args: str) -> subprocess.Popen:
    """``python <script> <args>`` started in the background, with Ctrl-C (SIGINT) as a terminal delivers it.

    A shell starts background jobs with SIGINT ignored, and a child inherits that; the script is
    given the default action back, so a test's SIGINT interrupts it however the tests were started.
    """
    return subprocess.Popen(
        [sys.executable, str(ROOT / script), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def _default_sigint(*_: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
