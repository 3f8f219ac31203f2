"""What the learned scheduler adds to a user's training loop that already validates every ``update_freq`` steps.

Times, in one process, interleaved round by round (these machines are shared and noisy), three loops
over the same batches from the same initial weights, each validating at step 0 and after every
``update_freq`` steps and logging the validation loss and accuracy:

- ``adam``: the user's Adam loop, its own validation pass and logging;
- ``learned``: the same with ``LearnedLRScheduler``, which calls the same validation (``evaluate=``) and
  whose ``last_validation`` the loop logs: no second pass;
- ``schedulefree``: Schedule-Free AdamW (lr 1e-2, 10 warm-up steps), validating between ``eval()`` and ``train()``.

The figures to read are the ratios to ``adam`` within each round, and their medians; and, measured inside
each ``learned`` run and so free of the noise between runs, the share of its time spent in the scheduler
(its constructor and ``step()``) apart from the model's validation pass, which the user's loop makes too.
Prints the figures and, with ``--json``, writes them.

    python benchmarks/scheduler_overhead.py --rounds 5 --json results/benchmarks/scheduler_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import schedulefree
import torch
import torch.nn.functional as F

from alrs.data import DATASETS, DatasetError, load_dataset
from alrs.models import build_model
from alrs.scheduler import LearnedLRScheduler

FIELDS = ("architecture", "controller", "batch_size", "steps", "update_freq", "lr", "val_size")
SETTINGS = {
    "mlp-quick": ("mlp", "quick-mlp", 500, 200, 10, 1e-2, 1000),  # the quick-mlp controller's own setting
    "cnn": ("cnn", "generalist", 500, 200, 10, 1e-3, 1000),  # the small CNN, a held-out task of the generalist
}
VARIANTS = ("adam", "learned", "schedulefree")


def get_data(data_dir: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """Fashion-MNIST's train and validation splits where present, else random data of the same shapes."""
    try:
        data = load_dataset("fa-mnist", data_dir, download=False)
        return data.train_x, data.train_y, data.val_x, data.val_y, "real"
    except DatasetError:
        g = torch.Generator().manual_seed(0)
        shape = DATASETS["fa-mnist"].image_shape
        train_x, val_x = torch.rand(50_000, *shape, generator=g), torch.rand(10_000, *shape, generator=g)
        train_y, val_y = torch.randint(0, 10, (50_000,), generator=g), torch.randint(0, 10, (10_000,), generator=g)
        return train_x, train_y, val_x, val_y, "generated"


def run_loop(variant: str, setting: tuple, data: tuple, seed: int) -> tuple[float, float, list[tuple[float, float]]]:
    """One training run of ``variant``: its wall time, the seconds spent in the scheduler apart from the model's
    validation pass (0 without one), and the (loss, accuracy) it logged at each validation."""
    architecture, controller, batch_size, steps, update_freq, lr, val_size = setting
    train_x, train_y, val_x, val_y = data
    val_x, val_y = val_x[:val_size], val_y[:val_size]
    torch.manual_seed(seed)
    model = build_model(architecture, "fa-mnist")
    batches = torch.randint(len(train_x), (steps, batch_size), generator=torch.Generator().manual_seed(seed))
    logged: list[tuple[float, float]] = []
    in_pass = [0.0]  # seconds in the validation pass

    def logits() -> torch.Tensor:
        begin = time.perf_counter()
        model.eval()
        with torch.no_grad():
            out = model(val_x)
        model.train()
        in_pass[0] += time.perf_counter() - begin
        return out

    def validate() -> None:  # the user's own validation and logging
        out = logits()
        logged.append((F.cross_entropy(out, val_y).item(), (out.argmax(1) == val_y).float().mean().item()))

    start = time.perf_counter()
    in_scheduler = 0.0  # seconds in its constructor and step(), the validation pass included
    scheduler: LearnedLRScheduler | None = None
    if variant == "schedulefree":
        optimizer: torch.optim.Optimizer = schedulefree.AdamWScheduleFree(model.parameters(), lr=lr, warmup_steps=10)
        optimizer.train()
        evaluate: Callable[[], None] = lambda: (optimizer.eval(), validate(), optimizer.train())  # noqa: E731
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        evaluate = validate
    if variant == "learned":
        scheduler = LearnedLRScheduler(
            optimizer,
            controller,
            model.output_layer,
            update_freq,
            num_train_steps=steps,
            evaluate=lambda: (logits(), val_y),
        )
        in_scheduler = time.perf_counter() - start
        evaluate = lambda: logged.append((scheduler.last_validation.loss, scheduler.last_validation.accuracy))  # noqa: E731
    evaluate()
    for step in range(1, steps + 1):
        idx = batches[step - 1]
        loss = F.cross_entropy(model(train_x[idx]), train_y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            begin = time.perf_counter()
            scheduler.step(loss)
            in_scheduler += time.perf_counter() - begin
        if step % update_freq == 0:
            evaluate()
    own = in_scheduler - in_pass[0] if scheduler is not None else 0.0
    return time.perf_counter() - start, own, logged


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (each runs every variant once)")
    p.add_argument("--steps", type=int, help="optimizer steps per run (default: the setting's, 200)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (a user's laptop loop: 1)")
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train_x, train_y, val_x, val_y, source = get_data(args.data_dir)
    data = (train_x, train_y, val_x, val_y)
    figures: dict = {}
    for name in args.settings:
        setting = SETTINGS[name]
        if args.steps:
            setting = (*setting[:3], args.steps, *setting[4:])
        run_loop("learned", setting, data, seed=0)  # warm-up: first calls, allocations
        seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
        own: list[float] = []  # the scheduler's own share of the learned loop's time
        for r in range(args.rounds):
            order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]  # each variant in each position in turn
            for variant in order:
                elapsed, in_scheduler, logged = run_loop(variant, setting, data, seed=r)
                assert len(logged) == setting[3] // setting[4] + 1, (variant, len(logged))
                seconds[variant].append(elapsed)
                if variant == "learned":
                    own.append(in_scheduler / elapsed)
        ratios = {
            f"{v}_over_adam": [a / b for a, b in zip(seconds[v], seconds["adam"], strict=True)] for v in VARIANTS[1:]
        }
        figures[name] = {
            "setting": dict(zip(FIELDS, setting, strict=True)),
            "seconds": seconds,
            "median_seconds": {v: statistics.median(s) for v, s in seconds.items()},
            "ratios_per_round": ratios,
            "median_ratio": {k: statistics.median(r) for k, r in ratios.items()},
            "scheduler_share_of_learned_loop": own,
            "median_scheduler_share": statistics.median(own),
        }
        print(f"{name}: median seconds " + ", ".join(f"{v} {statistics.median(s):.2f}" for v, s in seconds.items()))
        print(f"{name}: median ratio " + ", ".join(f"{k} {statistics.median(r):.4f}" for k, r in ratios.items()))
        print(f"{name}: the scheduler's own share of the learned loop (median) {statistics.median(own):.4f}")
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        meta = {
            "command": " ".join(["python", *sys.argv]),
            "commit": commit,
            "machine": f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)",
            "data": source,
            "rounds": args.rounds,
        }
        Path(args.json).write_text(json.dumps({**meta, "settings": figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
