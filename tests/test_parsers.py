"""The scripts' command lines are a contract: their flags, types, defaults and help are compared with the
committed description in tests/data/parsers.json, so a refactor that changes one fails here. A deliberate
change rewrites the file (``python tests/test_parsers.py``) and shows in its diff."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from alrs import cli

SNAPSHOT = Path(__file__).parent / "data" / "parsers.json"


def describe_parsers() -> dict[str, Any]:
    """Every script's parser as plain data: each flag's group, names, type, arity and help, and the defaults."""
    described: dict[str, Any] = {"defaults": cli.DEFAULTS, "runtime": sorted(cli.RUNTIME_KEYS)}
    for script in cli.SCRIPTS:
        parser = cli.build_parser(script)
        arguments = [
            {
                "group": group.title,
                "flags": action.option_strings,
                "nargs": action.nargs,
                "type": getattr(action.type, "__name__", None),
                "action": type(action).__name__,
                "metavar": action.metavar,
                "help": action.help,
            }
            for group in parser._action_groups
            for action in group._group_actions
        ]
        described[script] = {"description": parser.description, "arguments": arguments}
    return described


def test_parsers_match_the_committed_description(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])  # the program's name comes from argv[0]
    assert json.loads(json.dumps(describe_parsers())) == json.loads(SNAPSHOT.read_text())


def test_every_flag_parses_back_to_its_setting() -> None:
    for script in cli.SCRIPTS:
        parser = cli.build_parser(script)
        keys = {a.dest for a in parser._actions if isinstance(a, argparse.Action)}
        assert {key for key, s in cli.ALL.items() if script in s.scripts} <= keys


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(describe_parsers(), indent=1) + "\n")
    print(f"written: {SNAPSHOT}")
