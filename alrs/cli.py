"""The scripts' flags and config files, built from the settings dataclasses.

Every setting is a field of one dataclass of :data:`SETTINGS`, declared with :func:`alrs.settings.setting`:
its flag, config-file key, help, default and type check all come from that one declaration (the type
through :func:`typing.get_type_hints`). A script's settings are, from lowest to highest precedence: the
built-in defaults, the resumed or tested run's config.json, a ``--config`` JSON file, the flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alrs.config import EnvConfig, PPOConfig, TrainingConfig, check_seed
from alrs.errors import UserError
from alrs.io import load_json
from alrs.parallel import ParallelConfig
from alrs.protocol import TEST_SEED_OFFSET
from alrs.runfolder import CONFIG_FILE, resolve_run
from alrs.settings import setting
from alrs.suite import SUITE_SEEDS

SCRIPTS = ("train", "baselines", "test")


@dataclass(frozen=True)
class RunConfig:
    """The settings of a script's run that are neither the environment's, PPO's, the training's nor where
    work runs. Each field's help is its documentation (and its flag's --help)."""

    seed: int = setting(0, "random seed (training: the controller and every reset; tests: seed + 1000 + i).")
    out_dir: str = setting("runs", "folder of run folders.", scripts=("train", "test"), runtime=True)
    results_dir: str = setting("results", "where results are written.", scripts=("baselines", "test"), runtime=True)
    num_seeds: int = setting(10, "seeds per schedule (paper: 10).", scripts=("test",))
    suite_seeds: int = setting(
        SUITE_SEEDS, "seeds per schedule and held-out task in test.py --suite (ours).", scripts=("test",)
    )
    checkpoint: str = setting(
        "best",
        "which controller of the run: best (best.pt), last (last.pt, where training ended) or iter-N "
        "(the controller evaluated after iteration N, kept in the run's evals/).",
        scripts=("test",),
    )
    policy: str = setting(
        "mode",
        "how the controller acts in the test: mode (its most likely action, as in the training's "
        "evaluations) or sample (actions drawn as in training, seeded by the test seed; results go to "
        "a folder ending in _sample).",
        scripts=("test",),
    )
    start_lr: float | None = setting(
        None,
        "start the controller from this LR only (and from the tuned step decay's); unset: from each "
        "initial LR it was trained on.",
        scripts=("test",),
    )
    baselines_only: bool = setting(
        False, "test the tuned baselines alone (no controller; settings from --config and flags).", scripts=("test",)
    )
    run_baselines: bool = setting(False, "run baselines.py first when its results are missing.", scripts=("test",))
    reuse_baselines: str | None = setting(
        None,
        "an earlier test's result folder whose runs of the hand-made schedules are copied instead of "
        "rerun, where its child settings agree (ours; exact only when it ran on the same device and "
        "torch threads).",
        scripts=("test",),
    )
    progress: bool = setting(True, "show progress bars.", runtime=True)
    wait: bool = setting(
        False,
        "wait for another process writing the same run folder or result file to finish, instead of refusing.",
        runtime=True,
    )


SETTINGS: tuple[tuple[str, type, tuple[str, ...]], ...] = (
    ("child network and environment", EnvConfig, SCRIPTS),
    ("where the work runs", ParallelConfig, SCRIPTS),
    ("run", RunConfig, SCRIPTS),
    ("training", TrainingConfig, ("train",)),
    ("PPO", PPOConfig, ("train",)),
)
"""The settings dataclasses, their flag groups, and the scripts that take their fields (unless a field says)."""


@dataclass(frozen=True)
class Setting:
    """One setting as the scripts see it: its key (flag and config-file name), field, group, type and scripts."""

    key: str
    field: dataclasses.Field
    group: str
    owner: type
    hint: Any
    scripts: tuple[str, ...]

    @property
    def help(self) -> str:
        """What it sets (a help given as a function is called now)."""
        help = self.field.metadata["help"]
        return help() if callable(help) else help

    @property
    def default(self) -> Any:
        """The built-in default, as a config file writes it."""
        value = self.field.default
        return list(value) if isinstance(value, tuple) else value


def _settings() -> dict[str, Setting]:
    out = {}
    for group, cls, scripts in SETTINGS:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if "help" not in f.metadata or f.metadata["scripts"] == ():
                continue
            key = f.metadata["flag"] or f.name
            out[key] = Setting(key, f, group, cls, hints[f.name], f.metadata["scripts"] or scripts)
    return out


ALL: dict[str, Setting] = _settings()
"""Every setting, by key."""

DEFAULTS: dict[str, Any] = {key: s.default for key, s in ALL.items()}
"""Every setting a config file may hold, with its built-in default."""

RUNTIME_KEYS = frozenset(key for key, s in ALL.items() if s.field.metadata["runtime"])
"""Settings a resumed run may change: where and how fast it runs, and how long it goes on."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_KINDS: dict[tuple[Any, bool], tuple[dict[str, Any], str, Callable[[Any], bool]]] = {
    # (type, may be null) -> (argparse keywords, the type a config file must give in words, its check)
    (int, False): ({"type": int}, "int", _is_int),
    (float, False): ({"type": float}, "float", _is_number),
    (str, False): ({}, "str", lambda v: isinstance(v, str)),
    (bool, False): ({"action": argparse.BooleanOptionalAction}, "bool", lambda v: isinstance(v, bool)),
    (int, True): ({"type": int}, "an integer or null", _is_int),
    (float, True): ({"type": float}, "a number or null", _is_number),
    (str, True): ({}, "a string or null", lambda v: isinstance(v, str)),
    (bool, True): (
        {"action": argparse.BooleanOptionalAction},
        "true, false or null (automatic)",
        lambda v: isinstance(v, bool),
    ),
    (float | str, False): (
        {"type": lambda text: text if text == "random" else float(text)},
        "a number or 'random'",
        lambda v: _is_number(v) or v == "random",
    ),
    (tuple[int, ...], False): (
        {"type": int, "nargs": "+"},
        "a list of integers",
        lambda v: isinstance(v, list) and all(_is_int(x) for x in v),
    ),
}


def _kind(s: Setting) -> tuple[dict[str, Any], str, Callable[[Any], bool]]:
    """How a setting's type parses from a flag, reads in words, and checks in a config file."""
    hint, optional = s.hint, False
    if isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint):
        (hint,) = (a for a in typing.get_args(hint) if a is not type(None))
        optional = True
    kwargs, words, check = _KINDS[(hint, optional)]
    return kwargs, words, (lambda v: v is None or check(v)) if optional else check


def build_parser(script: str) -> argparse.ArgumentParser:
    """The argument parser of ``script`` (``train``, ``baselines`` or ``test``): one flag per setting; no
    defaults are set on it, so the parsed namespace holds exactly the flags given on the command line."""
    console = Path(sys.argv[0]).name
    p = argparse.ArgumentParser(
        prog=console if console == f"alrs-{script}" else f"{script}.py",
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
        description={
            "train": "Learn an LR controller with PPO.",
            "baselines": "Grid-search the paper's step-decay baseline.",
            "test": "Compare a learned schedule with the baselines over seeds.",
        }[script],
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for key, s in ALL.items():
        if script not in s.scripts:
            continue
        if s.group not in groups:
            groups[s.group] = p.add_argument_group(s.group)
        flag_help = f"{s.help.removesuffix('.')} (default: {s.default})".replace("%", "%%")
        groups[s.group].add_argument(f"--{key.replace('_', '-')}", help=flag_help, **_kind(s)[0])
    g = p.add_argument_group("files")
    g.add_argument("--config", help="JSON file of settings; flags override it")
    if script == "train":
        g.add_argument("--resume", help="continue the run in this folder")
    if script == "test":
        g.add_argument("--test-id", help="run to test: an id under --out-dir, or a run folder")
        g.add_argument(
            "--controller",
            metavar="NAME",
            help="controller to test instead of a run: a released one by name (alrs.controllers: "
            f"{', '.join(released_names())}) or the path of a best.pt; its settings are its checkpoint's",
        )
        g.add_argument(
            "--replot", metavar="FOLDER", help="redraw a finished test's curves.png from its summary.json; runs nothing"
        )
        g.add_argument(
            "--suite",
            metavar="FILE",
            help="run the held-out tasks of this instance set (alrs.tasks): the controller of --test-id if given, "
            "untuned defaults and per-task tuned linear and step decay, --suite-seeds seeds each",
        )
    g.add_argument("--debug", action="store_true", help="show the full traceback of an error (as ALRS_DEBUG=1)")
    return p


def parse_args(script: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Settings for ``script``: built-in defaults < the resumed or tested run's config.json <
    ``--config`` file < command-line flags. Unknown or malformed config files are one-line errors."""
    parser = build_parser(script)
    given = vars(parser.parse_args(argv))
    for key, value in given.items():
        if isinstance(value, str) and "\x00" in value:
            parser.error(f"--{key.replace('_', '-')} holds a NUL character, which no name or path may hold")
    settings = dict(DEFAULTS)
    try:
        if "resume" in given:
            settings.update(read_run_config(given["resume"]))
            changed = sorted(set(given) - RUNTIME_KEYS - {"resume", "debug"})
            if changed:
                parser.error(f"--resume continues a run with its own settings; drop --{changed[0].replace('_', '-')}")
        config_file = read_config_file(given["config"]) if "config" in given else {}
        if "test_id" in given and "controller" in given:
            parser.error("--test-id and --controller each name the controller to test; give one")
        env_keys = {key for key, s in ALL.items() if s.owner is EnvConfig} - RUNTIME_KEYS
        if "test_id" in given:
            run = resolve_run(given["test_id"], given.get("out_dir", config_file.get("out_dir", DEFAULTS["out_dir"])))
            settings.update({k: v for k, v in read_run_config(run).items() if k in env_keys})
            settings["run_dir"] = str(run)
        if "controller" in given:
            checkpoint, trained = released_checkpoint(given["controller"])
            # Its training tasks' file stays where it was trained: a suite names the tasks to test on.
            settings.update({k: v for k, v in trained.items() if k in env_keys - {"instance_set"}})
            settings["run_dir"] = str(checkpoint.parent)
        settings.update(config_file)
    except UserError as exc:
        parser.error(str(exc))
    settings.update(given)
    # The files a command was given; None: none.
    for name in ("config", "resume", "replot", "suite", "run_dir", "controller"):
        settings.setdefault(name, None)
    try:  # domains a type cannot say: the seed's range (the test seeds add up to 1000 + the seed count)
        check_seed(settings["seed"], "--seed")
        check_seed(
            settings["seed"] + TEST_SEED_OFFSET + max(settings["num_seeds"], settings["suite_seeds"]),
            f"--seed + {TEST_SEED_OFFSET} + seeds",
        )
    except UserError as exc:
        parser.error(str(exc))
    return argparse.Namespace(**settings)


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object of settings; a key that no script knows is an error naming it."""
    config = load_json(path)
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a JSON object of settings")
    for key in config:
        if key not in ALL:
            raise UserError(f"{path}: unknown setting {key!r}; known settings: {', '.join(sorted(ALL))}")
    _check_types(config, path)
    return config


def _check_types(settings: dict[str, Any], path: str | os.PathLike) -> None:
    """A one-line error naming the file and the first setting whose value has the wrong type or is not finite."""
    for key, value in settings.items():
        _, words, check = _kind(ALL[key])
        if not check(value):
            raise UserError(f"{path}: {key} = {value!r} should be {words}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{path}: {key} = {value!r} should be a finite number")
        if isinstance(value, str) and "\x00" in value:
            raise UserError(f"{path}: {key} = {value!r} holds a NUL character, which no name or path may hold")


def released_names() -> list[str]:
    """The names of the released controllers (:data:`alrs.controllers.CONTROLLERS`)."""
    from alrs.controllers import CONTROLLERS

    return list(CONTROLLERS)


def released_checkpoint(controller: str) -> tuple[Path, dict[str, Any]]:
    """The best.pt of a released controller's name or of a path, and the env settings it was trained with."""
    from alrs.controllers import controller_file
    from alrs.formats import read_controller
    from alrs.io import load_torch

    path = controller_file(controller)
    if path.name != "best.pt" or not path.is_file():
        raise UserError(
            f"--controller {controller}: give a released controller's name ({', '.join(released_names())}) or "
            "the path of a best.pt (for a run folder, --test-id)"
        )
    metadata = read_controller(load_torch(path)).get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("env"), dict):
        raise UserError(f"{path}: the controller does not record the settings it was trained with")
    return path, metadata["env"]


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The settings saved in a run folder's config.json (those this version knows)."""
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    config = load_json(path)
    if not isinstance(config, dict) or not isinstance(config.get("settings"), dict):
        raise UserError(f'{path}: not a run\'s config.json (no "settings" object)')
    settings = {k: v for k, v in config["settings"].items() if k in ALL}
    _check_types(settings, path)
    return settings


def config_of(cls: type, args: argparse.Namespace) -> Any:
    """The settings dataclass ``cls`` (EnvConfig, ParallelConfig, TrainingConfig, PPOConfig) from ``args``."""
    return cls(**{s.field.name: getattr(args, key) for key, s in ALL.items() if s.owner is cls})


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """Every known setting in ``args``, for config.json."""
    return {k: getattr(args, k) for k in ALL}
