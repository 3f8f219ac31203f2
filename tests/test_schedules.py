from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from alrs.data import BatchSampler
from alrs.env import make_env
from alrs.episodes import run_episode
from alrs.errors import UserError
from alrs.grid import baseline_grid_search, best_keys
from alrs.protocol import reuse_results
from alrs.results import EpisodeResult, ResultStore
from alrs.schedules import PAPER_GRID, Constant, Cosine, Learned, StepDecay, paper_grid
from alrs.stats import format_table, summarize, welch_p


def test_step_decay_lr_at_every_step() -> None:
    schedule = StepDecay(0.01, discount_step=20, factor=0.9)
    assert [schedule.lr_at(s) for s in (0, 10, 19, 20, 30, 40, 990)] == pytest.approx(
        [0.01, 0.01, 0.01, 0.009, 0.009, 0.0081, 0.01 * 0.9**49], rel=1e-12
    )


def test_constant_and_cosine() -> None:
    assert {Constant(3e-4).lr_at(s) for s in range(0, 1000, 10)} == {3e-4}
    cosine = Cosine(0.1, 1000)
    assert (
        cosine.lr_at(0) == 0.1
        and cosine.lr_at(500) == pytest.approx(0.05)
        and cosine.lr_at(1000) == pytest.approx(0.0, abs=1e-12)
    )


def test_hand_made_schedules_set_exactly_that_lr_in_the_env(small_env_options: dict) -> None:
    env = make_env(**{**small_env_options, "num_train_steps": 40})
    schedule = StepDecay(0.05, discount_step=10, factor=0.88)
    result = run_episode(env, schedule, seed=0, test=False)
    assert result.curves["step"] == [0, 5, 10, 15, 20, 25, 30, 35, 40]
    # the LR reported after a controller step is the one used during it; hand-made LRs ignore the controller's bounds
    assert result.curves["lr"] == pytest.approx([0.05] + [schedule.lr_at(s) for s in range(0, 40, 5)], rel=1e-12)
    tiny = run_episode(env, Constant(1e-7), seed=0, test=False)
    assert tiny.curves["lr"][-1] == 1e-7


def test_paper_grid_has_48_distinct_points() -> None:
    grid = paper_grid()
    points = {(s.initial_lr, s.discount_step, s.factor) for s in grid}
    assert len(grid) == len(points) == 48
    assert {p[0] for p in points} == {0.1, 0.01, 0.001, 0.0001} and {p[1] for p in points} == {10, 20, 50, 100}
    assert {p[2] for p in points} == set(PAPER_GRID["factor"]) == {0.99, 0.9, 0.88}


def test_discount_step_must_fit_controller_steps(small_env_options: dict) -> None:
    with pytest.raises(ValueError, match="multiple of update_freq=5"):
        run_episode(make_env(**small_env_options), StepDecay(0.01, 7, 0.9), seed=0)


def test_paired_seeding_gives_every_schedule_the_same_child(
    small_env_options: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = make_env(**small_env_options)
    initial_weights, batches = [], []
    real_reset, real_next = type(env).reset, BatchSampler.next

    def record_reset(self, **kwargs):
        out = real_reset(self, **kwargs)
        initial_weights.append([p.detach().clone() for p in self.model.parameters()])
        return out

    def record_batch(self):
        idx = real_next(self)
        batches[-1].append(idx.clone())
        return idx

    monkeypatch.setattr(type(env), "reset", record_reset)
    monkeypatch.setattr(BatchSampler, "next", record_batch)
    for schedule in (Constant(0.01), StepDecay(0.1, 10, 0.9), Constant(1e-4)):
        batches.append([])
        run_episode(env, schedule, seed=42, test=False)
    assert all(torch.equal(a, b) for w in initial_weights[1:] for a, b in zip(initial_weights[0], w, strict=True))
    assert all(torch.equal(a, b) for run in batches[1:] for a, b in zip(batches[0], run, strict=True))


def test_grid_search_resumes_after_an_interruption(
    small_env_options: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import alrs.episodes as episodes

    env = make_env(**{**small_env_options, "num_train_steps": 10})
    path = tmp_path / "grid.json"
    real_run, calls = episodes.run_episode, []

    def counted(env, schedule, seed, test=True):
        calls.append(schedule.name)
        return real_run(env, schedule, seed, test)

    def interrupted(env, schedule, seed, test=True):
        if len(calls) == 4:
            raise KeyboardInterrupt  # Ctrl-C during the fifth point
        return counted(env, schedule, seed, test)

    monkeypatch.setattr(episodes, "run_episode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        baseline_grid_search(env, seed=0, path=path, progress=False)
    assert len(json.loads(path.read_text())["results"]) == 4
    calls.clear()
    monkeypatch.setattr(episodes, "run_episode", counted)
    data = baseline_grid_search(env, seed=0, path=path, progress=False)
    # 48 step decays, 4 constants, 6 cosine, 6 linear; the peers: 24 schedule-free (on 10 steps the warm-ups
    # of 5 and 10% are both 1 step), 12 prodigy, 9 adam + ema
    assert len(calls) == 109 - 4 and len(data["results"]) == 109
    sizes = {"step-decay": 48, "constant": 4, "schedule-free": 24, "prodigy": 12, "adam-ema": 9}
    for family, best in best_keys().items():
        finals = {k: r["final_val_loss"] for k, r in data["results"].items() if r["schedule"]["family"] == family}
        assert len(finals) == sizes.get(family, 6)
        assert data[best] == min(finals, key=finals.get)
    assert all(r["best_val_loss"] <= r["final_val_loss"] for r in data["results"].values())


def test_result_store_refuses_other_settings(tmp_path: Path) -> None:
    ResultStore(tmp_path / "s.json", {"batch_size": 1000}).update(note=1)
    with pytest.raises(ValueError, match="other settings \\(batch_size\\)"):
        ResultStore(tmp_path / "s.json", {"batch_size": 500})


def test_a_controller_test_reuses_the_baselines_runs_of_the_same_child_settings(tmp_path: Path) -> None:
    child = {"dataset": "fa-mnist", "architecture": "mlp", "batch_size": 50, "update_freq": 5}
    child |= {"num_train_steps": 20, "val_size": 500}
    baselines = ResultStore(tmp_path / "baselines.json", {**child, "initial_lr": "random", "seeds": [1000, 1001]})
    for key in ("cosine | seed 1000", "cosine | seed 1001", "linear | seed 1000"):
        baselines.add(key, _result(0.3, 0.9))
    # The controller's settings (reward, initial LR) differ; the child's agree: its cosine runs are reused.
    store = ResultStore(tmp_path / "test.json", {**child, "initial_lr": 0.01, "reward": "log-best", "seeds": [1000]})
    store.add("cosine | seed 1001", _result(0.4, 0.8))
    keys = ["cosine | seed 1000", "cosine | seed 1001", "linear | seed 1001"]
    assert reuse_results(store, baselines.path, keys) == ["cosine | seed 1000"]
    assert (
        store["cosine | seed 1000"] == baselines["cosine | seed 1000"]
        and store["cosine | seed 1001"].test_loss_best == 0.4
    )
    assert "cosine | seed 1000" in ResultStore(store.path, store.settings)  # saved
    other = ResultStore(tmp_path / "other.json", {**child, "batch_size": 100})
    with pytest.raises(UserError, match="other child settings \\(batch_size\\)"):
        reuse_results(other, baselines.path, keys)
    assert "cosine | seed 1000" not in other
    assert reuse_results(store, tmp_path / "missing.json", keys) == []


def _result(loss: float, acc: float) -> EpisodeResult:
    return EpisodeResult({}, 0, loss, loss, 0, False, loss, acc, loss + 0.01, acc - 0.01)


def test_welch_t_test_and_table_on_fixed_numbers() -> None:
    learned = [0.2351, 0.2300, 0.2400, 0.2380, 0.2320]
    decay = [0.2497, 0.2450, 0.2540, 0.2520, 0.2480]
    # Welch by hand: t = -6.0922, Welch-Satterthwaite df = 7.788, two-sided p = 3.2505e-4
    # (Student's pooled-variance test would give 2.92e-4: the test must be Welch's)
    assert welch_p(learned, decay) == pytest.approx(3.2505e-4, rel=1e-3)
    assert math.isnan(welch_p([1.0], [2.0, 3.0])) and math.isnan(welch_p([1.0, 1.0], [1.0, 1.0]))
    results = {
        "step-decay": [_result(x, 0.91 - i * 1e-3) for i, x in enumerate(decay)],
        "learned@0.01": [_result(x, 0.92 + i * 1e-3) for i, x in enumerate(learned)],
    }
    labels = {"step-decay": "step decay", "learned@0.01": "learned from lr=0.01"}
    summary = summarize(results, labels, [("learned@0.01", "step-decay")])
    assert summary["schedules"]["learned@0.01"]["test_loss_best"]["mean"] == pytest.approx(np.mean(learned))
    assert summary["schedules"]["learned@0.01"]["test_loss_best"]["std"] == pytest.approx(np.std(learned, ddof=1))
    (comparison,) = summary["comparisons"]
    assert comparison["welch_p"]["test_loss_best"] == pytest.approx(3.2505e-4, rel=1e-3)
    # Paired by seed: the differences -0.0146, -0.015, -0.014, -0.014, -0.016 give t = -39.57, df = 4
    assert comparison["mean_diff"]["test_loss_best"] == pytest.approx(-0.01472)
    assert comparison["paired_p"]["test_loss_best"] == pytest.approx(2.4375e-6, rel=1e-3)
    table = format_table(summary, reference="step-decay")
    assert "| learned from lr=0.01 | 0.2350* (0.0041) |" in table
    assert "| step decay | 0.2497 (0.0035) |" in table
    assert "| learned from lr=0.01 | step decay | -0.0147 | 0.000325 |" in table


def test_learned_schedule_refuses_a_mismatched_env(small_env_options: dict) -> None:
    from alrs.controller import Controller

    continuous = Controller(7, {"type": "box", "low": 1 / 1.05, "high": 1.05}).checkpoint({"features": []})
    with pytest.raises(ValueError, match="trained on features"):
        Learned(continuous).check(make_env(**small_env_options))
    continuous["metadata"] = {}
    with pytest.raises(ValueError, match="the controller's actions are"):
        Learned(continuous).check(make_env(**small_env_options))
    wide = Controller(9, {"type": "discrete", "n": 3}).checkpoint()
    with pytest.raises(ValueError, match="takes 9 features"):
        Learned(wide).check(make_env(**small_env_options))


def test_learned_schedule_refuses_another_feature_set(small_env_options: dict) -> None:
    from alrs.controller import Controller

    paper = Controller(7, {"type": "discrete", "n": 3}).checkpoint(
        {"features": list(make_env(**small_env_options).config.features)}
    )
    with pytest.raises(ValueError, match=r"trained on features .* --lr-feature and --time-feature"):
        Learned(paper).check(make_env(**small_env_options, time_feature=True))
    Learned(paper).check(make_env(**small_env_options))


@pytest.mark.parametrize("discrete", [True, False], ids=["discrete", "box"])
def test_a_sampled_learned_schedule_is_reproducible_from_the_episode_seed(
    small_env_options: dict, discrete: bool
) -> None:
    """test.py --policy sample: an episode's actions come from a generator seeded with its seed (a rerun
    gives the same schedule, whatever torch's global generator holds), and the child stays paired."""
    from alrs.controller import Controller, describe_action_space

    env = make_env(**small_env_options, discrete=discrete, initial_lr=1e-3)
    controller = Controller(7, describe_action_space(env.action_space))
    checkpoint = controller.checkpoint({"features": list(env.config.features)})
    sampled = Learned(checkpoint, policy="sample")

    def episode(schedule: Learned, seed: int, global_seed: int = 0) -> dict[str, list[float]]:
        torch.manual_seed(global_seed)  # torch's global generator must play no part
        return run_episode(env, schedule, seed, test=False).curves

    first = episode(sampled, 1)
    assert episode(sampled, 1, global_seed=1)["lr"] == first["lr"]
    assert episode(sampled, 2)["lr"] != first["lr"]
    mode = episode(Learned(checkpoint), 1)
    assert mode["lr"] != first["lr"] and mode["val_loss"][0] == first["val_loss"][0]  # same child, other actions
    with pytest.raises(ValueError, match="mode, sample"):
        Learned(checkpoint, policy="greedy")


def test_linear_schedule_and_the_annealing_grid() -> None:
    from alrs.schedules import ANNEALING_GRID_LRS, Linear, annealing_grid

    linear = Linear(0.01, 200)
    assert (
        linear.lr_at(0) == 0.01
        and linear.lr_at(100) == pytest.approx(0.005)
        and linear.lr_at(190) == pytest.approx(5e-4)
    )
    grid = annealing_grid(200)
    assert [s.family for s in grid] == ["cosine"] * 6 + ["linear"] * 6
    assert [s.initial_lr for s in grid[:6]] == list(ANNEALING_GRID_LRS)
