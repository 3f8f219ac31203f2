from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from cli import call_script, small_flags

from alrs import evaluator
from alrs.cli import parse_args
from alrs.config import EnvConfig, PPOConfig, TrainingConfig
from alrs.env import LREnv
from alrs.errors import UserError
from alrs.io import load_torch
from alrs.plotting import plot_training
from alrs.ppo import PPO, make_vector_env
from alrs.runfolder import checkpoint_file, evaluation_curves
from alrs.training import train_controller


def test_config_precedence_defaults_then_file_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"seed": 3, "batch_size": 77, "initial_lr": "random"}))
    args = parse_args("train", ["--config", str(config), "--seed", "5"])
    assert (args.seed, args.batch_size, args.initial_lr, args.update_freq) == (5, 77, "random", 10)


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"lr": 0.1}', "unknown setting 'lr'"),
        ('{"seed": 1,}', "not valid JSON"),
        ("[1]", "expected a JSON object"),
        ('{"action_range": "x"}', "action_range = 'x' should be float"),
        ('{"hidden_sizes": 32}', "should be a list of integers"),
        ('{"discrete": 1}', "discrete = 1 should be bool"),
        ('{"initial_lr": "fast"}', "should be a number or 'random'"),
        ('{"batched_envs": "yes"}', "should be true, false or null"),
    ],
)
def test_bad_config_file_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, content: str, message: str
) -> None:
    config = tmp_path / "c.json"
    config.write_text(content)
    with pytest.raises(SystemExit):
        parse_args("train", ["--config", str(config)])
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and str(config) in err[-1]


def test_resume_refuses_changed_settings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"settings": {"seed": 1}}))
    assert parse_args("train", ["--resume", str(run), "--episodes", "9"]).seed == 1
    with pytest.raises(SystemExit):
        parse_args("train", ["--resume", str(run), "--batch-size", "9"])
    assert "drop --batch-size" in capsys.readouterr().err


def test_two_episode_run_writes_every_file(data_dir: Path, tmp_path: Path) -> None:
    result = call_script(
        "train.py", *small_flags(data_dir), "--num-envs", "2", "--episodes", "2", "--out-dir", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    (run,) = tmp_path.iterdir()
    assert {p.name for p in run.iterdir()} == {
        "config.json",
        "metrics.csv",
        "eval.csv",
        "last.pt",
        "best.pt",
        "episode.png",
        "training.png",
        ".lock",
        "evals",
    }
    assert [p.name for p in (run / "evals").iterdir()] == ["iter_0001.pt"]  # the evaluation after the last iteration
    config = json.loads((run / "config.json").read_text())
    assert config["settings"]["batch_size"] == 50 and len(config["git_commit"]) >= 7 and "torch" in config["versions"]
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["episode"] for r in rows] == ["1", "2"]
    assert all(float(r["final_val_loss"]) > 0 and float(r["final_lr"]) > 0 for r in rows)
    assert all(float(r["initial_lr"]) == 1e-3 for r in rows)  # the default initial LR
    best = load_torch(run / "best.pt")
    assert best["metadata"]["env"]["discrete"] is True and best["metadata"]["features"][0] == "train_loss"
    assert all((run / png).read_bytes()[:4] == b"\x89PNG" for png in ("episode.png", "training.png"))


def test_learning_curve_shows_each_initial_lrs_evaluation(tmp_path: Path) -> None:
    header = "iteration,episodes,mean_best_val_loss,per_initial_lr,wall_time\n"
    random_lrs = tmp_path / "random.csv"
    random_lrs.write_text(header + "10,40,0.4,0.01:0.3 0.0001:0.5,1.0\n20,80,0.35,0.01:0.28 0.0001:0.42,2.0\n")
    curves = evaluation_curves(random_lrs)
    assert list(curves) == [
        "policy mode, held-out seeds (best val loss), mean",
        "policy mode from lr=0.01",
        "policy mode from lr=0.0001",
    ]
    assert curves["policy mode from lr=0.0001"] == ([40.0, 80.0], [0.5, 0.42])
    assert curves["policy mode, held-out seeds (best val loss), mean"][1] == [0.4, 0.35]
    one_lr = tmp_path / "one.csv"
    one_lr.write_text(header + "5,40,0.28,0.01:0.28,1.0\n")
    assert evaluation_curves(one_lr) == {"policy mode, held-out seeds (best val loss)": ([40.0], [0.28])}
    empty = tmp_path / "empty.csv"
    empty.write_text(header)
    assert evaluation_curves(empty) == {}
    png = tmp_path / "training.png"
    plot_training([0.5, 0.3] * 20, [1e-3, 1e-2] * 20, png, evaluations=curves)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(
    small_env_options: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = EnvConfig(**small_env_options, lr_noise=0.05)
    ppo = PPOConfig()
    kwargs = dict(env_config=env, ppo_config=ppo, config=TrainingConfig(num_envs=2, episodes=6), seed=7, progress=False)
    train_controller(tmp_path / "straight", **kwargs)

    real_update, calls = PPO.update, []

    def interrupt_on_second_update(self, batch):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the second iteration
        return real_update(self, batch)

    monkeypatch.setattr(PPO, "update", interrupt_on_second_update)
    with pytest.raises(KeyboardInterrupt):
        train_controller(tmp_path / "resumed", **kwargs)
    monkeypatch.setattr(PPO, "update", real_update)
    assert load_torch(tmp_path / "resumed" / "last.pt")["progress"]["episodes_done"] == 2
    train_controller(tmp_path / "resumed", resume=True, **kwargs)

    a, b = (load_torch(tmp_path / name / "last.pt") for name in ("straight", "resumed"))
    for key, value in a["ppo"]["controller"]["state_dict"].items():
        assert torch.equal(value, b["ppo"]["controller"]["state_dict"][key]), key
    rows = [[r[:7] for r in csv.reader(open(tmp_path / name / "metrics.csv"))] for name in ("straight", "resumed")]
    assert rows[0] == rows[1] and len(rows[0]) == 7


def test_best_checkpoint_is_the_controller_that_played_the_best_episode(
    small_env_options: dict, tmp_path: Path
) -> None:
    """best.pt must hold the weights that produced the episode, not the ones after the update."""
    env = EnvConfig(**small_env_options)
    ppo_config = PPOConfig()
    train_controller(
        tmp_path, env, ppo_config, TrainingConfig(num_envs=2, episodes=2, eval_every=0), seed=3, progress=False
    )  # one iteration
    best = load_torch(tmp_path / "best.pt")["state_dict"]
    after_update = load_torch(tmp_path / "last.pt")["controller"]["state_dict"]
    initial = PPO(
        make_vector_env([lambda: LREnv(env)]), ppo_config, num_steps=env.decisions, seed=3
    ).controller.state_dict()
    assert all(torch.equal(best[k], initial[k]) for k in initial if k.startswith(("actor", "critic", "log_std")))
    assert not torch.equal(best["actor.0.weight"], after_update["actor.0.weight"])


def test_best_checkpoint_is_the_controller_with_the_best_deterministic_evaluation(
    small_env_options: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evaluations after iterations 2, 4, 5 (the last) and, resumed, 6 score 0.5, 0.3, 0.45 and 0.4:
    best.pt is iteration 4's controller throughout, and eval.csv keeps every row across the resume."""
    scores = iter([0.5, 0.3, 0.45, 0.4])

    def scripted(pool, config, controller, seeds, initial_lrs):
        score = next(scores)
        return {lr: score for lr in initial_lrs}

    monkeypatch.setattr(evaluator, "evaluate_policy", scripted)
    env = EnvConfig(**small_env_options, initial_lr="random")
    kwargs = dict(
        env_config=env,
        ppo_config=PPOConfig(),
        seed=0,
        progress=False,
    )
    summary = train_controller(tmp_path, config=TrainingConfig(1, 5, eval_every=2, eval_seeds=3), **kwargs)
    assert summary["best_eval_iteration"] == 4 and summary["best_eval_loss"] == 0.3
    best, last = load_torch(tmp_path / "best.pt"), load_torch(tmp_path / "last.pt")
    assert best["metadata"]["iteration"] == 4 and best["metadata"]["eval_seeds"] == [2000, 2001, 2002]
    assert not torch.equal(best["state_dict"]["actor.0.weight"], last["controller"]["state_dict"]["actor.0.weight"])
    (tmp_path / "evals" / "iter_0009.pt").write_bytes(b"")  # as if evaluated after the saved iteration
    summary = train_controller(tmp_path, config=TrainingConfig(1, 6, eval_every=2, eval_seeds=3), resume=True, **kwargs)
    rows = list(csv.DictReader(open(tmp_path / "eval.csv")))
    assert [r["iteration"] for r in rows] == ["2", "4", "5", "6"] and summary["best_eval_iteration"] == 4
    assert rows[0]["per_initial_lr"] == "0.01:0.500000 0.001:0.500000 0.0001:0.500000"
    assert load_torch(tmp_path / "best.pt")["metadata"]["iteration"] == 4
    # Every evaluated controller is kept, with its scores, for test.py --checkpoint iter-N.
    assert sorted(p.name for p in (tmp_path / "evals").iterdir()) == [f"iter_000{i}.pt" for i in (2, 4, 5, 6)]
    kept = {i: load_torch(checkpoint_file(tmp_path, f"iter-{i}")) for i in (2, 4)}
    assert kept[2]["metadata"]["eval_per_initial_lr"] == {"0.01": 0.5, "0.001": 0.5, "0.0001": 0.5}
    assert torch.equal(kept[4]["state_dict"]["actor.0.weight"], best["state_dict"]["actor.0.weight"])
    assert not torch.equal(kept[2]["state_dict"]["actor.0.weight"], best["state_dict"]["actor.0.weight"])


@pytest.mark.parametrize(
    "checkpoint,message",
    [
        ("iter-3", "evals/iter_0003.pt does not exist; the run's evaluated controllers are: iter-2, iter-10"),
        ("iter-x", "--checkpoint must be best, last or iter-N"),
        ("first", "--checkpoint must be best, last or iter-N"),
    ],
)
def test_a_checkpoint_that_is_not_there_names_the_ones_that_are(tmp_path: Path, checkpoint: str, message: str) -> None:
    (tmp_path / "evals").mkdir()
    for i in (2, 10):
        (tmp_path / "evals" / f"iter_{i:04d}.pt").write_bytes(b"")
    assert checkpoint_file(tmp_path, "best") == tmp_path / "best.pt"
    with pytest.raises(UserError, match=re.escape(message)):
        checkpoint_file(tmp_path, checkpoint)


def test_missing_or_corrupt_resume_is_a_one_line_error(tmp_path: Path) -> None:
    result = call_script("train.py", "--resume", str(tmp_path / "nope"))
    assert result.returncode == 2 and "no such run folder" in result.stderr
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"settings": {"architecture": "mlp"}}))
    (run / "last.pt").write_bytes(b"\x00" * 10)
    result = call_script(
        "train.py", "--resume", str(run), "--device", "cpu", "--data-dir", str(tmp_path), "--no-progress"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "last.pt: not a readable checkpoint" in result.stderr.strip().splitlines()[-1]


def test_unbatchable_child_fails_before_making_a_run_folder(data_dir: Path, tmp_path: Path) -> None:
    result = call_script(
        "train.py",
        *small_flags(data_dir),
        "--architecture",
        "resnet",
        "--batched-envs",
        "--out-dir",
        str(tmp_path / "runs"),
    )
    assert result.returncode == 2 and "cannot be batched" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_tensorboard_events_load_in_tensorboards_reader(small_env_options: dict, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    env = EnvConfig(**small_env_options)
    train_controller(
        tmp_path,
        env,
        PPOConfig(),
        TrainingConfig(num_envs=2, episodes=4, eval_every=1, eval_seeds=1, tensorboard=True),
        progress=False,
    )
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    returns = events.Scalars("episode/return")
    assert [e.step for e in returns] == [1, 2, 3, 4]
    assert [e.value for e in returns] == pytest.approx([float(r["return"]) for r in rows], rel=1e-6)
    assert [e.step for e in events.Scalars("eval/mean_best_val_loss")] == [2, 4]
    assert {"ppo/approx_kl", "ppo/entropy", "episode/final_lr"} <= set(events.Tags()["scalars"])


def test_tensorboard_without_the_package_is_a_one_line_error(
    small_env_options: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    env = EnvConfig(**small_env_options)
    with pytest.raises(ValueError, match="pip install tensorboard"):
        train_controller(
            tmp_path,
            env,
            PPOConfig(),
            TrainingConfig(num_envs=1, episodes=1, tensorboard=True),
            progress=False,
        )


def test_figures_are_drawn_after_the_first_and_the_last_iteration_not_after_each(
    small_env_options: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drawing both figures each iteration cost a driver of small children more than its children (ours)."""
    import alrs.recorder as recorder

    drawn: list[int] = []
    monkeypatch.setattr(recorder, "plot_training", lambda *args, **kwargs: drawn.append(1))
    monkeypatch.setattr(recorder, "plot_episode", lambda *args, **kwargs: None)
    training = TrainingConfig(num_envs=1, episodes=4, eval_every=0)
    train_controller(tmp_path, EnvConfig(**small_env_options), PPOConfig(), training, progress=False)
    assert len(drawn) == 2  # 4 iterations, all within recorder.FIGURE_INTERVAL_S
