"""How much an LR-environment step costs next to the child's own training.

Measures, in one run and interleaved round by round (these machines are shared and noisy):
  (a) env    seconds per controller step of alrs' LREnv (update_freq Adam steps + features);
  (b) floor  a bare loop: the same network, Adam at the same batch size, the same validation
             split evaluated as often; no features, no controller;
  (c) naive  the seed's pipeline: a torchvision-style dataset with a per-sample ToTensor
             transform, DataLoader batches, a full validation pass through a DataLoader,
             deep copies of the predictions.
  (d) batched  --num-envs children trained as one vmapped model (alrs.vector_env.BatchedLREnv),
             seconds per controller step of all of them; reported as the speed-up over stepping
             them one by one, num_envs * a / d (meant for a GPU; architectures without batch norm).
Prints c/a and a/b (targets: c/a >= 3.5, a/b <= 1.10) as JSON and as a table, with each
variant's peak memory (each runs in its own process).

    python benchmarks/env_speed.py                              # LeNet-5 on Fashion-MNIST
    python benchmarks/env_speed.py --architecture mlp
    python benchmarks/env_speed.py --dataset cifar10 --architecture resnet --steps 2 --rounds 1 --variants env
    python benchmarks/env_speed.py --device cuda --variants env batched floor naive
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
import torch.nn.functional as F

from alrs.config import EnvConfig
from alrs.data import DATASETS, NUM_VAL, DatasetError, Splits, load_dataset
from alrs.env import LREnv, resolve_device
from alrs.models import ARCHITECTURES, build_model
from alrs.vector_env import BatchedLREnv

TRAIN_SIZES = {"mnist": 50_000, "fa-mnist": 50_000, "cifar10": 40_000}


def get_data(args: argparse.Namespace) -> tuple[Splits, str]:
    """The real dataset where present, else random data of the same shapes and sizes."""
    try:
        return load_dataset(args.dataset, args.data_dir, download=False), "real"
    except DatasetError:
        g = torch.Generator().manual_seed(0)
        shape = DATASETS[args.dataset].image_shape
        n = {"train": TRAIN_SIZES[args.dataset], "val": NUM_VAL, "test": 10_000}
        parts = [
            t
            for split in n.values()
            for t in (torch.rand(split, *shape, generator=g), torch.randint(0, 10, (split,), generator=g))
        ]
        return Splits(*parts), "generated"


def _env_config(args: argparse.Namespace) -> EnvConfig:
    """The env the benchmark steps: the chosen child and batch, episodes too long to end while timed."""
    return EnvConfig(
        dataset=args.dataset,
        architecture=args.architecture,
        batch_size=args.batch_size,
        update_freq=args.update_freq,
        num_train_steps=10_000 * args.update_freq,
        device=args.device,
    )


def env_step_time(args: argparse.Namespace, data: Splits) -> float:
    """(a) seconds per controller step of the project's environment."""
    env = LREnv(_env_config(args), data=data)
    env.reset(seed=0)
    return _time(lambda: env.step(2), args, env.device)


def batched_step_time(args: argparse.Namespace, data: Splits) -> float:
    """(d) seconds per controller step of ``num_envs`` children trained as one batched model."""
    envs = BatchedLREnv(_env_config(args), args.num_envs, data=data)
    envs.reset(seed=0)
    keep = np.full(args.num_envs, 2)
    return _time(lambda: envs.step(keep), args, envs.device)


def floor_step_time(args: argparse.Namespace, data: Splits) -> float:
    """(b) a bare training loop with validation as often, in the fastest layout the env also uses."""
    device = resolve_device(args.device)
    data = data.to(device)
    memory_format = (
        torch.channels_last if device.type == "cpu" and args.architecture != "mlp" else torch.contiguous_format
    )
    model = build_model(args.architecture, args.dataset).to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def one_step() -> None:
        model.train()
        for _ in range(args.update_freq):
            idx = torch.randint(0, len(data.train_x), (args.batch_size,), device=device)
            loss = F.cross_entropy(model(data.train_x[idx].contiguous(memory_format=memory_format)), data.train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(data.val_x), 500):
                model(data.val_x[start : start + 500].contiguous(memory_format=memory_format))

    return _time(one_step, args, device)


class NaiveDataset(torch.utils.data.Dataset):
    """What torchvision's MNIST/CIFAR10 classes do per sample: uint8 array -> PIL image -> ToTensor."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        from torchvision import transforms

        self.images = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).squeeze(-1).numpy()
        self.labels = y.tolist()
        self.transform = transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def naive_step_time(args: argparse.Namespace, data: Splits) -> float:
    """(c) the seed's pipeline: DataLoader batches, a DataLoader validation pass, copied predictions."""
    device = resolve_device(args.device)
    model = build_model(args.architecture, args.dataset).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train = torch.utils.data.DataLoader(
        NaiveDataset(data.train_x, data.train_y), batch_size=args.batch_size, shuffle=True, drop_last=True
    )
    val = torch.utils.data.DataLoader(NaiveDataset(data.val_x, data.val_y), batch_size=args.batch_size)
    batches = iter(train)
    state = {"previous": None}

    def one_step() -> None:
        nonlocal batches
        model.train()
        losses = []
        for _ in range(args.update_freq):
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(train)
                x, y = next(batches)
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        model.eval()
        predictions, val_losses = [], []
        with torch.no_grad():
            for x, y in val:
                logits = model(x.to(device))
                val_losses.append(F.cross_entropy(logits, y.to(device)).item())
                predictions.append(copy.deepcopy(logits.softmax(1).cpu()))
        predictions = torch.cat(predictions)
        change = predictions - state["previous"] if state["previous"] is not None else torch.zeros_like(predictions)
        state["previous"] = copy.deepcopy(predictions)
        w = model.output_layer.weight
        [
            np.mean(losses),
            np.mean(val_losses),
            predictions.var().item(),
            change.var().item(),
            w.mean().item(),
            w.var().item(),
        ]

    return _time(one_step, args, device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, args: argparse.Namespace, device: torch.device) -> float:
    for _ in range(args.warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / args.steps


VARIANTS = {"env": env_step_time, "floor": floor_step_time, "naive": naive_step_time, "batched": batched_step_time}


def _child(name: str, args: argparse.Namespace, queue: mp.Queue) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    data, _ = get_data(args)
    seconds = VARIANTS[name](args, data)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    queue.put((seconds, peak_mb, gpu_mb))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fa-mnist", choices=list(DATASETS))
    p.add_argument("--architecture", default="cnn", choices=list(ARCHITECTURES))
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--update-freq", type=int, default=10)
    p.add_argument("--steps", type=int, default=5, help="timed controller steps per round")
    p.add_argument("--warmup", type=int, default=1, help="untimed controller steps first")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    p.add_argument("--variants", nargs="+", default=["env", "floor", "naive"], choices=list(VARIANTS))
    p.add_argument("--num-envs", type=int, default=4, help="children of the batched variant")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()

    ctx = mp.get_context("spawn")
    times: dict[str, list[float]] = {v: [] for v in args.variants}
    memory: dict[str, tuple[float, float | None]] = {}
    for _ in range(args.rounds):
        for name in args.variants:
            queue = ctx.Queue()
            proc = ctx.Process(target=_child, args=(name, args, queue))
            proc.start()
            while proc.is_alive() and queue.empty():
                proc.join(timeout=1)
            if queue.empty():
                sys.exit(f"the {name} measurement failed (exit code {proc.exitcode}); its error is above")
            seconds, peak_mb, gpu_mb = queue.get()
            proc.join()
            times[name].append(seconds)
            memory[name] = (max(peak_mb, memory.get(name, (0, None))[0]), gpu_mb)
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "dataset": args.dataset,
        "architecture": args.architecture,
        "data": get_data(args)[1],
        "device": args.device,
        "threads": args.threads or torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "batch_size": args.batch_size,
        "update_freq": args.update_freq,
        "steps": args.steps,
        "rounds": args.rounds,
        "num_envs": args.num_envs,
        "seconds_per_controller_step": median,
        "all_rounds": times,
        "peak_rss_mb": {k: round(v[0]) for k, v in memory.items()},
        "peak_gpu_mb": {k: v[1] and round(v[1]) for k, v in memory.items()},
    }
    if "env" in median and "naive" in median:
        result["naive_over_env"] = median["naive"] / median["env"]
    if "env" in median and "floor" in median:
        result["env_over_floor"] = median["env"] / median["floor"]
    if "env" in median and "batched" in median:
        result["batched_speedup"] = args.num_envs * median["env"] / median["batched"]
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\n{args.dataset} / {args.architecture}, batch {args.batch_size}, "
        f"{args.update_freq} Adam steps per controller step, "
        f"{result['data']} data, {result['threads']} threads, median of {args.rounds} rounds"
    )
    for name in args.variants:
        print(f"  {name:<6} {median[name]:8.3f} s per controller step   peak RSS {result['peak_rss_mb'][name]:6d} MB")
    if "naive_over_env" in result:
        print(f"  naive / env  = {result['naive_over_env']:.2f}   (target >= 3.5)")
    if "env_over_floor" in result:
        print(f"  env / floor  = {result['env_over_floor']:.2f}   (target <= 1.10)")
    if "batched_speedup" in result:
        print(
            f"  {args.num_envs} x env / batched = {result['batched_speedup']:.2f}   "
            f"(speed-up of one batched model of {args.num_envs} children)"
        )


if __name__ == "__main__":
    main()
