"""A setting: a dataclass field that carries its help text and which scripts take it.

Every setting of the scripts is a field of a settings dataclass (the environment's, PPO's, where work
runs, the training's, the run's); its help, type and default are the one declaration from which
:mod:`alrs.cli` builds the flag, reads and checks config files, and writes ``--help``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any


def setting(
    default: Any,
    help: str | Callable[[], str],
    scripts: tuple[str, ...] | None = None,
    flag: str | None = None,
    runtime: bool = False,
) -> Any:
    """A dataclass field with a default and its help text.

    Args:
        default: the built-in default.
        help: what it sets, for ``--help`` and the docs; or a function giving it when the parser is built
            (a help that lists a registry's members, read then so that the registry's module need not load).
        scripts: the scripts that take it; None: those of its dataclass (:data:`alrs.cli.SETTINGS`); ``()``:
            none (a field that is not a setting).
        flag: the flag's and config key's name where the field's own would clash (``ppo_lr`` for PPO's
            learning rate).
        runtime: it says where, how fast or how long the work runs, not what it computes: a resumed run may
            change it, and results made with other values stay comparable.
    """
    metadata = {"help": help, "scripts": scripts, "flag": flag, "runtime": runtime}
    return dataclasses.field(default=default, metadata=metadata)


def runtime_settings(cls: type) -> frozenset[str]:
    """The fields of the settings dataclass ``cls`` that are runtime settings (see :func:`setting`)."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("runtime"))


def one_of(words: Sequence[str]) -> str:
    """``a, b or c``: a help's list of choices."""
    return " or ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)
