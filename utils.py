"""What the three scripts share: arguments and config files, run folders, threads, provenance."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import platform
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alrs.env import EnvConfig, check_seed
from alrs.errors import UserError
from alrs.io import load_json
from alrs.parallel import ParallelConfig
from alrs.ppo import PPOConfig
from alrs.runfolder import CONFIG_FILE, resolve_run
from alrs.training import TrainingConfig


@dataclass(frozen=True)
class RunConfig:
    """The settings of a script's run that are neither the environment's, PPO's nor where work runs.

    Args:
        seed: random seed (training: the controller and every reset; tests: seed + 1000 + i).
        out_dir: folder of run folders.
        results_dir: where results are written.
        num_seeds: seeds per schedule (paper: 10).
        suite_seeds: seeds per schedule and held-out task in test.py --suite (ours).
        checkpoint: which controller of the run: best (best.pt), last (last.pt, where training ended)
            or iter-N (the controller evaluated after iteration N, kept in the run's evals/).
        policy: how the controller acts in the test: mode (its most likely action, as in the training's
            evaluations) or sample (actions drawn as in training, seeded by the test seed; results go to
            a folder ending in _sample).
        start_lr: start the controller from this LR only (and from the tuned step decay's); unset: from
            each initial LR it was trained on.
        baselines_only: test the tuned baselines alone (no controller; settings from --config and flags).
        run_baselines: run baselines.py first when its results are missing.
        reuse_baselines: an earlier test's result folder whose runs of the hand-made schedules are copied
            instead of rerun, where its child settings agree (ours; exact only when it ran on the same
            device and torch threads).
        progress: show progress bars.
    """

    seed: int = 0
    out_dir: str = field(default="runs", metadata={"scripts": ("train", "test")})
    results_dir: str = field(default="results", metadata={"scripts": ("baselines", "test")})
    num_seeds: int = field(default=10, metadata={"scripts": ("test",)})
    suite_seeds: int = field(default=5, metadata={"scripts": ("test",)})
    checkpoint: str = field(default="best", metadata={"scripts": ("test",)})
    policy: str = field(default="mode", metadata={"scripts": ("test",)})
    start_lr: float | None = field(default=None, metadata={"scripts": ("test",)})
    baselines_only: bool = field(default=False, metadata={"scripts": ("test",)})
    run_baselines: bool = field(default=False, metadata={"scripts": ("test",)})
    reuse_baselines: str | None = field(default=None, metadata={"scripts": ("test",)})
    progress: bool = True


FLAG_NAMES = {"learning_rate": "ppo_lr"}
"""Settings whose flag and config key differ from their field's name (PPO's Adam step size is
``--ppo-lr``, apart from the child's learning rate)."""

SETTINGS: tuple[tuple[str, type, tuple[str, ...]], ...] = (
    ("child network and environment", EnvConfig, ("train", "baselines", "test")),
    ("where the work runs", ParallelConfig, ("train", "baselines", "test")),
    ("run", RunConfig, ("train", "baselines", "test")),
    ("training", TrainingConfig, ("train",)),
    ("PPO", PPOConfig, ("train",)),
)
"""Every setting is a field of one of these dataclasses: its flag, help, default and type checks
come from the field and the class's docstring (the one declaration of a setting)."""

NOT_SETTINGS = {"num_steps"}
"""Fields that are not settings: PPO's rollout length is the episode's controller steps."""


def _docs(cls: type) -> dict[str, str]:
    """``name: text`` entries of the docstring's Args section (continuation lines joined; ``a, b: text`` gives both)."""
    docs: dict[str, str] = {}
    names: list[str] = []
    in_args = False
    for line in (cls.__doc__ or "").splitlines():
        stripped = line.strip()
        if stripped == "Args:":
            in_args = True
        elif in_args and stripped and ":" in stripped and line.startswith(" " * 8) and not line.startswith(" " * 12):
            head, _, text = stripped.partition(":")
            names = [n.strip() for n in head.split(",")]
            for n in names:
                docs[n] = text.strip()
        elif in_args and stripped and names:
            for n in names:
                docs[n] += " " + stripped
    # Plain text for --help: ``x`` -> x, :mod:`a.b` -> a.b
    return {k: re.sub(r":\w+:`~?([^`]+)`", r"\1", v).replace("``", "") for k, v in docs.items()}


def _fields() -> list[tuple[str, str, dataclasses.Field, str, tuple[str, ...]]]:
    """(key, group, field, help, scripts) of every setting."""
    out = []
    for group, cls, scripts in SETTINGS:
        docs = _docs(cls)
        for f in dataclasses.fields(cls):
            if f.name in NOT_SETTINGS:
                continue
            out.append(
                (FLAG_NAMES.get(f.name, f.name), group, f, docs.get(f.name, ""), f.metadata.get("scripts", scripts))
            )
    return out


def _default(f: dataclasses.Field) -> Any:
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    return list(value) if isinstance(value, tuple) else value


FIELDS = {key: f for key, _, f, _, _ in _fields()}
DEFAULTS: dict[str, Any] = {key: _default(f) for key, f in FIELDS.items()}
"""Every setting a config file may hold, with its built-in default."""

ENV_KEYS = {f.name for f in dataclasses.fields(EnvConfig)}

RUNTIME_KEYS = {
    "episodes",
    "device",
    "threads",
    "data_dir",
    "progress",
    "out_dir",
    "results_dir",
    "batched_envs",
    "tensorboard",
    "workers",
    "backend",
    "ray_address",
    "max_worker_restarts",
    "debug",
}
"""Settings a resumed run may change: where and how fast it runs, and how long it goes on."""

_KINDS = {
    # annotation -> (argparse keywords, the type a config file must give, in words)
    "int": ({"type": int}, "int"),
    "float": ({"type": float}, "float"),
    "str": ({}, "str"),
    "bool": ({"action": argparse.BooleanOptionalAction}, "bool"),
    "int | None": ({"type": int}, "an integer or null"),
    "float | None": ({"type": float}, "a number or null"),
    "str | None": ({}, "a string or null"),
    "bool | None": ({"action": argparse.BooleanOptionalAction}, "true, false or null (automatic)"),
    "float | str": ({"type": lambda text: text if text == "random" else float(text)}, "a number or 'random'"),
    "tuple[int, ...]": ({"type": int, "nargs": "+"}, "a list of integers"),
}


def build_parser(script: str) -> argparse.ArgumentParser:
    """The argument parser of ``script`` (``train``, ``baselines`` or ``test``): one flag per setting,
    generated from the settings' dataclasses; no defaults are set on it, so the parsed namespace
    holds exactly the flags given on the command line."""
    p = argparse.ArgumentParser(
        prog=f"{script}.py",
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
        description={
            "train": "Learn an LR controller with PPO.",
            "baselines": "Grid-search the paper's step-decay baseline.",
            "test": "Compare a learned schedule with the baselines over seeds.",
        }[script],
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for key, group, f, text, scripts in _fields():
        if script not in scripts:
            continue
        if group not in groups:
            groups[group] = p.add_argument_group(group)
        kwargs, _ = _KINDS[str(f.type)]
        default = DEFAULTS[key]
        groups[group].add_argument(
            f"--{key.replace('_', '-')}", help=f"{text} (default: {default})".replace("%", "%%"), **kwargs
        )
    g = p.add_argument_group("files")
    g.add_argument("--config", help="JSON file of settings; flags override it")
    if script == "train":
        g.add_argument("--resume", help="continue the run in this folder")
    if script == "test":
        g.add_argument("--test-id", help="run to test: an id under --out-dir, or a run folder")
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
    settings = dict(DEFAULTS)
    try:
        if "resume" in given:
            settings.update(read_run_config(given["resume"]))
            changed = sorted(set(given) - RUNTIME_KEYS - {"resume"})
            if changed:
                parser.error(f"--resume continues a run with its own settings; drop --{changed[0].replace('_', '-')}")
        config_file = read_config_file(given["config"]) if "config" in given else {}
        if "test_id" in given:
            run = resolve_run(given["test_id"], given.get("out_dir", config_file.get("out_dir", DEFAULTS["out_dir"])))
            settings.update({k: v for k, v in read_run_config(run).items() if k in ENV_KEYS and k not in RUNTIME_KEYS})
            settings["run_dir"] = str(run)
        settings.update(config_file)
    except UserError as exc:
        parser.error(str(exc))
    settings.update(given)
    try:  # domains a type cannot say: the seed's range (the test seeds add up to 1000 + the seed count)
        check_seed(settings["seed"], "--seed")
        check_seed(
            settings["seed"] + 1000 + max(settings["num_seeds"], settings["suite_seeds"]), "--seed + 1000 + seeds"
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
        if key not in DEFAULTS:
            raise UserError(f"{path}: unknown setting {key!r}; known settings: {', '.join(sorted(DEFAULTS))}")
    _check_types(config, path)
    return config


def _check_types(settings: dict[str, Any], path: str | os.PathLike) -> None:
    """A one-line error naming the file and the first setting whose value has the wrong type or is not finite."""
    for key, value in settings.items():
        if not _type_ok(key, value):
            raise UserError(f"{path}: {key} = {value!r} should be {_KINDS[str(FIELDS[key].type)][1]}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{path}: {key} = {value!r} should be a finite number")


def _type_ok(key: str, value: Any) -> bool:
    """Whether a config-file value has its setting's type (ints pass for floats, bools for nothing else)."""
    kind = str(FIELDS[key].type)
    if value is None:
        return kind.endswith("| None")
    if isinstance(value, bool):
        return kind.startswith("bool")
    number = isinstance(value, (int, float))
    return {
        "int": isinstance(value, int),
        "float": number,
        "str": isinstance(value, str),
        "float | str": number or value == "random",
        "tuple[int, ...]": isinstance(value, list)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value),
    }.get(kind.removesuffix(" | None"), False)


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The settings saved in a run folder's config.json."""
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    config = load_json(path)
    if not isinstance(config, dict) or not isinstance(config.get("settings"), dict):
        raise UserError(f'{path}: not a run\'s config.json (no "settings" object)')
    settings = {k: v for k, v in config["settings"].items() if k in DEFAULTS}
    _check_types(settings, path)
    return settings


def env_config(args: argparse.Namespace) -> EnvConfig:
    """The environment settings in ``args``."""
    return EnvConfig(**{k: getattr(args, k) for k in ENV_KEYS})


def parallel_config(args: argparse.Namespace) -> ParallelConfig:
    """Where the work of ``args`` runs."""
    return ParallelConfig(
        workers=args.workers,
        backend=args.backend,
        ray_address=args.ray_address,
        threads=args.threads,
        max_worker_restarts=args.max_worker_restarts,
    )


def ppo_config(args: argparse.Namespace, num_steps: int) -> PPOConfig:
    """The PPO settings in ``args``; a rollout is one episode of ``num_steps`` controller steps."""
    values = {
        f.name: getattr(args, FLAG_NAMES.get(f.name, f.name))
        for f in dataclasses.fields(PPOConfig)
        if f.name not in NOT_SETTINGS
    }
    return PPOConfig(num_steps=num_steps, **values)


def training_config(args: argparse.Namespace) -> TrainingConfig:
    """How long the training of ``args`` runs, and how it chooses best.pt and reports."""
    return TrainingConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingConfig)})


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """Every known setting in ``args``, for config.json."""
    return {k: getattr(args, k) for k in DEFAULTS}


def provenance() -> dict[str, Any]:
    """Git commit, library versions and machine, for the record of a run."""
    import gymnasium
    import numpy
    import torchvision

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    return {
        "git_commit": commit + ("-dirty" if dirty else ""),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "gymnasium": gymnasium.__version__,
            "numpy": numpy.__version__,
        },
        "machine": {
            "cpus": os.cpu_count(),
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
            "lower --batch-size, --val-size, --hidden-sizes, --num-envs or --workers",
            file=sys.stderr,
        )
        sys.exit(1)
    except OSError as exc:  # the file system's answer: a read-only folder, a full disk, a path that is a file
        if debug or exc.filename is None:
            raise
        print(f"{name}: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(1)
