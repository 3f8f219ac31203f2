"""Running the three scripts in tests: a cheap setting, and a call in this process or in a new one."""

from __future__ import annotations

import importlib
import io
import os
import signal
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import torch

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


def call_script(script: str, *args: str) -> subprocess.CompletedProcess:
    """``python <script> <args>`` run in this process, as click's ``CliRunner`` runs a command: the same
    command code (``alrs.commands.<script>.cli``), exit status, stdout and stderr, without the 3 to 6 s a new
    interpreter spends importing torch and torchvision. For tests of what a command does and says; tests of
    signals, kills, Ray and the script files themselves start a process (:func:`run_script`).

    The process-wide state a command may change (argv, working folder, torch's threads, the SIGTERM
    handler) is put back after it.
    """
    module = importlib.import_module(f"alrs.commands.{Path(script).stem}")
    argv, cwd, threads, sigterm = sys.argv, os.getcwd(), torch.get_num_threads(), signal.getsignal(signal.SIGTERM)
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [str(ROOT / script), *args]
    os.chdir(ROOT)
    code: Any = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            module.cli()
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = argv
        os.chdir(cwd)
        torch.set_num_threads(threads)
        signal.signal(signal.SIGTERM, sigterm)
    returncode = 0 if code is None else code if isinstance(code, int) else 1
    return subprocess.CompletedProcess([script, *args], returncode, out.getvalue(), err.getvalue())


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
