from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alrs.env import EnvConfig, init_child
from alrs.ppo import PPO, PPOConfig
from alrs.vector_env import BatchedLREnv, make_lr_envs


def _rollout(envs, actions: np.ndarray, seed: int) -> tuple[list, list]:
    """Observations, rewards, ends and the ended episodes' final observations, step by step."""
    obs, _ = envs.reset(seed=seed)
    trace, finals = [obs], []
    for a in actions:
        obs, reward, terminated, truncated, infos = envs.step(a)
        trace += [obs, reward, terminated | truncated]
        finals += [infos["final_obs"][i] for i in np.flatnonzero(terminated | truncated)]
    return trace, finals


@pytest.mark.parametrize("architecture,discrete", [("mlp", True), ("cnn", False)])
def test_batched_children_match_separate_envs(small_env_options: dict, architecture: str, discrete: bool) -> None:
    """Same seeds and actions: the same observations and rewards as LREnvs stepped one by one,
    across an autoreset. The gradients agree to float rounding (batched sums run in another
    order), which Adam's first steps amplify for near-zero gradients in proportion to the LR:
    small LRs (noisy, so the children differ) keep that under the tolerance."""
    config = EnvConfig(**{**small_env_options, "architecture": architecture, "discrete": discrete, "initial_lr": 1e-4,
                          "initial_lr_noise": 0.5})
    rng = np.random.default_rng(0)
    steps = config.num_controller_steps + 2  # past the end of the first episode
    actions = rng.integers(0, 3, (steps, 3)) if discrete else rng.uniform(0.9, 1.1, (steps, 3, 1)).astype(np.float32)
    separate, separate_finals = _rollout(make_lr_envs(config, 3, batched=False), actions, seed=5)
    batched, batched_finals = _rollout(make_lr_envs(config, 3, batched=True), actions, seed=5)
    assert len(separate_finals) == len(batched_finals) == 3
    for a, b in zip(separate + separate_finals, batched + batched_finals):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=1e-6)


def test_adam_update_matches_torch_adam_with_one_lr_per_child(small_env_options: dict) -> None:
    envs = BatchedLREnv(EnvConfig(**small_env_options), num_envs=2)
    envs.reset(seed=0)
    models = [init_child(envs.config, s) for s in (1, 2)]
    for slot, model in enumerate(models):
        for name, p in model.named_parameters():
            envs.params[name][slot] = p.detach()
    lrs = (1e-3, 3e-2)
    optimizers = [torch.optim.Adam(m.parameters(), lr=lr) for m, lr in zip(models, lrs)]
    for step in range(3):
        grads = {name: torch.randn_like(p) for name, p in envs.params.items()}
        envs._adam_update(grads, torch.tensor(lrs, dtype=torch.float64))
        for slot, (model, optimizer) in enumerate(zip(models, optimizers)):
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
    envs.params["output_layer.weight"][0] = math.nan  # child 0 diverges
    obs, reward, terminated, truncated, infos = envs.step(np.array([2, 2]))
    assert terminated.tolist() == [True, False] and infos["final_info"]["diverged"][0]
    assert reward[0] == -5.0 * (envs.config.num_controller_steps - 1) and np.all(np.isfinite(obs))
    assert all(torch.isfinite(v).all() for v in envs.params.values())  # child 0 restarted with fresh weights
    assert infos["step"][0] == 0 and infos["step"][1] == 2 * envs.config.update_freq
    assert not any(torch.equal(healthy[k], envs.params[k][1]) for k in healthy)  # child 1 trained on


def test_ppo_trains_on_the_batched_env(small_env_options: dict) -> None:
    envs = make_lr_envs(EnvConfig(**small_env_options), 2, batched=True)
    ppo = PPO(envs, PPOConfig(num_steps=4, num_minibatches=2, update_epochs=1))
    episodes, stats = ppo.train_iteration(seed=0)
    assert [e.length for e in episodes] == [4, 4] and all(math.isfinite(v) for v in stats.values())
    assert [info["step"] for info in episodes[0].infos] == [5, 10, 15, 20]  # the final infos, not the reset's


def test_resnet_is_refused_with_the_way_out(small_env_options: dict) -> None:
    with pytest.raises(ValueError, match="cannot be batched.*sequential"):
        BatchedLREnv(EnvConfig(**{**small_env_options, "architecture": "resnet"}), num_envs=2)
