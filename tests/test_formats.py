"""Every stored format we have written reads, migrates to the current one, and gives the same results."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from alrs.config import EnvConfig, PPOConfig, TrainingConfig
from alrs.errors import UserError
from alrs.formats import (
    ENV_ADDED_LATER,
    PPO_ADDED_LATER,
    RESULTS_FORMAT,
    TRAINING_FORMAT,
    Progress,
    migrate_controller,
    read_training_state,
)
from alrs.grid import BASELINE_KEYS, load_grid, schedule_from_record
from alrs.io import load_torch, save_torch
from alrs.ppo import PPO
from alrs.protocol import plan_test, stored_curves
from alrs.results import ResultStore
from alrs.runfolder import METRICS_COLUMNS, truncate_csv
from alrs.training import train_controller

RESULTS = Path(__file__).resolve().parent.parent / "results"


def _as_first_format(run: Path) -> None:
    """Rewrite a run folder's last.pt and metrics.csv as the first versions of alrs wrote them."""
    state = load_torch(run / "last.pt")
    del state["format"]
    metadata = state["controller"]["metadata"]
    for key in ENV_ADDED_LATER:
        del metadata["env"][key]
    for key in PPO_ADDED_LATER:
        del metadata["ppo"][key]
    save_torch(state, run / "last.pt")
    rows = list(csv.reader(open(run / "metrics.csv")))
    (run / "metrics.csv").write_text("".join(",".join(row[:-1]) + "\r\n" for row in rows))  # no initial_lr column


def test_a_run_in_the_first_formats_resumes_to_the_uninterrupted_result(
    small_env_options: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kwargs = dict(
        env_config=EnvConfig(**small_env_options, lr_noise=0.05),
        ppo_config=PPOConfig(),
        config=TrainingConfig(num_envs=2, episodes=6, eval_every=2, eval_seeds=1),
        seed=7,
        progress=False,
    )
    train_controller(tmp_path / "straight", **kwargs)
    real_update, calls = PPO.update, []

    def stop_in_second_update(self: PPO, batch: object) -> dict:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_update(self, batch)

    monkeypatch.setattr(PPO, "update", stop_in_second_update)
    with pytest.raises(KeyboardInterrupt):
        train_controller(tmp_path / "old", **kwargs)
    monkeypatch.setattr(PPO, "update", real_update)
    _as_first_format(tmp_path / "old")

    with pytest.raises(UserError, match=r"other settings than this run's config\.json \(env\.optimizer\)"):
        sgd = dataclasses.replace(kwargs["env_config"], optimizer="sgd")
        train_controller(tmp_path / "old", resume=True, **{**kwargs, "env_config": sgd})
    train_controller(tmp_path / "old", resume=True, **kwargs)
    straight, old = (load_torch(tmp_path / name / "last.pt") for name in ("straight", "old"))
    assert old["format"] == TRAINING_FORMAT and old["progress"] == straight["progress"] | {
        "wall_time": old["progress"]["wall_time"]
    }
    for key, value in straight["ppo"]["controller"]["state_dict"].items():
        assert torch.equal(value, old["ppo"]["controller"]["state_dict"][key]), key
    rows = [list(csv.DictReader(open(tmp_path / name / "metrics.csv"))) for name in ("straight", "old")]
    assert [r["initial_lr"] for r in rows[1]] == ["", "", *[r["initial_lr"] for r in rows[0][2:]]]
    assert [r["final_val_loss"] for r in rows[0]] == [r["final_val_loss"] for r in rows[1]]


def test_every_committed_run_reads_in_the_current_format(tmp_path: Path) -> None:
    files = sorted(RESULTS.glob("**/*.pt"))
    assert files, "results/ holds the committed controllers"
    for path in files:
        saved = load_torch(path)
        if path.name == "last.pt":
            _, progress, controller = read_training_state(saved, path)
            assert isinstance(progress, Progress) and progress.episodes_done > 0
            if (path.parent / "metrics.csv").is_file():  # the files a resume cuts back read in the current format
                copy = shutil.copytree(path.parent, tmp_path / str(len(list(tmp_path.iterdir()))))
                truncate_csv(copy / "metrics.csv", METRICS_COLUMNS, progress.episodes_done)
                assert len(list(csv.reader(open(copy / "metrics.csv")))) == progress.episodes_done + 1
        else:
            controller = migrate_controller(saved)
        EnvConfig(**{k: v for k, v in controller["metadata"]["env"].items()})  # every setting, and no unknown one
        assert set(controller["metadata"]["env"]) == {f.name for f in dataclasses.fields(EnvConfig)}, path
        assert set(controller["metadata"]["ppo"]) == {f.name for f in dataclasses.fields(PPOConfig)}, path


def test_settings_added_later_are_read_as_what_runs_before_them_used() -> None:
    assert ENV_ADDED_LATER == {k: getattr(EnvConfig(), k) for k in ENV_ADDED_LATER}
    assert PPO_ADDED_LATER == {k: getattr(PPOConfig(), k) for k in PPO_ADDED_LATER}


@pytest.mark.parametrize(
    ("saved", "message"),
    [
        ({"ppo": {}}, "not a training checkpoint of alrs"),
        ({"format": "alrs-training/9", "ppo": {}, "progress": {}, "controller": {}}, "newer than this alrs"),
        ({"ppo": {}, "progress": {"episodes_done": 1}, "controller": {}}, "progress record is damaged"),
        (
            {
                "format": TRAINING_FORMAT,
                "ppo": {},
                "progress": {**asdict(Progress()), "best_episode": "x"},
                "controller": {},
            },
            "progress record is damaged",
        ),
    ],
)
def test_a_damaged_or_newer_last_pt_is_a_one_line_error(saved: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=message):
        read_training_state(saved, tmp_path / "last.pt")


def _committed_stores() -> list[Path]:
    stores = []
    for path in sorted(RESULTS.glob("**/*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("results"), dict):
            stores.append(path)
    return stores


def test_every_committed_result_store_and_grid_file_reads_in_the_current_format(tmp_path: Path) -> None:
    stores = _committed_stores()
    assert any("baselines" in p.parts for p in stores) and any(p.name == "summary.json" for p in stores)
    for path in stores:
        store = ResultStore(path)
        assert store.data["format"] == RESULTS_FORMAT, path
        for key in store.data["results"]:
            record = store[key].schedule
            if "baselines" in path.parts:  # a grid holds hand-made schedules and peers only
                assert schedule_from_record(record).family == record["family"], (path, key)
        copy = tmp_path / path.name
        copy.write_text(path.read_text())
        ResultStore(copy).update(note="rewritten")  # written back in the current format, read again the same
        again = ResultStore(copy)
        assert again.data["format"] == RESULTS_FORMAT
        assert json.dumps(again.data["results"]) == json.dumps(store.data["results"]), path


def test_every_committed_grid_file_plans_a_test() -> None:
    """test.py reads a grid file of the first format (records without family) as it plans the fair test."""
    grids = sorted((RESULTS / "baselines").glob("*.json"))
    assert any("format" not in json.loads(path.read_text()) for path in grids)
    for path in grids:
        settings = json.loads(path.read_text())["settings"]
        config = EnvConfig(**{key: settings[key] for key in BASELINE_KEYS})
        plan = plan_test(load_grid(path, config))
        assert {"constant", "step-decay", "cosine", "linear"} <= set(plan.schedules), path


def test_a_test_from_before_the_fair_protocol_replots(tmp_path: Path) -> None:
    old = RESULTS / "fa-mnist_mlp" / "fa-mnist_mlp_s0_20261128-114354"
    assert '"label"' not in (old / "summary.json").read_text()  # the first version's summary
    curves, title = stored_curves(old)
    assert set(curves) == set(json.loads((old / "summary.json").read_text())["summary"]["schedules"])
    assert all(len(runs) == 10 for runs in curves.values()) and "fa-mnist" in title


def test_a_newer_result_store_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"format": "alrs-results/9", "settings": {}, "results": {}}))
    with pytest.raises(UserError, match="newer than this alrs"):
        ResultStore(path)
