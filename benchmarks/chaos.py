"""Chaos soak: an instance-set training on 2 local workers, its workers and its driver killed at random.

For ``--minutes`` the driver (``train.py``) trains; every ``--worker-kills-every LO HI`` seconds one of
its worker processes is killed with SIGKILL (as the OOM killer does), and at ``--driver-kills`` random
times (each once the driver has finished an iteration since its start; the soak runs on past ``--minutes``
until all have happened) the driver itself is killed with SIGKILL and resumed (``--resume``). Then the
run is resumed for one more iteration, undisturbed, and an undisturbed run of the same seed and episodes
is trained. The soak passes when every episode is recorded exactly once (metrics.csv numbers 1..N), each
episode's figures and the final controller equal the undisturbed run's, the driver was killed as often as
asked, and no output holds a traceback. Prints the figures and writes them to ``<out>/chaos.json``;
exits 1 where the soak failed.

    python benchmarks/chaos.py --minutes 20 --out chaos --data-dir data                # the long soak
    python benchmarks/chaos.py --minutes 1.2 --worker-kills-every 15 30 --out /tmp/c   # a short one
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from alrs.io import load_torch  # noqa: E402

SMALL_SET = {
    "decisions": 4,
    "train": {
        "sample": {
            "seed": 0,
            "count": 6,
            "dataset": ["fa-mnist:14x14", "fa-mnist:classes=0-4:14x14"],
            "architecture": ["mlp:16", "convnet:4:fc8"],
            "batch_size": 16,
            "num_train_steps": [8, 16],
            "initial_lr": [0.001, 0.01],
            "val_size": 100,
        }
    },
    "heldout": {"tasks": []},
}
"""The default instance set: cheap children of Fashion-MNIST variants (seconds per PPO iteration)."""

COMPARED = ("episode", "iteration", "env", "return", "final_val_loss", "best_val_loss", "final_lr", "initial_lr")
"""metrics.csv's columns that an undisturbed run must reproduce (not the wall time)."""


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=20.0, help="how long the workers and the driver are killed")
    p.add_argument("--out", type=Path, required=True, help="folder of the soak's runs, logs and chaos.json")
    p.add_argument("--data-dir", default="data", help="where Fashion-MNIST is (or is downloaded to)")
    p.add_argument("--instance-set", help="the instance set to train on (default: a small one of its own)")
    p.add_argument("--seed", type=int, default=0, help="the training's seed and the chaos's")
    p.add_argument("--num-envs", type=int, default=4, help="children per PPO iteration")
    p.add_argument(
        "--worker-kills-every", type=float, nargs=2, default=(60.0, 180.0), metavar=("LO", "HI"), help="seconds"
    )
    p.add_argument("--driver-kills", type=int, default=2, help="times the driver is killed and resumed")
    return p.parse_args()


def train(log: Path, *flags: str) -> subprocess.Popen:
    """``train.py <flags>`` in the background, its output appended to ``log``."""
    with open(log, "a") as f:
        return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *flags], cwd=ROOT, stdout=f, stderr=f)


def workers_of(driver: subprocess.Popen) -> list[int]:
    """The PIDs of the driver's worker processes."""
    ps = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(driver.pid)], capture_output=True, text=True)
    return [int(line.split()[0]) for line in ps.stdout.splitlines() if "spawn_main" in line]


def episodes_done(run: Path) -> int:
    return load_torch(run / "last.pt")["progress"]["episodes_done"]


def rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def main() -> int:
    args = parse()
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    instance_set = args.instance_set
    if instance_set is None:
        instance_set = str(args.out / "instance-set.json")
        Path(instance_set).write_text(json.dumps(SMALL_SET, indent=1))
    flags = [
        *("--instance-set", instance_set, "--data-dir", args.data_dir, "--device", "cpu"),
        *("--num-envs", str(args.num_envs), "--workers", "2", "--threads", "1", "--eval-every", "0"),
        *("--seed", str(args.seed), "--max-worker-restarts", "1000", "--no-progress"),
    ]
    log, out = args.out / "chaos.log", args.out / "chaos"
    log.unlink(missing_ok=True)
    start = time.time()
    end = start + args.minutes * 60
    driver_kills = sorted(start + rng.uniform(0.15, 0.85) * (end - start) for _ in range(args.driver_kills))
    next_worker_kill = start + rng.uniform(*args.worker_kills_every)
    figures: dict[str, Any] = {"worker_kills": 0, "driver_kills": 0, "resumes": 0, "unexpected_exits": []}
    driver, since = train(log, *flags, "--episodes", "1000000000", "--out-dir", str(out)), time.time()
    run: Path | None = None
    # The soak lasts --minutes, and longer where the driver has yet to be killed as often as asked (a slow
    # machine may not finish an iteration between two kills in time), up to a limit that fails it.
    limit = end + max(600.0, 2 * (end - start))
    while time.time() < end or (driver_kills and time.time() < limit):
        time.sleep(0.2)
        runs = [p for p in out.glob("*") if p.is_dir()] if out.exists() else []
        run = runs[0] if runs else None
        started = run is not None and (run / "last.pt").exists()
        progressed = started and (run / "last.pt").stat().st_mtime > since  # an iteration since its (re)start
        if driver.poll() is not None:  # it should never end by itself: note it and resume
            figures["unexpected_exits"].append(driver.returncode)
            if not started:
                break
            driver, since = train(log, "--resume", str(run)), time.time()
            figures["resumes"] += 1
        elif progressed and driver_kills and time.time() >= driver_kills[0]:
            driver_kills.pop(0)
            driver.kill()
            driver.wait()
            figures["driver_kills"] += 1
            time.sleep(1.0)  # its workers notice and exit
            driver, since = train(log, "--resume", str(run)), time.time()
            figures["resumes"] += 1
        elif time.time() >= next_worker_kill and (pids := workers_of(driver)):
            os.kill(rng.choice(pids), signal.SIGKILL)
            figures["worker_kills"] += 1
            next_worker_kill = time.time() + rng.uniform(*args.worker_kills_every)
    driver.send_signal(signal.SIGTERM)  # the chaos ends: stop cleanly, keep the last finished iteration
    driver.wait()
    if run is None or not (run / "last.pt").exists():
        print("the run never finished an iteration: soak too short", file=sys.stderr)
        return 1
    episodes = episodes_done(run) + args.num_envs  # one more iteration, undisturbed
    final = train(log, "--resume", str(run), "--episodes", str(episodes))
    figures["final_resume_exit"] = final.wait()
    chaos_seconds = time.time() - start
    reference = train(
        args.out / "reference.log", *flags, "--episodes", str(episodes), "--out-dir", str(args.out / "ref")
    )
    figures["reference_exit"] = reference.wait()
    (ref,) = [p for p in (args.out / "ref").iterdir() if p.is_dir()]
    ours, theirs = rows(run), rows(ref)
    controller = [load_torch(p / "last.pt")["controller"]["state_dict"] for p in (run, ref)]
    text = log.read_text() + (args.out / "reference.log").read_text()
    figures.update(
        command=" ".join(sys.argv),
        minutes=args.minutes,
        chaos_seconds=round(chaos_seconds, 1),
        episodes=episodes,
        recorded=len(ours),
        each_once=[int(r["episode"]) for r in ours] == list(range(1, episodes + 1)),
        metrics_equal=[[r[c] for c in COMPARED] for r in ours] == [[r[c] for c in COMPARED] for r in theirs],
        controller_equal=controller[0].keys() == controller[1].keys()
        and all(torch.equal(controller[0][k], controller[1][k]) for k in controller[0]),
        tracebacks=text.count("Traceback"),
    )
    passed = (
        figures["each_once"]
        and figures["metrics_equal"]
        and figures["controller_equal"]
        and figures["tracebacks"] == 0
        and figures["final_resume_exit"] == 0
        and figures["reference_exit"] == 0
        and not figures["unexpected_exits"]
        and figures["driver_kills"] == args.driver_kills
    )
    figures["passed"] = bool(passed)
    (args.out / "chaos.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures, indent=1))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
