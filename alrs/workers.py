"""A worker: a local process or a Ray actor hosting LR environments, and how its death is recognised.

A :class:`Host` holds a worker's envs and runs what the driver asks of them: step its slice of PPO's
children, or run a whole episode function. :class:`ProcessWorker` runs a host in a spawned process
driven through a pipe; :class:`RayWorker` runs one as a Ray actor. Either raises :class:`WorkerDied`
when its process or actor is gone, with the cause (:func:`death_cause`), so that
:class:`~alrs.parallel.WorkerPool` can replace it and rerun the lost work.
"""

from __future__ import annotations

import multiprocessing.connection
import os
import pickle
import signal
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from alrs.config import EnvConfig
from alrs.env import LREnv, make_training_env
from alrs.errors import UserError


class Host:
    """The LR environments of one worker and what can be run on them (in a worker process or a Ray actor)."""

    def __init__(self, threads: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.envs: list[LREnv] = []
        self._episode_envs: dict[EnvConfig, LREnv] = {}

    def env(self, config: EnvConfig) -> LREnv:
        """The env that runs whole episodes of ``config`` (built once; the dataset is loaded once per process)."""
        if config not in self._episode_envs:
            self._episode_envs[config] = make_training_env(config)
        return self._episode_envs[config]

    def make_envs(self, config: EnvConfig, count: int) -> tuple[gym.Space, gym.Space]:
        """Build this worker's slice of PPO's children; returns their observation and action spaces."""
        self.envs = [make_training_env(config) for _ in range(count)]
        return self.envs[0].observation_space, self.envs[0].action_space

    def reset(self, seeds: list[int | None], options: dict[str, Any] | None) -> list[tuple[np.ndarray, dict]]:
        """Reset each env with its seed; returns each env's observation and info."""
        self._check_envs(len(seeds))
        return [env.reset(seed=seed, options=options) for env, seed in zip(self.envs, seeds, strict=True)]

    def _check_envs(self, count: int) -> None:
        if len(self.envs) != count:
            raise EnvsLost(f"this worker holds {len(self.envs)} envs, not {count}: it was restarted")

    def step(self, actions: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Step each env; one that ends restarts at once (Gymnasium's SAME_STEP autoreset), its last
        observation and info returned beside the new ones."""
        self._check_envs(len(actions))
        out = []
        for env, action in zip(self.envs, actions, strict=True):
            obs, reward, terminated, truncated, info = env.step(action)
            final = None
            if terminated or truncated:
                final = {"final_obs": obs, "final_info": info}
                obs, info = env.reset()
            out.append((obs, reward, terminated, truncated, final, info))
        return out

    def run(self, fn: Callable[..., Any], config: EnvConfig, args: tuple) -> Any:
        """``fn(env, *args)`` on the env of ``config`` that runs whole episodes."""
        return fn(self.env(config), *args)

    def ping(self) -> int:
        """This process's id: an answer shows the worker has started."""
        return os.getpid()


class WorkerDied(UserError):
    """A worker process or Ray actor died (killed, out of memory) with work in flight."""


class EnvsLost(RuntimeError):
    """A worker was asked to step envs it does not hold: it was restarted (after a death) since they were made."""


def death_cause(exitcode: int | None) -> str:
    """Why a worker process ended, in words, with what to change where it is likely memory."""
    if exitcode == -signal.SIGKILL:
        return (
            "killed by SIGKILL (exit -9), most likely the kernel's out-of-memory killer: lower --batch-size, "
            "--val-size, --num-envs or --workers"
        )
    if exitcode is not None and exitcode < 0:
        return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class ProcessWorker:
    """A host in a spawned local process, driven through a pipe."""

    def __init__(self, context: Any, threads: int) -> None:
        self.context, self.threads = context, threads
        self._start()

    def _start(self) -> None:
        self.conn, child = self.context.Pipe()
        self.process = self.context.Process(target=_serve, args=(child, self.threads), daemon=True, name="alrs-worker")
        self.process.start()
        child.close()

    def restart(self) -> None:
        """A fresh process in place of a dead one (its envs are gone: the caller rebuilds them)."""
        self.close()
        self._start()

    def submit(self, method: str, *args: Any) -> None:
        """Ask the process to run the host's ``method(*args)``; its answer comes from :meth:`result`."""
        try:
            self.conn.send((method, args))
        except (BrokenPipeError, ConnectionError, EOFError, OSError) as exc:
            raise self._died() from exc

    def _died(self) -> WorkerDied:
        self.process.join(timeout=5)
        return WorkerDied(f"worker process {self.process.pid} died ({death_cause(self.process.exitcode)})")

    def result(self) -> Any:
        """The answer to the last call; an error in the worker is raised here, with its traceback noted."""
        try:
            status, value = self.conn.recv()
        except (EOFError, ConnectionError, OSError) as exc:
            raise self._died() from exc
        if status == "error":
            exc, trace = value
            exc.add_note(f"in worker process {self.process.pid}:\n{trace}")
            raise exc
        return value

    def close(self) -> None:
        """Stop the process at once: work in flight is discarded (the driver has stored all finished work)."""
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()

    @property
    def pid(self) -> int | None:
        """The worker process's id."""
        return self.process.pid

    @staticmethod
    def wait_any(workers: list[ProcessWorker]) -> list[ProcessWorker]:
        """Those of ``workers`` whose answer has arrived (waits for at least one)."""
        ready = multiprocessing.connection.wait([w.conn for w in workers])
        return [w for w in workers if w.conn in ready]


def _serve(conn: multiprocessing.connection.Connection, threads: int) -> None:
    """A worker process's loop: run the host's methods the driver asks for, send back their results."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle; it stops the workers
    host = Host(threads)
    while True:
        try:
            method, args = conn.recv()
        except (EOFError, ConnectionError):
            return  # the driver is gone
        try:
            reply: tuple[str, Any] = ("ok", getattr(host, method)(*args))
        except Exception as exc:
            trace = traceback.format_exc()
            try:
                pickle.dumps(exc)
            except Exception:
                exc = RuntimeError(f"{type(exc).__name__}: {exc}")
            reply = ("error", (exc, trace))
        try:
            conn.send(reply)
        except (BrokenPipeError, ConnectionError, EOFError):
            return  # the driver died while this worked (killed, say): its answer has nobody to go to


class RayWorker:
    """A host as a Ray actor; it declares the CPUs (its torch threads) and the GPU share it needs."""

    def __init__(self, threads: int, num_gpus: float) -> None:
        import ray

        self._ray = ray
        # Ray's own fault tolerance: a dead actor is restarted (its state, the envs, is rebuilt by the caller).
        options = {"num_cpus": threads, "num_gpus": num_gpus, "max_restarts": -1, "max_task_retries": 0}
        self.actor = ray.remote(Host).options(**options).remote(threads)
        self.ref: Any = None

    def submit(self, method: str, *args: Any) -> None:
        """Call the actor's ``method(*args)``; its answer comes from :meth:`result`."""
        self.ref = getattr(self.actor, method).remote(*args)

    def result(self) -> Any:
        """The answer to the last call (an error in the actor is raised here)."""
        ref, self.ref = self.ref, None
        try:
            return self._ray.get(ref)
        except (self._ray.exceptions.RayActorError, self._ray.exceptions.ActorUnavailableError) as exc:
            raise WorkerDied(f"Ray actor {self.actor._actor_id.hex()[:8]} died ({exc.__class__.__name__})") from exc

    def restart(self) -> None:
        """Wait until Ray has restarted the actor (``max_restarts``); its envs are rebuilt by the caller."""
        errors = (self._ray.exceptions.RayActorError, self._ray.exceptions.ActorUnavailableError)
        deadline = time.monotonic() + 300
        while True:
            try:
                self._ray.get(self.actor.ping.remote())
                return
            except errors as exc:
                if time.monotonic() > deadline:
                    raise WorkerDied(f"Ray actor {self.actor._actor_id.hex()[:8]} did not come back in 300 s") from exc
                time.sleep(0.5)

    def close(self) -> None:
        """Kill the actor: work in flight is discarded."""
        self._ray.kill(self.actor)

    @staticmethod
    def wait_any(workers: list[RayWorker]) -> list[RayWorker]:
        """Those of ``workers`` whose answer has arrived (waits for at least one)."""
        import ray

        ready, _ = ray.wait([w.ref for w in workers], num_returns=1)
        return [w for w in workers if w.ref in ready]


def node_id(env: Any) -> str:
    """Where a job runs: the Ray node's id (the host name outside Ray); a job for ``WorkerPool.run``."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return socket.gethostname()


__all__ = [
    "EnvsLost",
    "Host",
    "ProcessWorker",
    "RayWorker",
    "WorkerDied",
    "death_cause",
    "node_id",
]
