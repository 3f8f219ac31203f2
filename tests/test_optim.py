"""The child's optimizer as a setting, weight averaging, and the peers (Schedule-Free AdamW, Prodigy, Adam + EMA)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli import call_script, small_flags
from test_scheduler import _checkpoint

from alrs.cli import config_of, parse_args
from alrs.config import EnvConfig
from alrs.env import make_env
from alrs.episodes import run_episode
from alrs.errors import UserError
from alrs.grid import baseline_grid_search, best_keys, schedule_from_record
from alrs.optim import OPTIMIZERS, build_optimizer, evaluation_weights
from alrs.peers import PEER_FAMILIES, adam_ema, peer_grid, prodigy, schedule_free
from alrs.scheduler import LearnedLRScheduler
from alrs.schedules import Constant, Learned
from alrs.vector_env import check_batchable


@torch.no_grad()
def _loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    loss = float(F.cross_entropy(model(x), y))
    model.train()
    return loss


def test_optimizer_settings_come_from_flags_and_config_files(tmp_path: Path) -> None:
    flags = ["--optimizer", "schedulefree-adamw", "--warmup-steps", "3", "--beta1", "0.95", "--weight-decay", "0.01"]
    config = config_of(EnvConfig, parse_args("train", flags))
    assert (config.optimizer, config.warmup_steps, config.beta1, config.weight_decay) == (
        "schedulefree-adamw",
        3,
        0.95,
        0.01,
    )
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"optimizer": "prodigy", "d_coef": 0.5, "weight_average": "ema:0.9"}))
    config = config_of(EnvConfig, parse_args("train", ["--config", str(path)]))
    assert (config.optimizer, config.d_coef, config.weight_average) == ("prodigy", 0.5, "ema:0.9")
    assert config_of(EnvConfig, parse_args("train", [])).optimizer == "adam"  # the paper's, the default
    path.write_text(json.dumps({"optimizer": "lion"}))
    with pytest.raises(UserError, match=f"optimizer must be one of {', '.join(OPTIMIZERS)}"):
        config_of(EnvConfig, parse_args("train", ["--config", str(path)]))


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--optimizer", "lion", f"optimizer must be one of {', '.join(OPTIMIZERS)}, got 'lion'"),
        ("--weight-average", "ema:1.5", "weight_average must be ema:DECAY with DECAY in (0, 1)"),
        ("--beta2", "1", "beta2 must be a number in [0, 1)"),
        ("--warmup-steps", "-1", "warmup_steps must be an integer >= 0"),
    ],
)
def test_a_bad_optimizer_setting_is_one_line(flag: str, value: str, message: str, data_dir: Path) -> None:
    result = call_script("train.py", *small_flags(data_dir), flag, value, "--episodes", "2")
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_schedule_free_evaluation_weights_feed_features_best_copy_and_test(small_env_options: dict) -> None:
    env = make_env(**small_env_options, optimizer="schedulefree-adamw", initial_lr=0.01)
    env.reset(seed=0)
    obs, _, _, _, info = env.step_lr(0.01)
    optimizer, model = env.optimizer, env.model
    assert optimizer.param_groups[0]["train_mode"]  # back in training mode after the observation
    train_weights = _loss(model, env.val_x, env.val_y)
    with evaluation_weights(optimizer):
        eval_weights = _loss(model, env.val_x, env.val_y)
        eval_state = {k: v.clone() for k, v in model.state_dict().items()}
        weight = model.output_layer.weight.detach().clone()
        test_current = _loss(model, env.data.test_x, env.data.test_y)
    assert abs(train_weights - eval_weights) > 1e-3  # the two sets of weights differ here
    assert info["val_loss"] == pytest.approx(eval_weights, rel=1e-5)
    assert obs[4] == pytest.approx(float(weight.mean()), rel=1e-5, abs=1e-7)  # output-layer weight mean
    assert env.best_step == env.optimizer_steps  # this step improved, so the best copy was taken now
    # (equal up to rounding: schedule-free's swap between its weights is a float interpolation, not a copy)
    assert all(torch.allclose(env._best_state[k], v, rtol=1e-5, atol=1e-7) for k, v in eval_state.items())
    assert env.evaluate_test("current")[0] == pytest.approx(test_current, rel=1e-5)
    assert env.evaluate_test("best")[0] == pytest.approx(test_current, rel=1e-5)
    assert optimizer.param_groups[0]["train_mode"]


def test_weight_averaging_on_and_off(small_env_options: dict) -> None:
    off = run_episode(make_env(**small_env_options), Constant(0.05), seed=3, test=False)
    explicit = run_episode(make_env(**small_env_options, weight_average=None), Constant(0.05), seed=3, test=False)
    assert off.curves == explicit.curves

    env = make_env(**small_env_options, weight_average="ema:0.5", optimizer="sgd")
    env.reset(seed=3)
    _, _, _, _, info = env.step_lr(0.05)
    averaged = env._averager.module
    assert info["val_loss"] == pytest.approx(_loss(averaged, env.val_x, env.val_y), rel=1e-5)
    assert abs(_loss(env.model, env.val_x, env.val_y) - info["val_loss"]) > 1e-4
    uniform = make_env(**small_env_options, weight_average="uniform")
    uniform.reset(seed=3)
    for _ in range(2):
        uniform.step_lr(0.05)
    assert int(uniform._averager.n_averaged) == 2 * small_env_options["update_freq"]
    # A hand-made baseline runs the paper's Adam whatever the env's optimizer: its results are the grid's.
    baseline = run_episode(env, Constant(0.05), seed=3, test=False)
    assert baseline.curves == off.curves


def test_prodigy_records_its_effective_lr(small_env_options: dict) -> None:
    env = make_env(**small_env_options)
    result = run_episode(env, prodigy(1.0, "constant", small_env_options["num_train_steps"]), seed=0, test=False)
    group = env.optimizer.param_groups[0]
    assert result.curves["lr"][0] == pytest.approx(1e-6)  # lr 1 x Prodigy's first estimate d0
    assert result.curves["lr"][-1] == pytest.approx(group["lr"] * group["d"]) and group["d"] != 1e-6


def test_training_records_prodigys_effective_lr(data_dir: Path, tmp_path: Path) -> None:
    flags = ["--optimizer", "prodigy", "--initial-lr", "1", "--lr-max", "2", "--num-envs", "2", "--episodes", "2"]
    result = call_script("train.py", *small_flags(data_dir), *flags, "--out-dir", str(tmp_path), "--eval-every", "0")
    assert result.returncode == 0, result.stderr
    (run,) = tmp_path.iterdir()
    with open(run / "metrics.csv", newline="") as f:
        final_lrs = [float(row["final_lr"]) for row in csv.DictReader(f)]
    # The controller's LR is 1 x 1.05^k; what is recorded is that times Prodigy's estimate d.
    assert final_lrs and all(
        abs(math.log(lr) / math.log(1.05) - round(math.log(lr) / math.log(1.05))) > 1e-6 for lr in final_lrs
    )


def test_the_peers_grid_and_their_records(small_env_options: dict) -> None:
    peers = peer_grid(200)
    assert len(peers) == len({p.name for p in peers}) == 32 + 12 + 9
    # As widely as their authors tune them: Schedule-Free's warm-ups of 0 to 20% and beta1 0.9 / 0.95, Prodigy's
    # d_coef held, decayed or warmed up (with its safeguard_warmup) then decayed.
    sf = {(p.optimizer["warmup_steps"], p.optimizer["beta1"]) for p in peers if p.family == "schedule-free"}
    assert sf == {(w, b) for w in (0, 10, 20, 40) for b in (0.9, 0.95)}
    assert {(p.optimizer["d_coef"], p.shape.family, p.optimizer["safeguard_warmup"]) for p in peers[32:44]} == {
        (d, s, s == "warmup-linear") for d in (0.5, 1.0, 2.0) for s in ("constant", "cosine", "linear", "warmup-linear")
    }
    # The points that were in the narrower grids keep their labels and records (grid files and stores key on them).
    assert schedule_free(0.01, 10).label == "schedule-free adamw (lr=0.01, warm-up 10)"
    assert schedule_free(0.01, 10).describe()["optimizer"] == {"optimizer": "schedulefree-adamw", "warmup_steps": 10}
    assert prodigy(1.0, "cosine", 200).describe()["optimizer"] == {"optimizer": "prodigy"}
    for peer in (
        schedule_free(0.01, 10),
        schedule_free(0.003, 20, 0.95),
        prodigy(2.0, "cosine", 200),
        prodigy(1.0, "linear", 200),
        prodigy(0.5, "warmup-linear", 200),
        adam_ema(0.03, 0.99),
    ):
        rebuilt = schedule_from_record(json.loads(json.dumps(peer.describe())))
        assert (rebuilt.label, rebuilt.optimizer, rebuilt.lr_at(100)) == (peer.label, peer.optimizer, peer.lr_at(100))
    # each shape is the one it names (the suite's "prodigy linear" once ran a cosine)
    assert [prodigy(1.0, shape, 200).lr_at(150) for shape in ("constant", "linear")] == [1.0, 0.25]
    assert prodigy(1.0, "cosine", 200).lr_at(150) == pytest.approx(0.5 * (1 + math.cos(0.75 * math.pi)))
    assert [prodigy(1.0, "warmup-linear", 200).lr_at(step) for step in (0, 9, 10, 105)] == [0.1, 1.0, 1.0, 0.5]
    for shape in ("linear", "warmup-linear"):  # the setting reaches prodigyopt
        settings = {**EnvConfig(**small_env_options).optimizer_settings, **prodigy(1.0, shape, 200).optimizer}
        built = build_optimizer([torch.nn.Parameter(torch.zeros(2))], 1.0, **settings)
        assert built.param_groups[0]["safeguard_warmup"] is (shape == "warmup-linear")
    with pytest.raises(UserError, match="prodigy's LR shape must be one of constant, cosine, linear, warmup-linear"):
        prodigy(1.0, "step", 200)


def test_a_grid_file_from_before_the_peers_gains_them(
    small_env_options: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import alrs.episodes as episodes
    import alrs.grid as grid

    env = make_env(**{**small_env_options, "num_train_steps": 10})
    path = tmp_path / "grid.json"
    monkeypatch.setattr(grid, "peer_grid", lambda steps: [])
    old = baseline_grid_search(env, seed=0, path=path, progress=False)
    before = json.loads(path.read_text())
    assert len(old["results"]) == 64 and "best_schedule_free" not in before
    monkeypatch.undo()
    real_run, calls = episodes.run_episode, []
    monkeypatch.setattr(episodes, "run_episode", lambda *a, **k: calls.append(a[1].family) or real_run(*a, **k))
    data = baseline_grid_search(env, seed=0, path=path, progress=False)
    assert set(calls) == set(PEER_FAMILIES) and len(calls) == 24 + 12 + 9  # on 10 steps, warm-ups 5% = 10%
    assert all(data[key] in data["results"] for key in best_keys().values())
    after = json.loads(path.read_text())["results"]
    assert all(after[k] == v for k, v in before["results"].items())  # the old points are kept, not rerun


def test_the_scheduler_refuses_another_optimizer_class(small_env_options: dict) -> None:
    model = torch.nn.Linear(4, 3)
    config = EnvConfig(**small_env_options, initial_lr=0.01, optimizer="schedulefree-adamw")
    checkpoint = _checkpoint(config)
    adam = torch.optim.Adam(model.parameters(), lr=0.01)
    with pytest.raises(UserError, match=r"trained to drive schedulefree-adamw .* not Adam; pass allow_transfer=True"):
        LearnedLRScheduler(adam, checkpoint, model, evaluate=lambda: (model(torch.ones(2, 4)), torch.zeros(2).long()))
    LearnedLRScheduler(
        adam, checkpoint, model, evaluate=lambda: (model(torch.ones(2, 4)), torch.zeros(2).long()), allow_transfer=True
    )
    # A checkpoint from before the setting drove Adam: Adam is taken, SGD refused.
    old = _checkpoint(EnvConfig(**small_env_options, initial_lr=0.01))
    del old["metadata"]["env"]["optimizer"]
    evaluate = lambda: (model(torch.ones(2, 4)), torch.zeros(2).long())  # noqa: E731
    LearnedLRScheduler(torch.optim.Adam(model.parameters(), lr=0.01), old, model, evaluate=evaluate)
    with pytest.raises(UserError, match="trained to drive adam"):
        LearnedLRScheduler(torch.optim.SGD(model.parameters(), lr=0.01), old, model, evaluate=evaluate)


def test_a_controller_is_tested_with_the_optimizer_it_drives(small_env_options: dict) -> None:
    checkpoint = _checkpoint(EnvConfig(**small_env_options, optimizer="schedulefree-adamw"))
    with pytest.raises(UserError, match=r"trained to drive schedulefree-adamw.*--optimizer schedulefree-adamw"):
        Learned(checkpoint).check(make_env(**small_env_options))
    Learned(checkpoint).check(make_env(**small_env_options, optimizer="schedulefree-adamw"))


def test_the_batched_children_refuse_another_optimizer(small_env_options: dict) -> None:
    with pytest.raises(UserError, match="batched children run plain Adam only \\(optimizer differ\\)"):
        check_batchable(EnvConfig(**small_env_options, optimizer="schedulefree-adamw"))
    with pytest.raises(UserError, match="weight_average differ"):
        check_batchable(EnvConfig(**small_env_options, weight_average="uniform"))
    with pytest.raises(UserError, match="no reference child; drop --batched-envs for the relative reward"):
        check_batchable(EnvConfig(**small_env_options, reward="relative"))


def test_the_scheduler_observes_schedule_free_evaluation_weights(small_env_options: dict) -> None:
    import schedulefree

    config = EnvConfig(**small_env_options, initial_lr=0.01, optimizer="schedulefree-adamw")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10))
    optimizer = schedulefree.AdamWScheduleFree(model.parameters(), lr=0.01)
    optimizer.train()
    x, y = torch.randn(64, 16), torch.randint(0, 10, (64,))
    scheduler = LearnedLRScheduler(optimizer, _checkpoint(config), model[1], evaluate=lambda: (model(x), y))
    for _ in range(config.update_freq):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step(loss)
    assert optimizer.param_groups[0]["train_mode"]
    train_weights = float(F.cross_entropy(model(x), y).detach())
    with evaluation_weights(optimizer):
        eval_weights = float(F.cross_entropy(model(x), y).detach())
    assert abs(train_weights - eval_weights) > 1e-4
    assert scheduler.last_observation[1] == pytest.approx(eval_weights, rel=1e-5)
