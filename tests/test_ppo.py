from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from alrs.config import PPOConfig
from alrs.controller import CategoricalDistribution, Controller, DiagGaussianDistribution
from alrs.ppo import PPO, make_vector_env


class SignEnv(gym.Env):
    """Observation: a random sign s (and a constant). Best discrete policy: action 0 if s > 0,
    1 if s < 0 (reward 1), never 2 (reward 0.2). Best continuous action: 1 + 0.4 s."""

    def __init__(self, discrete: bool, length: int = 8):
        self.discrete, self.length = discrete, length
        self.observation_space = spaces.Box(-2.0, 2.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Discrete(3) if discrete else spaces.Box(0.5, 1.5, shape=(1,), dtype=np.float32)

    def _obs(self) -> np.ndarray:
        self.sign = float(self.np_random.choice([-1.0, 1.0]))
        return np.array([self.sign, 1.0], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        if self.discrete:
            reward = 0.2 if action == 2 else float(action == (0 if self.sign > 0 else 1))
        else:
            reward = -10 * float((np.asarray(action).item() - (1 + 0.4 * self.sign)) ** 2)
        self.t += 1
        return self._obs(), reward, self.t >= self.length, False, {"sign": self.sign}


def _train(discrete: bool, iterations: int, seed: int = 0, **overrides) -> PPO:
    envs = make_vector_env([lambda: SignEnv(discrete)] * 4)
    config = PPOConfig(learning_rate=3e-3, ent_coef=0.0 if not discrete else 0.01, **overrides)
    ppo = PPO(envs, config, num_steps=32, seed=seed)
    for i in range(iterations):
        ppo.train_iteration(seed=1000 * i)
    return ppo


def test_learns_the_best_discrete_policy() -> None:
    ctrl = _train(discrete=True, iterations=25).controller
    assert ctrl.act(np.array([1.0, 1.0], np.float32)) == 0
    assert ctrl.act(np.array([-1.0, 1.0], np.float32)) == 1


def test_learns_the_best_continuous_policy() -> None:
    ctrl = _train(discrete=False, iterations=60).controller
    for sign in (1.0, -1.0):
        action = ctrl.act(np.array([sign, 1.0], np.float32))
        assert action.shape == (1,) and abs(float(action[0]) - (1 + 0.4 * sign)) < 0.08


def test_first_policy_is_near_uniform_and_untrained_runs_are_seeded() -> None:
    a, b = _train(True, 0, seed=3), _train(True, 0, seed=3)
    probs = a.controller.distribution(torch.zeros(1, 2)).dist.probs
    assert torch.allclose(probs, torch.full((1, 3), 1 / 3), atol=0.02)
    assert all(torch.equal(p, q) for p, q in zip(a.controller.parameters(), b.controller.parameters(), strict=True))


def test_rollout_reports_finished_episodes_with_their_infos() -> None:
    ppo = _train(True, 0)
    batch, episodes = ppo.collect_rollout(seed=0)
    assert batch["obs"].shape == (32, 4, 2) and batch["advantages"].shape == (32, 4)
    assert len(episodes) == 4 * 32 // 8 and all(e.length == 8 and len(e.infos) == 8 for e in episodes)
    assert all(set(info) == {"sign"} for e in episodes for info in e.infos)


def test_a_time_limit_cut_is_bootstrapped_with_the_value_of_the_final_observation() -> None:
    class Cut(SignEnv):
        def step(self, action):
            obs, reward, _, _, info = super().step(action)
            return obs, reward, False, self.t == 3, info  # cut after 3 steps; info["sign"] is obs[0]

    ppo = PPO(make_vector_env([lambda: Cut(True)] * 2), PPOConfig(norm_obs=False, norm_reward=False), 3, seed=0)
    batch, episodes = ppo.collect_rollout(seed=0)
    assert batch["dones"][2].tolist() == [1.0, 1.0] and len(episodes) == 2
    for episode in episodes:
        with torch.no_grad():
            final_value = ppo.controller.value(torch.tensor([[episode.infos[-1]["sign"], 1.0]])).item()
        last_reward = episode.episode_return - float(batch["rewards"][:2, episode.env_index].sum())
        assert abs(final_value) > 1e-4
        assert float(batch["rewards"][2, episode.env_index]) == pytest.approx(last_reward + 0.99 * final_value)


def test_normalization_statistics_round_trip_through_a_checkpoint() -> None:
    ppo = _train(False, 2)
    saved = ppo.controller.checkpoint({"note": "x"})
    restored = Controller.from_checkpoint(saved)
    assert torch.equal(restored.obs_rms.mean, ppo.controller.obs_rms.mean) and restored.obs_rms.count > 1
    assert torch.equal(restored.return_rms.var, ppo.controller.return_rms.var)
    obs = np.array([0.3, 1.0], np.float32)
    assert np.array_equal(restored.act(obs), ppo.controller.act(obs))
    with torch.no_grad():
        ppo.controller.actor[0].weight.add_(1.0)
    assert not torch.equal(
        saved["state_dict"]["actor.0.weight"], ppo.controller.state_dict()["actor.0.weight"]
    )  # a snapshot
    before = restored.obs_rms.mean.clone()
    restored.act(obs)
    assert torch.equal(before, restored.obs_rms.mean)  # acting never updates the statistics


def test_resumed_training_equals_uninterrupted_training() -> None:
    straight = _train(True, 3)
    first = _train(True, 2)
    resumed = PPO(make_vector_env([lambda: SignEnv(True)] * 4), first.config, num_steps=first.num_steps, seed=99)
    resumed.load_state_dict(first.state_dict())
    resumed.train_iteration(seed=2000)
    assert all(
        torch.equal(p, q)
        for p, q in zip(
            straight.controller.state_dict().values(), resumed.controller.state_dict().values(), strict=True
        )
    )


def test_wrong_action_space_checkpoint_is_refused() -> None:
    continuous = _train(False, 0)
    discrete = _train(True, 0)
    with pytest.raises(ValueError, match="acts on"):
        discrete.load_state_dict(continuous.state_dict())
    with pytest.raises(ValueError, match="not an alrs controller checkpoint"):
        Controller.from_checkpoint({"weights": 1})


def test_continuous_mapping_is_symmetric_around_keep() -> None:
    """For a scale-factor range [1/r, r]: 0 keeps the LR, +-1 are the ends, +-t are reciprocal."""
    ctrl = Controller(2, {"type": "box", "low": 1 / 1.05, "high": 1.05})
    dist = ctrl.distribution(torch.zeros(4, 2))
    up, keep, down, far = dist.to_env_action(torch.tensor([[0.5], [0.0], [-0.5], [3.0]]))[:, 0]
    assert keep == pytest.approx(1.0) and far == pytest.approx(1.05)
    assert up * down == pytest.approx(1.0) and up == pytest.approx(1.05**0.5)
    linear = DiagGaussianDistribution(torch.zeros(1, 1), torch.zeros(1), low=-2.0, high=4.0)
    assert linear.to_env_action(torch.tensor([[0.0]]))[0, 0] == pytest.approx(1.0)


def test_each_distribution_scores_draws_and_maps_its_actions() -> None:
    """Log-probability and entropy summed over the action's dimensions; samples drawn from the given generator
    by the calls that fix every sampled action (multinomial; mean + std * randn); the mode; the env's action."""
    logits = torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, 0.0]])
    categorical, reference = CategoricalDistribution(logits), torch.distributions.Categorical(logits=logits)
    raw = torch.tensor([1, 0])
    assert torch.equal(categorical.log_prob(raw), reference.log_prob(raw))
    assert torch.equal(categorical.entropy(), reference.entropy())
    drawn = torch.multinomial(reference.probs, 1, generator=torch.Generator().manual_seed(4)).squeeze(-1)
    assert torch.equal(categorical.sample(torch.Generator().manual_seed(4)), drawn)
    assert categorical.mode().tolist() == [1, 0] and categorical.to_env_action(raw).tolist() == [1, 0]

    mean, log_std = torch.tensor([[0.2], [-0.5]]), torch.tensor([-1.0])
    gaussian = DiagGaussianDistribution(mean, log_std, 0.5, 2.0)
    normal = torch.distributions.Normal(mean, log_std.exp())
    raw = torch.tensor([[0.1], [3.0]])
    assert torch.equal(gaussian.log_prob(raw), normal.log_prob(raw).sum(-1))
    assert torch.equal(gaussian.entropy(), normal.entropy().sum(-1)) and gaussian.entropy().shape == (2,)
    drawn = mean + normal.stddev * torch.randn(mean.shape, generator=torch.Generator().manual_seed(4))
    assert torch.equal(gaussian.sample(torch.Generator().manual_seed(4)), drawn)
    assert torch.equal(gaussian.mode(), mean)
    env_action = gaussian.to_env_action(raw)
    assert env_action.dtype == np.float32 and env_action[:, 0].tolist() == pytest.approx([0.5 * 4**0.55, 2.0])


def test_the_controller_acts_with_its_distribution_and_refuses_unknown_spaces() -> None:
    discrete, box = Controller(2, {"type": "discrete", "n": 3}), Controller(2, {"type": "box", "low": 0.5, "high": 2.0})
    assert "log_std" not in discrete.state_dict() and box.state_dict()["log_std"].shape == (1,)
    obs = np.array([0.3, 1.0], np.float32)
    assert type(discrete.act(obs)) is int and box.act(obs).shape == (1,)
    with pytest.raises(ValueError, match="the controller knows discrete, box"):
        Controller(2, {"type": "multi-discrete", "nvec": [3, 3]})


def test_gae_on_known_numbers() -> None:
    ppo = _train(True, 0, gamma=0.5, gae_lambda=1.0)
    batch = {"values": torch.zeros(3, 1), "rewards": torch.ones(3, 1), "dones": torch.tensor([[0.0], [1.0], [0.0]])}
    adv, ret = ppo._gae(batch, last_value=torch.tensor([4.0]))
    assert torch.allclose(adv.squeeze(), torch.tensor([1.5, 1.0, 3.0]))  # episode ends at t=1; t=2 bootstraps 0.5*4
    assert torch.equal(adv, ret)


def test_fixed_scale_entries_are_not_normalized_and_survive_a_checkpoint() -> None:
    controller = Controller(3, {"type": "discrete", "n": 3}, fixed_scale=(2,))
    controller.obs_rms.update(torch.tensor([[10.0, 1.0, 5.0], [20.0, 3.0, 7.0]]))
    norm = controller.normalize_obs(torch.tensor([[15.0, 2.0, 0.25]]))
    assert norm[0, 0] == pytest.approx(0.0, abs=1e-3) and norm[0, 2] == 0.25  # the running mean is ~15
    restored = Controller.from_checkpoint(controller.checkpoint())
    assert restored.fixed_scale == (2,) and torch.equal(restored.normalize_obs(torch.tensor([[15.0, 2.0, 0.25]])), norm)
    with pytest.raises(ValueError, match="fixed_scale"):
        Controller(3, {"type": "discrete", "n": 3}, fixed_scale=(3,))


def test_common_reset_seed_resets_every_env_alike() -> None:
    envs = make_vector_env([lambda: SignEnv(True)] * 4)
    ppo = PPO(envs, PPOConfig(common_reset_seed=True), num_steps=1, seed=0)
    batch, _ = ppo.collect_rollout(seed=3)
    assert len(set(batch["obs"][0, :, 0].tolist())) == 1  # one sign for all four envs
    signs = {
        tuple(PPO(envs, PPOConfig(), num_steps=1, seed=0).collect_rollout(seed=s)[0]["obs"][0, :, 0].tolist())
        for s in range(8)
    }
    assert any(len(set(s)) > 1 for s in signs)  # without it, the envs draw their own


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("gamma", float("nan"), "finite"),
        ("gamma", 1.5, r"\[0, 1\]"),
        ("gae_lambda", -0.1, r"\[0, 1\]"),
        ("learning_rate", 0.0, "positive"),
        ("target_kl", float("inf"), "finite"),
    ],
)
def test_bad_ppo_settings_are_refused_before_any_rollout(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must .*{message}"):
        PPOConfig(**{field: value})
