"""Each action kind through alrs.actions alone: its space, its rule (LR, action) -> next LR, its spec."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch
from gymnasium import spaces

from alrs.actions import ACTIONS, SETTINGS, ContinuousScale, DiscreteScale, action_kind, action_of, checkpoint_action
from alrs.config import EnvConfig
from alrs.controller import describe_action_space
from alrs.errors import UserError

BOUNDS = {"lr_min": 1e-5, "lr_max": 1e-1}


def _error(call: Callable[[], object]) -> str:
    with pytest.raises(UserError) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_the_config_chooses_the_kind_and_its_settings() -> None:
    discrete, continuous = EnvConfig(), EnvConfig(discrete=False, action_range=1.3)
    assert action_of(discrete) == DiscreteScale(action_range=1.05, **BOUNDS)
    assert action_of(continuous) == ContinuousScale(action_range=1.3, **BOUNDS)
    assert [action_kind(vars(c)) for c in (discrete, continuous)] == ["discrete-scale", "continuous-scale"]
    assert set(ACTIONS) == {"discrete-scale", "continuous-scale"}
    assert SETTINGS == ("discrete", "action_range", "lr_min", "lr_max")
    assert all(set(cls.settings) <= set(SETTINGS) <= set(vars(discrete)) for cls in ACTIONS.values())


@pytest.mark.parametrize("kind", list(ACTIONS))
def test_every_kind_owns_its_space_spec_and_description(kind: str) -> None:
    action = ACTIONS[kind](action_range=1.2, **BOUNDS)
    assert action.spec() == describe_action_space(action.space)
    assert isinstance(action.describe(), str) and "\n" not in action.describe()
    # the recorded settings give the same action back, and accept the spec it saves
    settings = {"discrete": kind == "discrete-scale", "action_range": 1.2, **BOUNDS}
    assert checkpoint_action(settings, action.spec(), "ckpt") == action == action_of(settings)
    sample = action.space.sample()
    assert action.space.contains(sample) and BOUNDS["lr_min"] <= action.next_lr(1e-3, sample) <= BOUNDS["lr_max"]


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
    ups = [action.next_lr(1e-3, a) for a in (0, 1, 2, np.int64(1), torch.tensor(0), np.array(2))]
    assert ups == pytest.approx([1.2e-3, 1e-3 / 1.2, 1e-3, 1e-3 / 1.2, 1.2e-3, 1e-3], rel=1e-15)
    assert action.next_lr(0.095, 0) == 0.1 and action.next_lr(1e-5, 1) == 1e-5  # clipped to [lr_min, lr_max]
    assert action.next_lr(1e-3, 2, log_noise=math.log(2)) == pytest.approx(2e-3)
    assert action.next_lr(1e-3, 0) == 1e-3 * 1.2 * math.exp(0.0)  # the same arithmetic as ever, bit for bit


def test_a_continuous_action_is_a_factor_clipped_to_the_range_and_the_bounds() -> None:
    action = ContinuousScale(action_range=1.2, **BOUNDS)
    assert action.next_lr(1e-3, np.array([1.1], dtype=np.float32)) == pytest.approx(1.1e-3, rel=1e-7)
    assert action.next_lr(1e-3, np.array([5.0], dtype=np.float32)) == pytest.approx(1.2e-3)  # the range
    assert action.next_lr(1e-3, 0.5) == pytest.approx(1e-3 / 1.2)
    assert action.next_lr(0.095, [1.2]) == 0.1 and action.next_lr(1.1e-5, 0.5) == 1e-5  # the bounds
    assert action.next_lr(1e-3, 1.0, log_noise=math.log(0.5)) == pytest.approx(5e-4)


@pytest.mark.parametrize("bad", [3, -1, 2.7, 1.0, True, np.float32(2), "2", np.array([1]), np.array([0, 1])])
def test_a_discrete_action_outside_the_space_is_refused(bad: object) -> None:
    message = _error(lambda: DiscreteScale(action_range=1.2, **BOUNDS).next_lr(1e-3, bad))
    assert message.startswith("discrete action must be the integer 0 (increase), 1 (decrease) or 2 (keep)")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), np.array([1.0, 1.1]), []])
def test_a_continuous_action_that_is_not_one_finite_factor_is_refused(bad: object) -> None:
    message = _error(lambda: ContinuousScale(action_range=1.2, **BOUNDS).next_lr(1e-3, bad))
    assert message.startswith("a continuous action is one finite LR factor")


@pytest.mark.parametrize("kind", list(ACTIONS))
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
