from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from alrs.config import EnvConfig, PPOConfig
from alrs.env import init_child
from alrs.ppo import PPO, _info_at
from alrs.vector_env import BatchedLREnv, make_lr_envs

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _poison_child_0(envs: gym.vector.VectorEnv) -> None:
    """Make child 0's weights NaN, in either kind of vector env."""
    if isinstance(envs, BatchedLREnv):
        envs.params["output_layer.weight"][0] = math.nan
    else:
        envs.envs[0].model.output_layer.weight.data.fill_(math.nan)


def _rollout(envs: gym.vector.VectorEnv, actions: np.ndarray, seed: int) -> tuple[list, list]:
    """Every step's arrays, and every step's per-env infos (the final info of ended episodes).
    Child 0 diverges at the second step, so it restarts alone, out of step with the others."""
    obs, infos = envs.reset(seed=seed)
    arrays, all_infos = [obs], [_info_at(infos, i) for i in range(envs.num_envs)]
    for t, a in enumerate(actions):
        if t == 1:
            _poison_child_0(envs)
        obs, reward, terminated, truncated, infos = envs.step(a)
        ended = terminated | truncated
        arrays += [obs, reward, ended] + [infos["final_obs"][i] for i in np.flatnonzero(ended)]
        all_infos += [_info_at(infos["final_info"] if ended[i] else infos, i) for i in range(envs.num_envs)]
        all_infos += [_info_at(infos, i) for i in np.flatnonzero(ended)]  # the restarted episode's first info
    return arrays, all_infos


@pytest.mark.parametrize(
    "architecture,discrete,device",
    [
        ("mlp", True, "cpu"),
        ("cnn", False, "cpu"),
        pytest.param("cnn", True, "cuda", marks=CUDA),
    ],
)
def test_batched_children_match_separate_envs(
    small_env_options: dict, architecture: str, discrete: bool, device: str
) -> None:
    """Same seeds and actions: the observations, rewards and infos of LREnvs stepped one by one,
    through a divergence that restarts one child alone and through the others' autoresets.

    The gradients agree to float rounding (batched sums run in another order); Adam's first
    steps amplify that for near-zero gradients in proportion to the LR, so small LRs (noisy, so
    the children differ) keep it under the tolerance. CUDA's TF32 convolutions need a looser one."""
    config = EnvConfig(
        **{
            **small_env_options,
            "architecture": architecture,
            "discrete": discrete,
            "initial_lr": 1e-4,
            "initial_lr_noise": 0.5,
            "device": device,
        }
    )
    rng = np.random.default_rng(0)
    steps = 2 * config.decisions + 1  # child 0 ends twice, the others once
    actions = rng.integers(0, 3, (steps, 3)) if discrete else rng.uniform(0.9, 1.1, (steps, 3, 1)).astype(np.float32)
    separate, separate_infos = _rollout(make_lr_envs(config, 3, batched=False), actions, seed=5)
    batched, batched_infos = _rollout(make_lr_envs(config, 3, batched=True), actions, seed=5)
    rtol = 2e-4 if device == "cpu" else 5e-3
    assert len(separate) == len(batched)
    for a, b in zip(separate, batched, strict=True):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=1e-9)
    assert [sorted(i) for i in separate_infos] == [sorted(i) for i in batched_infos]
    for a, b in zip(separate_infos, batched_infos, strict=True):
        assert b == pytest.approx(a, rel=rtol, abs=1e-9)
    assert sum(i.get("diverged", False) for i in batched_infos) == 1


def test_adam_update_matches_torch_adam_with_one_lr_and_step_count_per_child(small_env_options: dict) -> None:
    envs = BatchedLREnv(EnvConfig(**small_env_options), num_envs=2)
    envs.reset(seed=0)
    lrs = (1e-3, 3e-2)
    models, optimizers = [None, None], [None, None]

    def restart(slot: int, child_seed: int) -> None:
        envs._init_children([slot], [child_seed])
        models[slot] = init_child(envs.config, child_seed)
        optimizers[slot] = torch.optim.Adam(models[slot].parameters(), lr=lrs[slot])

    restart(0, 1)
    restart(1, 2)
    for step in range(4):
        if step == 2:
            restart(0, 3)  # child 0's step count starts again, child 1's goes on
        grads = {name: torch.randn_like(p) for name, p in envs.params.items()}
        envs._adam_update(grads, torch.tensor(lrs, dtype=torch.float64))
        for slot, (model, optimizer) in enumerate(zip(models, optimizers, strict=True)):
            for name, p in model.named_parameters():
                p.grad = grads[name][slot].clone()
            optimizer.step()
    for slot, model in enumerate(models):
        for name, p in model.named_parameters():
            torch.testing.assert_close(envs.params[name][slot], p.detach(), rtol=1e-5, atol=1e-7)


def test_a_diverged_child_restarts_alone(small_env_options: dict) -> None:
    envs = BatchedLREnv(EnvConfig(**small_env_options), num_envs=2)
    envs.reset(seed=0)
    envs.step(np.array([2, 2]))
    healthy = {k: v[1].clone() for k, v in envs.params.items()}
    _poison_child_0(envs)
    obs, reward, terminated, _, infos = envs.step(np.array([2, 2]))
    assert terminated.tolist() == [True, False] and infos["final_info"]["diverged"][0]
    assert reward[0] == -5.0 * (envs.config.decisions - 1) and np.all(np.isfinite(obs))
    assert all(torch.isfinite(v).all() for v in envs.params.values())  # child 0 restarted with fresh weights
    assert infos["step"][0] == 0 and infos["step"][1] == 2 * envs.config.update_freq
    assert not any(torch.equal(healthy[k], envs.params[k][1]) for k in healthy)  # child 1 trained on


def test_ppo_trains_on_the_batched_env(small_env_options: dict) -> None:
    envs = make_lr_envs(EnvConfig(**small_env_options), 2, batched=True)
    ppo = PPO(envs, PPOConfig(num_minibatches=2, update_epochs=1), num_steps=4)
    step = ppo.train_iteration(seed=0)
    episodes, stats = step.episodes, step.stats
    assert [e.length for e in episodes] == [4, 4] and all(math.isfinite(v) for v in stats.values())
    assert [info["step"] for info in episodes[0].infos] == [5, 10, 15, 20]  # the final infos, not the reset's


def test_the_automatic_choice_batches_only_on_cuda(small_env_options: dict) -> None:
    envs = make_lr_envs(EnvConfig(**small_env_options), 2)
    assert isinstance(envs, BatchedLREnv) == torch.cuda.is_available()


def test_bad_uses_are_one_line_errors(small_env_options: dict) -> None:
    with pytest.raises(ValueError, match=r"cannot be batched.*--batched-envs"):
        BatchedLREnv(EnvConfig(**{**small_env_options, "architecture": "resnet"}), num_envs=2)
    envs = BatchedLREnv(EnvConfig(**small_env_options), num_envs=2)
    with pytest.raises(RuntimeError, match="call reset"):
        envs.step(np.array([2, 2]))
    envs.reset(seed=0)
    with pytest.raises(ValueError, match="one action per env"):
        envs.step(np.array([2]))
