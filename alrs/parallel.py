"""Where work runs: in this process, in local worker processes, or as Ray actors on a cluster.

What runs is the same everywhere. A worker (:mod:`alrs.workers`) hosts LR environments (built from an
:class:`~alrs.config.EnvConfig`, sharing one copy of the dataset) and does one of two things with them:

* steps a slice of PPO's children, for :class:`WorkerVectorEnv` (the controller stays in the driver);
* runs whole episodes: a module-level function ``fn(env, *args)`` such as
  :func:`alrs.episodes.run_episode`, for grids, test seeds and deterministic evaluations.

Each child's arithmetic is the same in every backend, so given the same torch threads per child the
results are equal to the last digit; only the order in which episodes finish changes, and the
driver, the only process that writes files, stores each result as it arrives.

Local workers are spawned processes that ignore Ctrl-C: the driver gets it, stops them
(:meth:`WorkerPool.close`) and keeps what it has already written. A worker that dies (killed, out of
memory) is replaced and its lost work rerun, up to ``max_worker_restarts`` deaths a run.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_space

from alrs.config import EnvConfig
from alrs.env import resolve_device
from alrs.errors import UserError
from alrs.settings import setting
from alrs.vector_env import make_lr_envs, vector_seeds
from alrs.workers import EnvsLost, Host, ProcessWorker, RayWorker, WorkerDied

BACKENDS: tuple[str, ...] = ("local", "ray")
"""``local``: this process (1 worker) or local processes; ``ray``: Ray actors, local or on a cluster."""


def available_cores() -> int:
    """CPU cores this process may use (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class ParallelConfig:
    """Where a script's child trainings run.

    Each field's help is its documentation (and its flag's --help).
    """

    workers: int | None = setting(
        None,
        "processes (or Ray actors) that train children at once; None: on the CPU one per two cores "
        "(capped by the jobs), each with two torch threads; one on CUDA, where the batched env fills "
        "the GPU instead; with Ray, one per job.",
        runtime=True,
    )
    backend: str = setting("local", "local or ray.", runtime=True)
    ray_address: str | None = setting(
        None,
        "the Ray cluster to join (host:port, ray://host:port or auto); None starts a local Ray with "
        "this machine's cores.",
        runtime=True,
    )
    threads: int | None = setting(
        None, "torch threads per worker; None: the cores split evenly among the workers.", runtime=True
    )
    max_worker_restarts: int = setting(
        3,
        "workers that may die in one run (killed, out of memory) and be replaced, their lost work "
        "rerun exactly; one more death stops the run with its cause.",
        runtime=True,
    )

    def __post_init__(self) -> None:
        if self.workers is not None and (
            isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers <= 0
        ):
            raise UserError(f"--workers must be a positive integer, got {self.workers!r}")
        if self.backend not in BACKENDS:
            raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.ray_address is not None and self.backend != "ray":
            raise UserError("--ray-address needs --backend ray")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads <= 0
        ):
            raise UserError(f"--threads must be a positive integer, got {self.threads!r}")
        if (
            isinstance(self.max_worker_restarts, bool)
            or not isinstance(self.max_worker_restarts, int)
            or (self.max_worker_restarts < 0)
        ):
            raise UserError(f"--max-worker-restarts must be an integer >= 0, got {self.max_worker_restarts!r}")

    def num_workers(self, config: EnvConfig, jobs: int) -> int:
        """Workers for ``jobs`` parallel jobs of ``config``'s children."""
        if self.workers is not None:
            return self.workers
        if self.backend == "ray":
            return max(1, jobs)  # the cluster's scheduler places them
        # On 2 cores, one process on both cores beat two single-threaded ones for LeNet-5 and lost
        # to them for the MLP (benchmarks/throughput.py, docs/speed.md): two threads per worker.
        return 1 if resolve_device(config.device).type == "cuda" else max(1, min(jobs, available_cores() // 2))

    def threads_per_worker(self, workers: int) -> int:
        """Torch threads of each worker: the cores split evenly, so that workers do not oversubscribe them."""
        return self.threads if self.threads is not None else max(1, available_cores() // workers)


def require_ray() -> Any:
    """The ray module, or a one-line error naming the install."""
    try:
        import ray
    except ImportError as exc:
        raise UserError("--backend ray needs Ray: pip install 'ray[default]'") from exc
    return ray


def _start_ray(address: str | None, cpus_needed: int) -> bool:
    """Join the cluster at ``address`` (or start a local Ray); returns whether this call started it."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    if address not in (None, "auto"):
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host or "localhost", int(port)), timeout=10).close()
        except (OSError, ValueError) as exc:
            raise UserError(
                f"cannot reach the Ray cluster at --ray-address {address} ({exc}); start it with "
                "'ray start --head' or fix the address"
            ) from exc
    # ray.init installs its C++ failure handler for SIGTERM, which dumps a stack and aborts: our handler
    # (a clean stop, the resume hint, exit 143) is put back once it has run.
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        if address is None:
            ray.init(
                num_cpus=max(available_cores(), cpus_needed),
                include_dashboard=False,
                logging_level="ERROR",
                log_to_driver=False,
            )
        else:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except ConnectionError as exc:
        raise UserError(f"cannot connect to Ray at --ray-address {address}: {exc}") from exc
    finally:
        if callable(sigterm) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, sigterm)
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < cpus_needed:
        ray.shutdown()
        raise UserError(
            f"the workers need {cpus_needed} CPUs (--workers x --threads) but the Ray cluster has {cpus:g}; "
            "lower --workers or --threads"
        )
    return True


class WorkerPool:
    """Workers for one script's child trainings; one worker on the local backend means this process.

    Use as a context manager: leaving it stops every worker process (and a Ray this pool started).

    Args:
        parallel: where the work runs.
        workers: how many workers (see :meth:`ParallelConfig.num_workers`).
        config: the env settings of the children (decides the GPU share of a Ray worker).
    """

    def __init__(self, parallel: ParallelConfig, workers: int, config: EnvConfig):
        self.parallel, self.num_workers = parallel, workers
        self.threads = parallel.threads_per_worker(workers)
        self.workers: list[Any] = []
        self._host: Host | None = None
        self._started_ray = False
        self.restarts = 0
        if parallel.backend == "local" and workers == 1:
            self._host = Host(parallel.threads)  # in this process: no copies, no pipes
            return
        try:
            if parallel.backend == "ray":
                self._started_ray = _start_ray(parallel.ray_address, workers * self.threads)
                gpus = require_ray().cluster_resources().get("GPU", 0) if config.device != "cpu" else 0
                share = min(1.0, gpus / workers) if gpus else 0.0
                self.workers = [RayWorker(self.threads, share) for _ in range(workers)]
            else:
                if workers > (cores := available_cores()):
                    print(
                        f"warning: {workers} workers on the {cores} cores this process may use: they take turns "
                        f"(the same results, more slowly); --workers {cores} or fewer is faster",
                        file=sys.stderr,
                    )
                context = multiprocessing.get_context("spawn")  # fork is unsafe once torch has started threads
                self.workers = [ProcessWorker(context, self.threads) for _ in range(workers)]
            for worker in self.workers:  # wait until each has started: a worker that cannot start fails here
                self._ping(worker)
        except BaseException:
            self.close()
            raise

    def _ping(self, worker: Any) -> None:
        """Wait until ``worker`` answers; one killed meanwhile is replaced (a restart, as in the work)."""
        while True:
            try:
                worker.submit("ping")
                worker.result()
                return
            except WorkerDied as exc:
                self.replace(worker, exc)

    @property
    def in_process(self) -> bool:
        return self._host is not None

    def vector_env(self, config: EnvConfig, num_envs: int, batched: bool | None = None) -> gym.vector.VectorEnv:
        """PPO's ``num_envs`` children: in this process (sequential or batched), else split over the workers."""
        if self.in_process:
            return make_lr_envs(config, num_envs, batched)
        if batched:
            raise UserError("--batched-envs trains every child in one process; drop it or use --workers 1")
        if self.num_workers > num_envs:
            raise UserError(
                f"--workers {self.num_workers} is more than the {num_envs} children of a PPO iteration; "
                f"use --workers {num_envs} or fewer (or raise --num-envs)"
            )
        return WorkerVectorEnv(self.workers, config, num_envs, self.replace)

    def run(self, fn: Callable[..., Any], config: EnvConfig, jobs: Sequence[tuple]) -> Iterator[tuple[int, Any]]:
        """``fn(env, *job)`` for every job, on an env of ``config``; yields ``(job index, result)`` as each finishes.

        ``fn`` must be a module-level function (it is sent to the workers by name).
        """
        if self.in_process:
            env = self._host.env(config)
            for i, job in enumerate(jobs):
                yield i, fn(env, *job)
            return
        pending = list(enumerate(jobs))[::-1]
        busy: dict[Any, int] = {}
        idle = list(self.workers)
        while pending or busy:
            while pending and idle:
                worker = idle.pop()
                index, job = pending.pop()
                busy[worker] = index
                try:
                    worker.submit("run", fn, config, tuple(job))
                except WorkerDied as exc:
                    self.replace(worker, exc)
                    pending.append((busy.pop(worker), job))
                    idle.append(worker)
            for worker in type(self.workers[0]).wait_any(list(busy)):
                index = busy.pop(worker)
                try:
                    result = worker.result()
                except WorkerDied as exc:  # a job is deterministic given its arguments: rerun it elsewhere
                    self.replace(worker, exc)
                    pending.append((index, jobs[index]))
                else:
                    yield index, result
                idle.append(worker)

    def replace(self, worker: Any, death: WorkerDied) -> None:
        """Put a fresh worker in place of ``worker``, which died; past ``max_worker_restarts`` deaths, stop
        with the cause."""
        self.restarts += 1
        if self.restarts > self.parallel.max_worker_restarts:
            raise WorkerDied(
                f"{death}; that is {self.restarts} worker deaths in this run, more than --max-worker-restarts "
                f"{self.parallel.max_worker_restarts}"
            ) from death
        worker.restart()

    def close(self) -> None:
        """Stop the workers (work in flight is dropped) and a Ray this pool started."""
        for worker in self.workers:
            worker.close()
        self.workers = []
        if self._started_ray:
            require_ray().shutdown()
            self._started_ray = False

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_pool(parallel: ParallelConfig, config: EnvConfig, jobs: int) -> WorkerPool:
    """A pool with :meth:`ParallelConfig.num_workers` workers for ``jobs`` parallel jobs."""
    return WorkerPool(parallel, parallel.num_workers(config, jobs), config)


class WorkerVectorEnv(gym.vector.VectorEnv):
    """PPO's children split into contiguous slices over workers; each worker steps its slice.

    Observations, rewards and infos are assembled exactly as Gymnasium's ``SyncVectorEnv`` does
    with autoreset mode ``SAME_STEP``, so PPO sees the same batch whichever runs the children.
    The pool owns the workers: closing this env leaves them running.
    """

    metadata: ClassVar[dict[str, Any]] = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    def __init__(self, workers: list[Any], config: EnvConfig, num_envs: int, replace: Callable[..., None]):
        self.workers, self.num_envs, self.config, self._replace = workers, num_envs, config, replace
        base, extra = divmod(num_envs, len(workers))
        self._sizes = [base + (i < extra) for i in range(len(workers))]
        self._slices = [slice(sum(self._sizes[:i]), sum(self._sizes[: i + 1])) for i in range(len(workers))]
        # Every call since the last reset, per worker: a replacement replays them to reach the lost envs' state
        # (an env is deterministic given its seed and the actions), so a lost worker costs no result.
        self._history: list[list[tuple[str, tuple]]] = [[] for _ in workers]
        self._pending: list[tuple[str, tuple]] = [("make_envs", ()) for _ in workers]
        for i, size in enumerate(self._sizes):
            self._submit(i, "make_envs", config, size)
        spaces = [self._result(i) for i in range(len(workers))]
        self.single_observation_space, self.single_action_space = spaces[0]
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every child; ``seed`` as in Gymnasium's vector envs (an int seeds envs seed, seed+1, ...)."""
        if options and "reset_mask" in options:
            raise UserError("WorkerVectorEnv resets every child at once; it has no reset_mask")
        seeds = vector_seeds(seed, self.num_envs)
        for i, part in enumerate(self._slices):
            self._submit(i, "reset", seeds[part], options)
        results = [r for i in range(len(self.workers)) for r in self._result(i)]
        infos: dict[str, Any] = {}
        for i, (_, info) in enumerate(results):
            infos = self._add_info(infos, info, i)
        return self._stack([obs for obs, _ in results]), infos

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if len(actions) != self.num_envs:
            raise UserError(f"need one action per env ({self.num_envs}), got {len(actions)}")
        for i, part in enumerate(self._slices):
            self._submit(i, "step", actions[part])
        results = [r for i in range(len(self.workers)) for r in self._result(i)]
        infos: dict[str, Any] = {}
        for i, (_, _, _, _, final, info) in enumerate(results):
            if final is not None:
                infos = self._add_info(infos, final, i)
            infos = self._add_info(infos, info, i)
        obs, rewards, terminated, truncated = (list(column) for column in zip(*(r[:4] for r in results), strict=True))
        return (
            self._stack(obs),
            np.array(rewards, dtype=np.float64),
            np.array(terminated, dtype=np.bool_),
            np.array(truncated, dtype=np.bool_),
            infos,
        )

    def _stack(self, obs: list[np.ndarray]) -> np.ndarray:
        return np.stack(obs).astype(self.single_observation_space.dtype, copy=False)

    def _submit(self, i: int, method: str, *args: Any) -> None:
        """Send worker ``i`` a call, remembered for a replay; a dead worker is replaced first."""
        if method == "reset":
            self._history[i] = []
        if method != "make_envs":
            self._history[i].append((method, args))
        self._pending[i] = (method, args)
        try:
            self.workers[i].submit(method, *args)
        except WorkerDied as exc:
            self._recover(i, exc)

    def _result(self, i: int) -> Any:
        """Worker ``i``'s answer to its last call; if it died, a fresh worker replays its calls and answers."""
        while True:
            try:
                return self.workers[i].result()
            except WorkerDied as exc:
                self._recover(i, exc)
            except EnvsLost:  # replaced after a death in other work (an evaluation job): rebuild its envs
                self._recover(i, None)

    def _recover(self, i: int, death: WorkerDied | None) -> None:
        """Replace worker ``i`` (if it died), bring it to where the lost envs were, and send its pending call again."""
        while True:
            if death is not None:
                self._replace(self.workers[i], death)
            worker, (method, args) = self.workers[i], self._pending[i]
            try:
                if method != "make_envs":
                    worker.submit("make_envs", self.config, self._sizes[i])
                    worker.result()
                    for done_method, done_args in self._history[i][:-1]:
                        worker.submit(done_method, *done_args)
                        worker.result()
                worker.submit(method, *args)
                return
            except WorkerDied as again:
                death = again


__all__ = [
    "BACKENDS",
    "ParallelConfig",
    "WorkerPool",
    "WorkerVectorEnv",
    "available_cores",
    "make_pool",
    "require_ray",
]
