"""The settings module (alrs.config) and the shape of the package: no import cycle (that importing the settings
stays light is tests/test_package.py's)."""

from __future__ import annotations

import ast
import dataclasses
from graphlib import TopologicalSorter
from pathlib import Path

import pytest

from alrs.config import EnvConfig
from alrs.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The alrs modules that ``path`` imports anywhere in it: at the top, in functions, or for type checking."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found & modules


def test_the_package_has_no_import_cycle() -> None:
    files = {
        ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): f
        for f in ROOT.glob("alrs/**/*.py")
    }
    graph = {name: _imports(path, set(files)) - {name} for name, path in files.items()}
    TopologicalSorter(graph).prepare()  # raises graphlib.CycleError naming the cycle


def test_decisions_and_the_evaluation_form() -> None:
    config = EnvConfig(num_train_steps=200, update_freq=10, lr_noise=0.1, initial_lr_noise=0.2)
    assert config.decisions == 20
    evaluated = config.for_evaluation()
    assert (evaluated.lr_noise, evaluated.initial_lr_noise) == (0.0, 0.0)
    assert dataclasses.replace(evaluated, lr_noise=0.1, initial_lr_noise=0.2) == config


def test_a_configuration_names_its_bad_setting() -> None:
    with pytest.raises(UserError, match="update_freq=7 must divide num_train_steps=200"):
        EnvConfig(num_train_steps=200, update_freq=7)
