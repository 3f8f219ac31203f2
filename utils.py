"""What the three scripts share: running their command from a clone, as the console scripts do.

train.py, baselines.py and test.py are the clone's way to run alrs-train, alrs-baselines and alrs-test
(alrs.commands). Unlike a console script, which pip installs together with its dependencies, a script may
be run where they are missing: that is a one-line error naming the install, not a traceback.
"""

from __future__ import annotations

import importlib
import sys


def run(command: str) -> None:
    """Run the command ``command`` (``train``, ``baselines`` or ``test``) of alrs.commands."""
    try:
        module = importlib.import_module(f"alrs.commands.{command}")
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] == "alrs":
            raise
        sys.exit(
            f"{command}.py: error: the package {exc.name!r} is not installed; install everything with "
            "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt"
        )
    module.cli()
