"""Each action kind through alrs.actions alone: its space, its rule (LR, action) -> next LR, its spec."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces

from alrs.actions import (
    ACTIONS,
    BASE_SCHEDULES,
    LHOPT_FACTORS,
    SETTINGS,
    ContinuousScale,
    DiscreteFactors,
    DiscreteScale,
    action_kind,
    action_of,
    checkpoint_action,
)
from alrs.config import EnvConfig
from alrs.controller import describe_action_space
from alrs.env import LREnv
from alrs.episodes import run_episode
from alrs.errors import UserError
from alrs.schedules import Cosine, Linear, Schedule

BOUNDS = {"lr_min": 1e-5, "lr_max": 1e-1}
KIND_SETTINGS = {  # the settings that choose each kind, and its own beyond the bounds
    "discrete-scale": ({"discrete": True, "action_set": "scale"}, {"action_range": 1.2}),
    "continuous-scale": ({"discrete": False, "action_set": "scale"}, {"action_range": 1.2}),
    "discrete-factors": ({"discrete": True, "action_set": "lhopt"}, {}),
}


def _error(call: Callable[[], object]) -> str:
    with pytest.raises(UserError) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_the_config_chooses_the_kind_and_its_settings() -> None:
    discrete, continuous = EnvConfig(), EnvConfig(discrete=False, action_range=1.3)
    lhopt = EnvConfig(action_set="lhopt", base_schedule="cosine")
    assert action_of(discrete) == DiscreteScale(action_range=1.05, **BOUNDS)
    assert action_of(discrete).base_schedule == "constant"  # the paper's: the level is the LR
    assert action_of(continuous) == ContinuousScale(action_range=1.3, **BOUNDS)
    assert action_of(lhopt) == DiscreteFactors(**BOUNDS, base_schedule="cosine")
    assert [action_kind(vars(c)) for c in (discrete, continuous, lhopt)] == list(KIND_SETTINGS)
    assert set(ACTIONS) == set(KIND_SETTINGS)
    assert SETTINGS == ("discrete", "action_set", "action_range", "lr_min", "lr_max", "base_schedule")
    assert all(set(cls.settings) <= set(SETTINGS) <= set(vars(discrete)) for cls in ACTIONS.values())


@pytest.mark.parametrize("base", list(BASE_SCHEDULES))
@pytest.mark.parametrize("kind", list(ACTIONS))
def test_every_kind_owns_its_space_spec_and_description(kind: str, base: str) -> None:
    choice, own = KIND_SETTINGS[kind]
    action = ACTIONS[kind](**own, **BOUNDS, base_schedule=base)
    assert action.spec() == describe_action_space(action.space)
    assert isinstance(action.describe(), str) and "\n" not in action.describe()
    assert (base in action.describe()) == (base != "constant")
    # the recorded settings give the same action back, and accept the spec it saves
    settings = {**choice, "action_range": 1.2, **BOUNDS, "base_schedule": base}
    assert checkpoint_action(settings, action.spec(), "ckpt") == action == action_of(settings)
    sample = action.space.sample()
    assert action.space.contains(sample) and BOUNDS["lr_min"] <= action.next_level(1e-3, sample) <= BOUNDS["lr_max"]


def test_the_saved_specs_are_exactly_those_of_every_committed_checkpoint() -> None:
    assert DiscreteScale(action_range=1.05, **BOUNDS).spec() == {"type": "discrete", "n": 3}
    spec = ContinuousScale(action_range=1.05, **BOUNDS).spec()
    assert spec == {"type": "box", "low": float(np.float32(1 / 1.05)), "high": float(np.float32(1.05))}
    assert all(type(value) is float for value in (spec["low"], spec["high"]))
    space = ContinuousScale(action_range=1.05, **BOUNDS).space
    assert isinstance(space, spaces.Box) and space.shape == (1,) and space.dtype == np.float32
    assert DiscreteScale(action_range=1.05, **BOUNDS).space == spaces.Discrete(3)


def test_discrete_actions_scale_keep_and_stay_within_the_bounds() -> None:
    action = DiscreteScale(action_range=1.2, **BOUNDS)
    ups = [action.next_level(1e-3, a) for a in (0, 1, 2, np.int64(1), torch.tensor(0), np.array(2))]
    assert ups == pytest.approx([1.2e-3, 1e-3 / 1.2, 1e-3, 1e-3 / 1.2, 1.2e-3, 1e-3], rel=1e-15)
    assert action.next_level(0.095, 0) == 0.1 and action.next_level(1e-5, 1) == 1e-5  # clipped to [lr_min, lr_max]
    assert action.next_level(1e-3, 2, log_noise=math.log(2)) == pytest.approx(2e-3)
    assert action.next_level(1e-3, 0) == 1e-3 * 1.2 * math.exp(0.0)  # the same arithmetic as ever, bit for bit


def test_a_continuous_action_is_a_factor_clipped_to_the_range_and_the_bounds() -> None:
    action = ContinuousScale(action_range=1.2, **BOUNDS)
    assert action.next_level(1e-3, np.array([1.1], dtype=np.float32)) == pytest.approx(1.1e-3, rel=1e-7)
    assert action.next_level(1e-3, np.array([5.0], dtype=np.float32)) == pytest.approx(1.2e-3)  # the range
    assert action.next_level(1e-3, 0.5) == pytest.approx(1e-3 / 1.2)
    assert action.next_level(0.095, [1.2]) == 0.1 and action.next_level(1.1e-5, 0.5) == 1e-5  # the bounds
    assert action.next_level(1e-3, 1.0, log_noise=math.log(0.5)) == pytest.approx(5e-4)


@pytest.mark.parametrize("bad", [3, -1, 2.7, 1.0, True, np.float32(2), "2", np.array([1]), np.array([0, 1])])
def test_a_discrete_action_outside_the_space_is_refused(bad: object) -> None:
    message = _error(lambda: DiscreteScale(action_range=1.2, **BOUNDS).next_level(1e-3, bad))
    assert message.startswith("discrete action must be the integer 0 (increase), 1 (decrease) or 2 (keep)")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), np.array([1.0, 1.1]), []])
def test_a_continuous_action_that_is_not_one_finite_factor_is_refused(bad: object) -> None:
    message = _error(lambda: ContinuousScale(action_range=1.2, **BOUNDS).next_level(1e-3, bad))
    assert message.startswith("a continuous action is one finite LR factor")


@pytest.mark.parametrize("kind", ["discrete-scale", "continuous-scale"])
def test_a_range_of_at_most_one_is_refused(kind: str) -> None:
    assert "action_range must be > 1" in _error(lambda: ACTIONS[kind](action_range=1.0, **BOUNDS))
    assert "action_range must be > 1" in _error(lambda: EnvConfig(discrete=kind == "discrete-scale", action_range=0.5))


def test_a_checkpoint_whose_spec_contradicts_its_settings_is_refused() -> None:
    config = EnvConfig(discrete=False, action_range=1.3)
    box = action_of(config).spec()
    assert checkpoint_action(vars(config), box, "best.pt") == action_of(config)
    other = action_of(replace(config, action_range=1.5)).spec()
    assert _error(lambda: checkpoint_action(vars(config), other, "best.pt")).startswith(
        "best.pt: the controller's actions are {'type': 'box'"
    )
    assert "its metadata says {'type': 'discrete', 'n': 3}" in _error(
        lambda: checkpoint_action(vars(replace(config, discrete=True)), box, "best.pt")
    )


def test_lhopt_actions_scale_the_level_by_its_seven_factors() -> None:
    action = DiscreteFactors(**BOUNDS)
    assert action.space == spaces.Discrete(7) and action.spec() == {"type": "discrete", "n": 7}
    assert LHOPT_FACTORS == pytest.approx([0.5, 0.7071068, 0.9, 1.0, 1.1, 1.4142136, 2.0])
    assert [action.next_level(1e-3, a) for a in range(7)] == [1e-3 * f for f in LHOPT_FACTORS]
    assert action.next_level(1e-3, np.int64(3)) == 1e-3  # action 3 keeps
    assert action.next_level(0.08, 6) == 0.1 and action.next_level(1.5e-5, 0) == 1e-5  # clipped to the bounds
    for bad in (7, -1, 2.0, True):
        assert _error(lambda bad=bad: action.next_level(1e-3, bad)).startswith("discrete action must be an integer")
    assert "action_set lhopt is discrete" in _error(lambda: EnvConfig(action_set="lhopt", discrete=False))
    assert "action_set must be one of scale, lhopt" in _error(lambda: EnvConfig(action_set="lhop"))


def test_each_base_schedule_has_its_documented_shape() -> None:
    total = 200
    shape = {name: [f(step, total) for step in range(0, total, 10)] for name, f in BASE_SCHEDULES.items()}
    assert shape["constant"] == [1.0] * 20
    assert shape["linear"] == pytest.approx([1 - s / total for s in range(0, total, 10)])
    assert shape["cosine"] == pytest.approx([0.5 * (1 + math.cos(math.pi * s / total)) for s in range(0, total, 10)])
    # warmup-linear: up over the first 5% (10 steps), then linear to 0; never 0 at a step the run takes
    warm = shape["warmup-linear"]
    assert warm[0] == pytest.approx(0.1) and warm[1] == 1.0 and warm[-1] == pytest.approx(10 / 190)
    assert all(a > b for a, b in itertools.pairwise(warm[1:])) and min(warm) > 0
    assert all(0.0 <= value <= 1.0 for values in shape.values() for value in values)
    assert "base_schedule must be one of constant, linear" in _error(lambda: EnvConfig(base_schedule="step"))


@pytest.mark.parametrize("base", list(BASE_SCHEDULES))
def test_the_lr_is_the_level_times_the_base_and_the_level_keeps_the_bounds(base: str) -> None:
    action = DiscreteScale(action_range=2.0, **BOUNDS, base_schedule=base)
    for step in (0, 50, 190):
        assert action.lr(3e-3, step, 200) == 3e-3 * BASE_SCHEDULES[base](step, 200)
    # the level is clipped, not the LR: a decay to 0 goes below lr_min as the base schedule says
    assert action.next_level(0.08, 0) == 0.1 and action.lr(1e-5, 190, 200) <= 1e-5
    assert DiscreteScale(action_range=2.0, **BOUNDS).lr(3e-3, 190, 200) == 3e-3  # constant: the level is the LR


class _AlwaysKeep(Schedule):
    """A policy that always keeps: under residual control it must follow the base schedule exactly."""

    family = name = "always-keep"

    def __init__(self, keep: Any, initial_lr: float):
        self.keep, self.initial_lr = keep, initial_lr

    def reset_options(self) -> dict[str, Any]:
        return {"initial_lr": self.initial_lr}

    def step(self, env: LREnv, obs: np.ndarray, info: dict[str, Any]) -> Any:
        return env.step(self.keep)


@pytest.mark.parametrize(
    ("base", "hand_made", "choice", "keep"),
    [
        ("linear", Linear, {"action_set": "lhopt"}, 3),
        ("cosine", Cosine, {}, 2),
        ("linear", Linear, {"discrete": False, "action_range": 2.0}, np.array([1.0], dtype=np.float32)),
    ],
)
def test_always_keeping_on_a_base_schedule_is_that_schedule_bit_for_bit(
    small_env_options: dict, base: str, hand_made: type, choice: dict, keep: Any
) -> None:
    config = EnvConfig(**{**small_env_options, **choice, "base_schedule": base})
    env = LREnv(config)
    kept = run_episode(env, _AlwaysKeep(keep, 3e-3), seed=5, test=False).curves
    schedule = run_episode(env, hand_made(3e-3, config.num_train_steps), seed=5, test=False).curves
    assert kept["lr"][1:] == schedule["lr"][1:]  # [0]: the reset's, before any step
    assert kept["val_loss"] == schedule["val_loss"] and kept["train_loss"] == schedule["train_loss"]
    assert kept["lr"][1] == 3e-3 and kept["lr"][-1] < kept["lr"][2] < 3e-3  # it does decay
