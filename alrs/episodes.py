"""Running schedules on the LR environment: one episode, and a list of them into a result store.

The same episode function runs in this process, in a local worker or as a Ray task (:mod:`alrs.parallel`)
and gives the same numbers; only this process writes the store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext

from tqdm.auto import tqdm

from alrs.config import EnvConfig
from alrs.env import LREnv, episode_curves
from alrs.parallel import WorkerPool
from alrs.results import EpisodeResult, ResultStore
from alrs.schedules import Schedule


def run_episode(env: LREnv, schedule: Schedule, seed: int, test: bool = True) -> EpisodeResult:
    """Train one child under ``schedule`` from the env's reset with ``seed``; optionally test it.

    The seed alone fixes the child's initialization and batch order, so runs of different
    schedules on one seed are paired.
    """
    schedule.check(env)
    obs, info = env.reset(seed=seed, options=schedule.reset_options())
    schedule.start(seed)
    infos = [info]
    terminated = truncated = False
    while not (terminated or truncated):
        obs, _, terminated, truncated, info = schedule.step(env, obs, info)
        infos.append(info)
    curves = episode_curves(infos)
    test_best = env.evaluate_test("best") if test else (math.nan, math.nan)
    test_final = env.evaluate_test("current") if test and not info["diverged"] else (math.nan, math.nan)
    return EpisodeResult(
        schedule.describe(),
        seed,
        info["val_loss"],
        env.best_val_loss,
        env.best_step,
        info["diverged"],
        *test_best,
        *test_final,
        curves,
    )


def run_jobs(
    env: LREnv | EnvConfig,
    jobs: Sequence[tuple[str, Schedule, int]],
    store: ResultStore,
    test: bool = True,
    progress: bool = True,
    desc: str = "",
    pool: WorkerPool | None = None,
    bar: tqdm | None = None,
) -> dict[str, EpisodeResult]:
    """Run each ``(key, schedule, seed)`` not yet in ``store``, saving each as it finishes; return all results.

    Without ``pool`` the jobs run one by one on ``env``; with one, on its workers (envs of ``env``'s config,
    or of ``env`` itself, which may then be an :class:`EnvConfig`), in any order: the store is written by
    this process alone, so an interruption keeps every finished job.

    Args:
        bar: a progress bar of the caller's (one over several calls), advanced by every job instead of a
            bar of this call's own (``progress`` and ``desc`` then do nothing).
    """
    if isinstance(env, EnvConfig) and pool is None:
        raise ValueError("run_jobs: an EnvConfig needs a pool to build its envs; pass an LREnv to run here")
    config = env if isinstance(env, EnvConfig) else env.config
    todo = [job for job in jobs if job[0] not in store]
    args = [(schedule, seed, test) for _, schedule, seed in todo]
    finished = pool.run(run_episode, config, args) if pool else ((i, run_episode(env, *a)) for i, a in enumerate(args))
    stored = len(jobs) - len(todo)
    if bar is not None:
        bar.update(stored)
    with (
        nullcontext(bar)
        if bar is not None
        else tqdm(total=len(jobs), initial=stored, desc=desc, unit="run", disable=not progress, dynamic_ncols=True)
    ) as bar:
        for i, result in finished:
            key, schedule, _ = todo[i]
            store.add(key, result)
            bar.set_postfix_str(schedule.name, refresh=False)
            bar.update()
    return {key: store[key] for key, _, _ in jobs}


__all__ = ["run_episode", "run_jobs"]
