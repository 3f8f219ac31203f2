"""What the three scripts share: arguments and config files, run folders, threads, provenance."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from alrs.env import EnvConfig
from alrs.errors import UserError
from alrs.io import load_json
from alrs.parallel import ParallelConfig
from alrs.ppo import PPOConfig
from alrs.training import CONFIG_FILE

ENV_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EnvConfig)}
PPO_DEFAULTS = {  # flag name -> PPOConfig field default; ppo_lr is PPOConfig.learning_rate
    "hidden_sizes": list(PPOConfig.hidden_sizes),
    "ppo_lr": PPOConfig.learning_rate,
    "gamma": PPOConfig.gamma,
    "gae_lambda": PPOConfig.gae_lambda,
    "clip_coef": PPOConfig.clip_coef,
    "clip_vloss": PPOConfig.clip_vloss,
    "ent_coef": PPOConfig.ent_coef,
    "vf_coef": PPOConfig.vf_coef,
    "max_grad_norm": PPOConfig.max_grad_norm,
    "update_epochs": PPOConfig.update_epochs,
    "num_minibatches": PPOConfig.num_minibatches,
    "target_kl": PPOConfig.target_kl,
    "norm_obs": PPOConfig.norm_obs,
    "norm_reward": PPOConfig.norm_reward,
    "init_log_std": PPOConfig.init_log_std,
    "common_reset_seed": PPOConfig.common_reset_seed,
}
RUN_DEFAULTS = {
    "num_envs": 4,
    "episodes": 1000,
    "seed": 0,
    "threads": None,
    "out_dir": "runs",
    "results_dir": "results",
    "num_seeds": 10,
    "progress": True,
    "run_baselines": False,
    "batched_envs": None,
    "baselines_only": False,
    "checkpoint": "best",
    "start_lr": None,
    "eval_every": 10,
    "eval_seeds": 4,
    "tensorboard": False,
    "workers": None,
    "backend": "local",
    "ray_address": None,
}
DEFAULTS: dict[str, Any] = {**ENV_DEFAULTS, **PPO_DEFAULTS, **RUN_DEFAULTS}
"""Every setting a config file may hold, with its built-in default."""

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
    "debug",
}
"""Settings a resumed run may change: where and how fast it runs, and how long it goes on."""


def _lr(text: str) -> float | str:
    return text if text == "random" else float(text)


def _add(group: argparse._ArgumentGroup, flag: str, help: str, **kwargs: Any) -> None:
    dest = flag.lstrip("-").replace("-", "_")
    default = DEFAULTS.get(dest)
    group.add_argument(flag, help=f"{help} (default: {default})" if dest in DEFAULTS else help, **kwargs)


def build_parser(script: str) -> argparse.ArgumentParser:
    """The argument parser of ``script`` (``train``, ``baselines`` or ``test``); no defaults are set
    on it, so the parsed namespace holds exactly the flags given on the command line."""
    p = argparse.ArgumentParser(
        prog=f"{script}.py",
        argument_default=argparse.SUPPRESS,
        description={
            "train": "Learn an LR controller with PPO.",
            "baselines": "Grid-search the paper's step-decay baseline.",
            "test": "Compare a learned schedule with the baselines over seeds.",
        }[script],
    )
    g = p.add_argument_group("child network and environment")
    _add(g, "--dataset", "mnist, fa-mnist or cifar10")
    _add(g, "--architecture", "mlp, lenet5 (LeNet-5; also called cnn, as in the seed), resnet (ResNet-18) or paper-cnn")
    _add(g, "--batch-size", "Adam minibatch size", type=int)
    _add(g, "--update-freq", "Adam steps per controller step", type=int)
    _add(g, "--num-train-steps", "Adam steps per episode", type=int)
    _add(g, "--initial-lr", "initial LR, or 'random' for a draw from {1e-2, 1e-3, 1e-4}", type=_lr)
    _add(
        g,
        "--discrete",
        "discrete up/down/keep actions (--no-discrete: a continuous factor)",
        action=argparse.BooleanOptionalAction,
    )
    _add(g, "--action-range", "largest LR factor of one controller step", type=float)
    _add(g, "--val-size", "validation examples used for features and reward (default: all 10k)", type=int)
    _add(g, "--data-dir", "dataset folder, torchvision layout")
    _add(g, "--device", "cpu, cuda or auto")
    _add(g, "--threads", "torch CPU threads per worker (default: the cores split among the workers)", type=int)
    _add(
        g,
        "--workers",
        "child trainings at once, in separate processes or Ray actors (default: one per two cores on the CPU, "
        "1 on CUDA)",
        type=int,
    )
    _add(g, "--backend", "where workers run: local (processes on this machine) or ray (a Ray cluster)")
    _add(
        g, "--ray-address", "Ray cluster to join with --backend ray, e.g. ray://head:10001 (default: start a local Ray)"
    )
    _add(g, "--seed", "random seed", type=int)
    _add(g, "--config", "JSON file of settings; flags override it")
    _add(g, "--progress", "show progress bars", action=argparse.BooleanOptionalAction)
    g.add_argument("--debug", action="store_true", help="show the full traceback of an error (as ALRS_DEBUG=1)")
    if script == "train":
        g.title = "child network, environment and run"
        _add(g, "--lr-noise", "std of Gaussian noise on log LR after each update", type=float)
        _add(g, "--initial-lr-noise", "std of Gaussian noise on log initial LR", type=float)
        _add(g, "--reward", "val-loss (the paper's: minus the validation loss), log-best or log-val (ours)")
        _add(g, "--lr-feature", "how the LR is observed: lr (the paper's) or log-lr (ours)")
        _add(
            g,
            "--time-feature",
            "observe the fraction of the episode left (ours)",
            action=argparse.BooleanOptionalAction,
        )
        _add(g, "--num-envs", "child trainings per PPO iteration", type=int)
        _add(
            g,
            "--eval-every",
            "PPO iterations between deterministic evaluations that choose best.pt (0: none, "
            "best.pt is the controller behind the best episode)",
            type=int,
        )
        _add(g, "--eval-seeds", "held-out seeds per deterministic evaluation", type=int)
        _add(
            g,
            "--tensorboard",
            "also write TensorBoard events under the run folder (needs: pip install tensorboard)",
            action=argparse.BooleanOptionalAction,
        )
        _add(
            g,
            "--batched-envs",
            "train the num-envs children as one vmapped model (unset: only on CUDA, where the architecture allows)",
            action=argparse.BooleanOptionalAction,
        )
        _add(g, "--episodes", "episodes to train for", type=int)
        _add(g, "--out-dir", "folder of run folders")
        _add(g, "--resume", "continue the run in this folder")
        h = p.add_argument_group("PPO")
        _add(h, "--hidden-sizes", "hidden layer widths of actor and critic", type=int, nargs="+")
        _add(h, "--ppo-lr", "Adam step size of the controller", type=float)
        for flag, kind, text in (
            ("--gamma", float, "discount"),
            ("--gae-lambda", float, "GAE lambda"),
            ("--clip-coef", float, "surrogate clip epsilon"),
            ("--ent-coef", float, "entropy bonus weight"),
            ("--vf-coef", float, "value loss weight"),
            ("--max-grad-norm", float, "gradient-norm clip"),
            ("--update-epochs", int, "epochs per update"),
            ("--num-minibatches", int, "minibatches per epoch"),
            ("--target-kl", float, "early-stop KL (default: none)"),
            ("--init-log-std", float, "initial log std (continuous)"),
        ):
            _add(h, flag, text, type=kind)
        for flag, text in (
            ("--clip-vloss", "clip the value loss"),
            ("--norm-obs", "normalize observations"),
            ("--common-reset-seed", "one child seed for every env of a PPO iteration (ours)"),
            ("--norm-reward", "scale rewards by the return's std"),
        ):
            _add(h, flag, text, action=argparse.BooleanOptionalAction)
    if script in ("baselines", "test"):
        _add(g, "--results-dir", "where results are written")
    if script == "test":
        t = p.add_argument_group("test")
        _add(t, "--test-id", "run to test: an id under --out-dir, or a run folder")
        _add(t, "--checkpoint", "which controller of the run: best (best.pt) or last (last.pt, where training ended)")
        _add(
            t,
            "--baselines-only",
            "test the best step decay and constant LR alone (no controller; settings from --config and flags)",
            action="store_true",
        )
        _add(t, "--out-dir", "folder of run folders")
        _add(t, "--num-seeds", "seeds per schedule (paper: 10)", type=int)
        _add(
            t,
            "--start-lr",
            "start the controller from this LR only (and from the tuned step decay's); default: "
            "from each initial LR it was trained on",
            type=float,
        )
        _add(t, "--run-baselines", "run baselines.py first when its results are missing", action="store_true")
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
            settings.update(
                {k: v for k, v in read_run_config(run).items() if k in ENV_DEFAULTS and k not in RUNTIME_KEYS}
            )
            settings["run_dir"] = str(run)
        settings.update(config_file)
    except UserError as exc:
        parser.error(str(exc))
    settings.update(given)
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
            raise UserError(f"{path}: {key} = {value!r} should be {_TYPE_NAMES.get(key, type(DEFAULTS[key]).__name__)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{path}: {key} = {value!r} should be a finite number")


_TYPE_NAMES = {
    "initial_lr": "a number or 'random'",
    "hidden_sizes": "a list of integers",
    "val_size": "an integer or null",
    "target_kl": "a number or null",
    "start_lr": "a number or null",
    "threads": "an integer or null",
    "workers": "an integer or null",
    "ray_address": "a string or null",
    "batched_envs": "true, false or null (automatic)",
}


def _type_ok(key: str, value: Any) -> bool:
    """Whether a config-file value has the type of its setting (ints pass for floats, bools for nothing else)."""
    number = (int, float)
    if key == "initial_lr":
        return value == "random" or (isinstance(value, number) and not isinstance(value, bool))
    if key == "hidden_sizes":
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if key in ("val_size", "threads", "workers"):
        return value is None or (isinstance(value, int) and not isinstance(value, bool))
    if key == "ray_address":
        return value is None or isinstance(value, str)
    if key == "batched_envs":
        return value is None or isinstance(value, bool)
    if key in ("target_kl", "start_lr"):
        return value is None or (isinstance(value, number) and not isinstance(value, bool))
    default = DEFAULTS[key]
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, number) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(default))


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


def resolve_run(test_id: str, out_dir: str | os.PathLike) -> Path:
    """The run folder named by ``test_id``: a path, or an id under ``out_dir``; else an error listing the runs."""
    for candidate in (Path(test_id), Path(out_dir) / test_id):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    runs = sorted(p.parent.name for p in Path(out_dir).glob(f"*/{CONFIG_FILE}"))
    listing = ", ".join(runs) if runs else "none"
    raise UserError(
        f"no run {test_id!r} (looked for {test_id} and {Path(out_dir) / test_id}); runs in {out_dir}: {listing}"
    )


def env_config(args: argparse.Namespace) -> EnvConfig:
    """The environment settings in ``args``."""
    return EnvConfig(**{k: getattr(args, k) for k in ENV_DEFAULTS})


def parallel_config(args: argparse.Namespace) -> ParallelConfig:
    """Where the work of ``args`` runs."""
    return ParallelConfig(
        workers=args.workers, backend=args.backend, ray_address=args.ray_address, threads=args.threads
    )


def ppo_config(args: argparse.Namespace, num_steps: int) -> PPOConfig:
    """The PPO settings in ``args``; a rollout is one episode of ``num_steps`` controller steps."""
    values = {k: getattr(args, k) for k in PPO_DEFAULTS if k != "ppo_lr"}
    return PPOConfig(learning_rate=args.ppo_lr, num_steps=num_steps, **values)


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


def new_run_dir(out_dir: str | os.PathLike, args: argparse.Namespace) -> Path:
    """A fresh folder ``<out_dir>/<dataset>_<architecture>_s<seed>_<time>``; an ``out_dir`` that is a
    file or cannot be written is a one-line error."""
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UserError(f"--out-dir {out_dir} is a file, not a folder; name a folder")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(out_dir) / f"{args.dataset}_{args.architecture}_s{args.seed}_{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def set_threads(threads: int | None) -> None:
    """Set torch's CPU threads; None keeps torch's choice (one per physical core)."""
    if threads is not None:
        if threads <= 0:
            raise UserError(f"--threads must be positive, got {threads}")
        torch.set_num_threads(threads)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def run_script(main: Callable[[], int | None]) -> None:
    """Run a script's main: a :class:`~alrs.errors.UserError` prints as one line ``error: ...`` (exit 2);
    Ctrl-C exits with 130. ``ALRS_DEBUG=1`` or ``--debug`` shows the traceback instead. SIGTERM exits
    with 143 through the same cleanup as Ctrl-C (worker processes and a local Ray are stopped)."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    debug = bool(os.environ.get("ALRS_DEBUG")) or "--debug" in sys.argv[1:]
    name = Path(sys.argv[0]).name
    try:
        sys.exit(main())
    except UserError as exc:
        if debug:
            raise
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\n{name}: interrupted", file=sys.stderr)
        sys.exit(130)
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
