from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.utils.seeding import np_random

from alrs.config import EnvConfig
from alrs.data import BatchSampler
from alrs.env import FEATURES, make_env
from alrs.episodes import run_episode
from alrs.errors import UserError
from alrs.schedules import Constant, Linear
from alrs.tracker import RANDOM_INITIAL_LRS, EpisodeTracker


def test_observation_shape_dtype_order_and_reward(small_env_options: dict) -> None:
    env = make_env(**small_env_options)
    obs, info = env.reset(seed=0)
    assert obs.shape == (7,) and obs.dtype == np.float32 and env.observation_space.contains(obs)
    assert FEATURES == (
        "train_loss",
        "val_loss",
        "pred_var",
        "pred_change_var",
        "output_weight_mean",
        "output_weight_var",
        "lr",
    )
    assert obs[FEATURES.index("pred_change_var")] == 0.0  # nothing has changed yet
    for _ in range(4):
        obs, reward, terminated, truncated, info = env.step(2)
        assert np.all(np.isfinite(obs)) and obs.dtype == np.float32
        assert reward == -info["val_loss"]
        assert obs[0] == pytest.approx(info["train_loss"]) and obs[1] == pytest.approx(info["val_loss"])
        assert obs[6] == pytest.approx(info["lr"])
        w = env.model.output_layer.weight
        assert obs[4] == pytest.approx(float(w.detach().mean()), abs=1e-7) and obs[5] == pytest.approx(
            float(w.detach().var()), rel=1e-5
        )
        assert obs[2] > 0 and obs[3] > 0
    assert terminated and not truncated and info["step"] == 20
    assert set(info) >= {"train_loss", "val_loss", "val_acc", "lr", "step"}


def test_validation_loss_matches_an_independent_pass(small_env_options: dict) -> None:
    env = make_env(**small_env_options)
    env.reset(seed=3)
    _, _, _, _, info = env.step(2)
    with torch.no_grad():
        env.model.eval()
        logits = env.model(env.data.val_x[:500])
    probs = logits.softmax(1)
    assert info["val_loss"] == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, env.data.val_y[:500])), rel=1e-5
    )
    assert info["val_acc"] == pytest.approx(float((logits.argmax(1) == env.data.val_y[:500]).float().mean()))
    assert env._prev_probs.var().item() == pytest.approx(float(probs.var()), rel=1e-5)


@pytest.mark.parametrize("action,factor", [(0, 1.05), (1, 1 / 1.05), (2, 1.0)])
def test_discrete_actions_scale_the_lr_exactly(small_env_options: dict, action: int, factor: float) -> None:
    env = make_env(**small_env_options, initial_lr=1e-3)
    env.reset(seed=0)
    env.step(action)
    assert env.lr == pytest.approx(1e-3 * factor, rel=1e-12)


@pytest.mark.parametrize("action,factor", [(1.02, 1.02), (5.0, 1.1), (0.1, 1 / 1.1), (1.0, 1.0)])
def test_continuous_actions_are_clipped_to_the_range(small_env_options: dict, action: float, factor: float) -> None:
    env = make_env(**small_env_options, discrete=False, action_range=1.1, initial_lr=1e-3)
    env.reset(seed=0)
    env.step(np.array([action], dtype=np.float32))
    assert env.lr == pytest.approx(1e-3 * factor, rel=1e-6)


def test_lr_stays_within_bounds(small_env_options: dict) -> None:
    env = make_env(**small_env_options, initial_lr=0.095, action_range=1.5)
    env.reset(seed=0)
    env.step(0)
    assert env.lr == 0.1
    env = make_env(**small_env_options, initial_lr=1.2e-5, action_range=1.5)
    env.reset(seed=0)
    env.step(1)
    assert env.lr == 1e-5


def test_random_initial_lr_draws_from_the_paper_set(small_env_options: dict) -> None:
    env = make_env(**small_env_options, initial_lr="random")
    seen = {env.reset(seed=s)[1]["lr"] for s in range(30)}
    assert seen == set(RANDOM_INITIAL_LRS)


def test_the_initial_lr_spread_is_log_uniform_deterministic_by_seed_and_inside_the_bounds() -> None:
    config = EnvConfig(initial_lr=1e-3, initial_lr_spread=100.0, lr_min=1e-6, lr_max=1.0)

    def draw(seed: int, config: EnvConfig = config, options: dict | None = None) -> tuple[float, int]:
        tracker = EpisodeTracker(config)
        child_seed = tracker.begin(np_random(seed)[0], options)
        return tracker.initial_lr, child_seed

    decades = np.log10([draw(seed)[0] for seed in range(400)]) + 3  # log-uniform in [-2, 2]: x0.01 to x100
    assert decades.min() > -2 and decades.max() < 2 and min(-decades.min(), decades.max()) > 1.9
    assert abs(decades.mean()) < 0.2 and abs(decades.std() - 4 / math.sqrt(12)) < 0.1
    assert draw(3) == draw(3) and draw(3) != draw(4)
    # the child (its seed) is the one without the spread, so a spread run stays paired with a plain one
    assert draw(3, replace(config, initial_lr_spread=1.0)) == (1e-3, draw(3)[1])
    narrow = replace(config, lr_min=5e-4, lr_max=2e-3)
    assert all(5e-4 <= draw(seed, narrow)[0] <= 2e-3 for seed in range(50))
    assert draw(3, options={"initial_lr": 0.02})[0] == 0.02  # an evaluation's initial LR is not spread
    assert config.for_evaluation().initial_lr_spread == 1.0
    with pytest.raises(UserError, match="initial_lr_spread must be >= 1"):
        EnvConfig(initial_lr_spread=0.5)


def test_same_seed_same_everything(small_env_options: dict) -> None:
    def rollout(seed: int) -> tuple[list, list]:
        env = make_env(**small_env_options, lr_noise=0.1)
        obs, _ = env.reset(seed=seed)
        observations, rewards = [obs], []
        for a in (0, 1, 0, 2):
            obs, r, *_ = env.step(a)
            observations.append(obs)
            rewards.append(r)
        return observations, rewards

    a, b, c = rollout(5), rollout(5), rollout(6)
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0], strict=True)) and a[1] == b[1]
    assert not np.array_equal(a[0][-1], c[0][-1])


def test_initial_lr_option_keeps_child_and_batches_paired(small_env_options: dict) -> None:
    env = make_env(**small_env_options)
    env.reset(seed=9)
    weights = [p.clone() for p in env.model.parameters()]
    env.reset(seed=9, options={"initial_lr": 0.05})
    assert env.lr == 0.05
    assert all(torch.equal(p, q) for p, q in zip(weights, env.model.parameters(), strict=True))


def test_divergence_ends_the_episode_with_a_finite_penalty(small_env_options: dict) -> None:
    options = {**small_env_options, "num_train_steps": 40}
    env = make_env(**options)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step_lr(1e30)  # absurd LR: the weights overflow float32
    assert terminated and not truncated and info["diverged"]
    assert np.all(np.isfinite(obs)) and math.isfinite(reward) and math.isfinite(info["best_val_loss"])
    assert reward == pytest.approx(-5.0 * 8)  # divergence_loss for each of the 8 controller steps left
    with pytest.raises(RuntimeError, match="reset"):
        env.step(2)
    loss, acc = env.evaluate_test("best")
    assert math.isfinite(loss) and 0.0 <= acc <= 1.0


def test_best_checkpoint_is_the_lowest_validation_loss(small_env_options: dict) -> None:
    env = make_env(**small_env_options, initial_lr=0.01)
    env.reset(seed=1)
    losses = [env.step(2)[4]["val_loss"] for _ in range(4)]
    assert env.best_val_loss == pytest.approx(min(losses))
    model = env.model
    model.load_state_dict(env._best_state)
    with torch.no_grad():
        logits = model.eval()(env.data.val_x[:500])
    assert float(torch.nn.functional.cross_entropy(logits, env.data.val_y[:500])) == pytest.approx(
        min(losses), rel=1e-5
    )


def test_test_set_evaluation(small_env_options: dict) -> None:
    env = make_env(**small_env_options, initial_lr=0.01)
    env.reset(seed=1)
    for _ in range(4):
        env.step(2)
    (best_loss, best_acc), (loss, acc) = env.evaluate_test("best"), env.evaluate_test("current")
    assert 0 < best_loss < math.log(10) and 0.1 < best_acc <= 1.0
    assert 0 < loss and 0 <= acc <= 1


def test_gymnasium_env_checker_passes(small_env_options: dict) -> None:
    check_env(make_env(**small_env_options), skip_render_check=True)
    check_env(make_env(**small_env_options, discrete=False), skip_render_check=True)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"dataset": "svhn"}, "mnist, fa-mnist, cifar10"),
        ({"architecture": "vgg"}, "mlp, lenet5, cnn, resnet, paper-cnn"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"update_freq": 7}, "update_freq=7 must divide num_train_steps=1000"),
        ({"initial_lr": 2.0}, r"initial_lr must be a number in \(0, 1\] or 'random'"),
        ({"initial_lr": "fast"}, "initial_lr must be"),
        ({"action_range": 0.9}, "action_range must be > 1"),
        ({"val_size": -1}, "val_size must be a positive integer"),
        ({"device": "tpu"}, "device must be cpu, cuda or auto"),
        ({"initial_lr": 0.5}, r"initial_lr=0.5 is outside the controller's LR bounds \[1e-05, 0.1\]"),
    ],
)
def test_bad_options_fail_at_construction_in_one_line(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        EnvConfig(**options)
    assert "\n" not in str(err.value)


def test_batch_larger_than_training_set_is_refused(small_env_options: dict) -> None:
    with pytest.raises(ValueError, match="batch_size=100000 exceeds"):
        make_env(**{**small_env_options, "batch_size": 100_000})


def test_pinned_observations_for_a_fixed_seed(small_env_options: dict) -> None:
    """Guards speed work: the features of LeNet-5 on the fake data must not change."""
    env = make_env(**{**small_env_options, "architecture": "cnn"})
    env.reset(seed=123)
    env.step(0)
    obs, *_ = env.step(1)
    np.testing.assert_allclose(obs, PINNED_CNN_OBS, rtol=1e-4, atol=1e-7)


# Recorded with the first, unoptimized environment (plain NCHW, evaluation in chunks of 2500).
PINNED_CNN_OBS = np.array(
    [
        2.299298048019409,
        2.295926809310913,
        2.992954796354752e-05,
        1.1471458492451347e-05,
        -0.0013617126969620585,
        0.004276981111615896,
        0.0010000000474974513,
    ],
    dtype=np.float32,
)


@pytest.mark.parametrize("reward", ["val-loss", "log-best", "log-val"])
def test_each_reward_on_an_episode_computed_by_hand(small_env_options: dict, reward: str) -> None:
    """The rewards of one episode, recomputed from its validation losses: the paper's minus the
    loss; log-best telescopes to log(L_0 / B_T); log-val to log(L_0 / L_T)."""
    env = make_env(**small_env_options, reward=reward, initial_lr=0.05)
    _, info = env.reset(seed=1)
    losses, rewards = [info["val_loss"]], []
    for action in (0, 0, 1, 1):
        _, r, *_, info = env.step(action)
        losses.append(info["val_loss"])
        rewards.append(r)
    best = np.minimum.accumulate(losses)
    expected = {
        "val-loss": [-v for v in losses[1:]],
        "log-best": [math.log(best[t - 1]) - math.log(best[t]) for t in range(1, 5)],
        "log-val": [math.log(losses[t - 1]) - math.log(losses[t]) for t in range(1, 5)],
    }[reward]
    assert rewards == pytest.approx(expected, rel=1e-12)
    if reward == "log-best":
        assert sum(rewards) == pytest.approx(math.log(losses[0] / min(losses)))
        assert min(rewards) >= 0  # the best loss so far never rises


@pytest.mark.parametrize("base", ["constant", "linear"])
def test_the_relative_reward_is_the_log_ratio_of_the_reference_runs_loss_to_the_childs(
    small_env_options: dict, base: str
) -> None:
    """The reference is the base schedule alone on the same child: a hand-made run of it on the same seed."""
    options = {**small_env_options, "initial_lr": 0.02, "base_schedule": base}
    env = make_env(**options, reward="relative")
    _, info = env.reset(seed=4)
    best, rewards = [info["val_loss"]], []
    for action in (0, 0, 1, 0):
        _, r, *_, info = env.step(action)
        best.append(info["best_val_loss"])
        rewards.append(r)
    hand_made = Constant(0.02) if base == "constant" else Linear(0.02, 20)
    reference = run_episode(make_env(**options), hand_made, seed=4, test=False)
    assert env.episode.reference_best[-1] == reference.best_val_loss
    assert sum(rewards) == pytest.approx(math.log(reference.best_val_loss / best[-1]), rel=1e-9, abs=1e-12)
    # step by step: the child's log-best reward less the reference's
    ref = env.episode.reference_best
    own = [math.log(best[t - 1] / best[t]) - math.log(ref[t - 1] / ref[t]) for t in range(1, 5)]
    assert rewards == pytest.approx(own, rel=1e-9, abs=1e-12)
    # a policy that always keeps is the reference: nothing to win or lose, exactly
    env.reset(seed=4)
    assert [env.step(2)[1] for _ in range(4)] == [0.0] * 4
    # a diverging child is charged as log-best charges it, less the reference's whole gain
    env.reset(seed=4)
    (_, r, terminated, _, info), ref = env.step_lr(1e30), env.episode.reference_best
    assert info["diverged"] and terminated
    assert r == pytest.approx(math.log(info["best_val_loss"] / 5.0) - math.log(ref[0] / ref[-1]))
    # a diverging reference keeps its best (the untrained child's here) for the steps left
    env.reset(seed=4, options={"initial_lr": 1e30})
    assert env.episode.reference_best == [best[0]] * 5
    assert EnvConfig(reward="relative").for_evaluation().reward == "log-best"  # evaluations run no reference


def test_children_of_one_seed_share_one_reference_run_and_get_the_rewards_of_their_own(
    small_env_options: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """common_reset_seed gives every child of an iteration the same reference: it is trained once a process."""
    from alrs import env as env_module

    options = {**small_env_options, "initial_lr": 0.02, "reward": "relative", "initial_lr_spread": 10.0}
    trained = []
    run_reference = env_module.LREnv._run_reference

    def counted(self: env_module.LREnv, *args: Any) -> list[float]:
        trained.append(args)
        return run_reference(self, *args)

    monkeypatch.setattr(env_module.LREnv, "_run_reference", counted)

    def episode(env: env_module.LREnv, seed: int) -> list[float]:
        env.reset(seed=seed)
        return [env.step(action)[1] for action in (0, 1, 0, 2)] + list(env.episode.reference_best)

    env_module.REFERENCE_RUNS.clear()
    first, second = make_env(**options), make_env(**options)
    shared = [episode(first, 7), episode(second, 7)]
    assert len(trained) == 1 and shared[0] == shared[1]
    env_module.REFERENCE_RUNS.clear()
    assert episode(make_env(**options), 7) == shared[0]  # trained afresh: the same numbers
    episode(first, 8)  # another seed (another child and initial LR): its own reference
    assert len(trained) == 3 and first.episode.reference_best != shared[0][4:]
    assert len(env_module.REFERENCE_RUNS) == 2


def test_divergence_rewards_never_pay() -> None:
    from alrs.features import divergence_reward

    assert divergence_reward("val-loss", 0.5, 0.4, steps_left=3, divergence_loss=5.0) == -15.0
    assert divergence_reward("log-best", 0.5, 0.4, steps_left=3, divergence_loss=5.0) == pytest.approx(
        math.log(0.4 / 5.0)
    )
    assert divergence_reward("log-val", 0.5, 0.4, steps_left=3, divergence_loss=5.0) == pytest.approx(
        math.log(0.5 / 5.0)
    )


def test_log_lr_and_time_features(small_env_options: dict) -> None:
    env = make_env(**small_env_options, lr_feature="log-lr", time_feature=True, initial_lr=1e-2)
    assert env.config.features[-2:] == ("log_lr", "budget_left") and env.observation_space.shape == (8,)
    obs, _ = env.reset(seed=0)
    assert obs[6] == pytest.approx(1.0) and obs[7] == 1.0  # log10(1e-2 / 1e-3); the whole budget left
    obs, *_ = env.step(1)
    assert obs[6] == pytest.approx(1 - math.log10(1.05), rel=1e-6) and obs[7] == pytest.approx(0.75)
    for _ in range(3):
        obs, *_ = env.step(2)
    assert obs[7] == 0.0


def test_trend_features_are_the_log_ratios_of_the_losses(small_env_options: dict) -> None:
    env = make_env(**small_env_options, trend_features=True, feature_scale="relative")
    assert env.config.features[-2:] == ("train_loss_trend", "val_train_gap") and env.observation_space.shape == (9,)
    obs, info = env.reset(seed=0)
    assert obs[7] == 0.0 and obs[8] == 0.0  # before any step the validation loss stands in for the train loss
    prev_train = info["val_loss"]
    for action in (0, 0, 1):
        obs, _, _, _, info = env.step(action)
        assert obs[7] == pytest.approx(math.log(info["train_loss"] / prev_train), rel=1e-5, abs=1e-7)
        assert obs[8] == pytest.approx(math.log(info["val_loss"] / info["train_loss"]), rel=1e-5, abs=1e-7)
        prev_train = info["train_loss"]


@pytest.mark.parametrize("field,value", [("reward", "accuracy"), ("lr_feature", "sqrt-lr")])
def test_unknown_reward_or_feature_is_a_one_line_error(small_env_options: dict, field: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be one of"):
        EnvConfig(**{**small_env_options, field: value})


@pytest.mark.parametrize("field", ["lr_noise", "initial_lr_noise", "action_range", "lr_min", "divergence_loss"])
def test_non_finite_settings_are_refused(small_env_options: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        EnvConfig(**{**small_env_options, field: float("nan")})


def test_an_infinite_initial_lr_is_refused(small_env_options: dict) -> None:
    env = make_env(**small_env_options)
    with pytest.raises(ValueError, match="initial_lr must be a positive finite number"):
        env.reset(seed=0, options={"initial_lr": float("inf")})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_seed_gives_the_same_batches_on_every_device() -> None:
    cpu, cuda = (BatchSampler(1000, 100, seed=3, device=torch.device(d)) for d in ("cpu", "cuda"))
    for _ in range(25):  # two and a half epochs
        assert torch.equal(cpu.next(), cuda.next().cpu())


@pytest.mark.parametrize("action", [2.7, 1.0, True, np.float32(2), "2", np.array([1])])
def test_a_discrete_action_is_an_integer_of_the_action_space(small_env_options: dict, action: object) -> None:
    env = make_env(**small_env_options)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="discrete action must be the integer 0"):
        env.step(action)
    env.step(np.int64(2))
    env.step(torch.tensor(1))


@pytest.mark.parametrize("seed", [-1, 2**63, 1.5, True])
def test_a_seed_outside_its_domain_is_one_line(small_env_options: dict, seed: object) -> None:
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 9223372036854775807\]"):
        make_env(**small_env_options).reset(seed=seed)
