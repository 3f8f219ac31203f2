"""The learned scheduler in a plain PyTorch loop gives exactly the env's LRs and losses."""

from __future__ import annotations

import re
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gymnasium.utils.seeding import np_random

from alrs.actions import action_of
from alrs.config import EnvConfig, PPOConfig
from alrs.controller import Controller
from alrs.controllers import CONTROLLERS, controller_file
from alrs.data import BatchSampler, load_dataset
from alrs.env import LREnv, init_child
from alrs.episodes import run_episode
from alrs.features import PAPER_FEATURES, fixed_scale_indices
from alrs.io import load_torch, save_torch
from alrs.scheduler import LearnedLRScheduler
from alrs.schedules import Learned
from alrs.training import controller_metadata

README_EXAMPLE = """\
import torch
import torch.nn.functional as F

from alrs import build_model, load_dataset
from alrs.scheduler import LearnedLRScheduler

data = load_dataset("fa-mnist", "./data")
model = build_model("mlp", "fa-mnist")  # any model; the controller's own setting is the tested one
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)  # the controller was trained from 1e-2
val_x, val_y = data.val_x[:1000], data.val_y[:1000]  # the same examples at every observation
scheduler = LearnedLRScheduler(optimizer, "quick-mlp", model.output_layer, evaluate=lambda: (model(val_x), val_y))
for step in range(scheduler.num_train_steps):
    batch = torch.randint(len(data.train_x), (500,))
    loss = F.cross_entropy(model(data.train_x[batch]), data.train_y[batch])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step(loss)
print(f"final LR {scheduler.get_last_lr()[0]:.3g}, validation loss {scheduler.last_validation.loss:.4f}")
"""


def _checkpoint(config: EnvConfig, seed: int = 0) -> dict[str, Any]:
    """An untrained controller whose choices vary: normalization that matters, a large last actor layer."""
    features = config.features
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        controller = Controller(len(features), action_of(config).spec(), fixed_scale=fixed_scale_indices(features))
    # typical values of the features of this fake data (the log-LR and time features are not normalized)
    mean = torch.tensor([1.8, 1.7, 5e-3, 2e-3, 0.0, 3e-3, 3e-3, 0.5, -0.05, 0.0], dtype=torch.float64)[: len(features)]
    std = torch.tensor([0.5, 0.5, 1e-2, 2e-3, 5e-3, 5e-4, 3e-3, 1.0, 0.05, 0.05], dtype=torch.float64)[: len(features)]
    controller.obs_rms.mean.copy_(mean)
    controller.obs_rms.var.copy_(std**2)
    controller.obs_rms.count.fill_(1000.0)
    with torch.no_grad():
        controller.actor[-1].weight.mul_(300.0)
    return controller.checkpoint(controller_metadata(config, PPOConfig()))


class _Loop:
    """A plain PyTorch training loop on the env's child, batches and validation split, driven by the scheduler.

    ``mode``: ``evaluate`` (the scheduler calls it), ``after`` (report_validation when needs_validation,
    after step()) or ``before`` (report_validation after the optimizer step, before step()). ``legacy``:
    the deprecated report_train_loss(loss) and step() instead of step(loss).
    """

    def __init__(
        self,
        config: EnvConfig,
        checkpoint: Any,
        seed: int,
        lr: float,
        mode: str = "evaluate",
        head_lr: float | None = None,
        legacy: bool = False,
        **options: Any,
    ):
        data = load_dataset(config.dataset, config.data_dir)
        self.train_x, self.train_y = data.train_x, data.train_y
        self.val_x, self.val_y = data.val_x[: config.val_size], data.val_y[: config.val_size]
        child_seed = int(np_random(seed)[0].integers(2**62))  # LREnv._begin_episode's first draw
        self.model = init_child(config, child_seed)
        head = list(self.model.output_layer.parameters())
        if head_lr is None:
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        else:
            body = [p for p in self.model.parameters() if all(p is not q for q in head)]
            self.optimizer = torch.optim.Adam([{"params": body}, {"params": head, "lr": head_lr}], lr=lr)
        self.sampler = BatchSampler(len(self.train_x), config.batch_size, child_seed, torch.device("cpu"))
        self.mode, self.steps, self.legacy = mode, 0, legacy
        self.lrs: list[list[float]] = []  # every group's LR at each Adam step
        self.val_losses: list[float] = []
        self.observations: list[np.ndarray] = []
        self.scheduler = LearnedLRScheduler(
            self.optimizer,
            checkpoint,
            self.model.output_layer,
            evaluate=self.evaluate if mode == "evaluate" else None,
            **options,
        )
        self.update_freq = self.scheduler.update_freq
        if mode == "evaluate":
            self.observations.append(self.scheduler.last_observation)

    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        with torch.inference_mode():
            logits = self.model(self.val_x)
        self.model.train()
        self.val_losses.append((F.cross_entropy(logits, self.val_y, reduction="sum") / len(self.val_y)).item())
        return logits, self.val_y

    def _report_if_needed(self) -> None:
        if self.mode != "evaluate" and self.scheduler.needs_validation:
            self.scheduler.report_validation(*self.evaluate())
            self.observations.append(self.scheduler.last_observation)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self._report_if_needed()
            self.lrs.append([group["lr"] for group in self.optimizer.param_groups])
            idx = self.sampler.next()
            loss = F.cross_entropy(self.model(self.train_x[idx]), self.train_y[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.steps += 1
            due = self.steps % self.update_freq == 0
            if self.legacy:
                self.scheduler.report_train_loss(loss)
            if self.mode == "before" and due:
                self.scheduler.report_validation(*self.evaluate())
            if self.legacy:
                self.scheduler.step()
            else:
                self.scheduler.step(loss)
            if self.mode != "after" and due:
                self.observations.append(self.scheduler.last_observation)

    def finish(self) -> None:
        """Make the observation after the last step, if it waits for validation."""
        self._report_if_needed()


def _env_episode(config: EnvConfig, checkpoint: dict[str, Any], seed: int, lr: float) -> dict[str, list[float]]:
    return run_episode(LREnv(config), Learned(checkpoint).starting_at(lr), seed, test=False).curves


OPTION_SETS = {
    "paper": {},
    "log-lr+time": {"lr_feature": "log-lr", "time_feature": True},
    "continuous": {"discrete": False, "action_range": 1.3},
    "lhopt+linear+trend": {
        "action_set": "lhopt",
        "base_schedule": "linear",
        "time_feature": True,
        "trend_features": True,
    },
    "continuous+warmup-linear": {"discrete": False, "action_range": 2.0, "base_schedule": "warmup-linear"},
}


@pytest.mark.parametrize(
    ("options", "mode", "legacy"),
    [
        ("paper", "evaluate", False),
        ("paper", "after", False),
        ("paper", "before", False),
        ("log-lr+time", "evaluate", False),
        ("continuous", "evaluate", False),
        ("lhopt+linear+trend", "evaluate", False),
        ("continuous+warmup-linear", "after", False),
        ("paper", "after", True),
    ],
)
def test_a_plain_loop_gets_the_env_episode(small_env_options: dict, options: str, mode: str, legacy: bool) -> None:
    """step(loss), and for one release the deprecated report_train_loss(loss) and step(), give the env's LRs."""
    config = EnvConfig(**{**small_env_options, "num_train_steps": 40, **OPTION_SETS[options]})
    checkpoint, seed, lr = _checkpoint(config), 7, 1e-3
    curves = _env_episode(config, checkpoint, seed, lr)
    loop = _Loop(config, checkpoint, seed, lr, mode=mode, legacy=legacy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loop.run(config.num_train_steps)
        loop.finish()
    ours = [w for w in caught if str(w.message).startswith("LearnedLRScheduler")]
    deprecated = {str(w.message).split(" is deprecated")[0] for w in ours if w.category is DeprecationWarning}
    calls = {"LearnedLRScheduler.report_train_loss(loss)", "LearnedLRScheduler.step() without the loss"}
    assert deprecated == (calls if legacy else set()) and all(w.category is DeprecationWarning for w in ours)
    assert all(w.filename == __file__ for w in ours)  # the warnings point at the caller's line

    k = config.update_freq
    assert len(set(curves["lr"])) >= 3  # the controller does change the LR, both ways or more than once
    # equal in fact, bit for bit: the same arithmetic in the same order
    assert [group[0] for group in loop.lrs] == pytest.approx(
        [lr for lr in curves["lr"][1:] for _ in range(k)], rel=1e-12
    )
    assert loop.val_losses == pytest.approx(curves["val_loss"], rel=1e-12)
    assert [float(obs[0]) for obs in loop.observations] == pytest.approx(curves["train_loss"], rel=1e-12)
    assert [float(obs[1]) for obs in loop.observations] == pytest.approx(curves["val_loss"], rel=1e-12)
    seen = loop.scheduler.last_validation
    assert seen.step == config.num_train_steps and seen.loss == pytest.approx(curves["val_loss"][-1], rel=1e-6)
    logits = loop.model(loop.val_x)
    assert seen.accuracy == pytest.approx((logits.argmax(1) == loop.val_y).float().mean().item())
    assert seen.prediction_variance == pytest.approx(float(loop.observations[-1][2]), rel=1e-6)


def test_param_groups_keep_their_ratio(small_env_options: dict) -> None:
    config = EnvConfig(**{**small_env_options, "num_train_steps": 40})
    loop = _Loop(config, _checkpoint(config), seed=3, lr=1e-3, mode="after", head_lr=1e-2)
    loop.run(40)
    body, head = np.array(loop.lrs).T
    assert len(set(body)) >= 2
    assert head / body == pytest.approx(np.full(len(body), 10.0), rel=1e-12)
    assert loop.scheduler.get_last_lr()[0] == loop.scheduler.lr == loop.optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("stop", [22, 25])
@pytest.mark.parametrize("mode", ["evaluate", "after"])
def test_state_dict_round_trip_continues_the_same_schedule(
    small_env_options: dict, tmp_path: Path, stop: int, mode: str
) -> None:
    config = EnvConfig(**{**small_env_options, "num_train_steps": 40, **OPTION_SETS["log-lr+time"]})
    checkpoint = _checkpoint(config)
    whole = _Loop(config, checkpoint, 7, 1e-3, mode=mode)
    whole.run(40)
    whole.finish()
    first = _Loop(config, checkpoint, 7, 1e-3, mode=mode)
    first.run(stop)
    save_torch(
        {
            "model": first.model.state_dict(),
            "optimizer": first.optimizer.state_dict(),
            "scheduler": first.scheduler.state_dict(),
        },
        tmp_path / "resume.pt",
    )
    saved = load_torch(tmp_path / "resume.pt")  # weights_only: the scheduler's state is plain data and tensors

    second = _Loop(config, checkpoint, 7, 1e-3, mode=mode)  # a fresh child, rebuilt then restored
    second.model.load_state_dict(saved["model"])
    second.optimizer.load_state_dict(saved["optimizer"])
    second.scheduler.load_state_dict(saved["scheduler"])
    second.sampler, second.steps, second.observations = first.sampler, stop, []
    assert second.scheduler.needs_validation == (mode == "after" and stop % config.update_freq == 0)
    second.run(40 - stop)
    assert len({group[0] for group in second.lrs}) >= 2  # the controller acts after the resumption
    assert first.lrs + second.lrs == whole.lrs
    second.finish()
    assert np.array_equal(np.array(first.observations + second.observations), np.array(whole.observations))


def test_a_state_saved_with_the_action_settings_as_entries_of_their_own_loads(small_env_options: dict) -> None:
    """States saved before alrs.actions held discrete, action_range, lr_min and lr_max as entries."""
    config = EnvConfig(**{**small_env_options, "num_train_steps": 40})
    checkpoint = _checkpoint(config)
    first = _Loop(config, checkpoint, 7, 1e-3)
    first.run(12)
    state = first.scheduler.state_dict()
    older = {key: value for key, value in state.items() if key not in ("action_settings", "level")}
    older.update(discrete=True, action_range=1.05, lr_min=1e-5, lr_max=0.1)
    second = _Loop(config, checkpoint, 7, 1e-3).scheduler
    second.load_state_dict(older)
    assert second.lr == first.scheduler.lr == second.level  # before base schedules the level was the LR
    assert second.action_settings == state["action_settings"]
    assert second.action_settings["base_schedule"] == "constant" and "discrete" not in vars(second)
    older["action_range"] = 1.3
    assert "the state was saved by a scheduler with action_settings=" in _error(lambda: second.load_state_dict(older))


def _error(call: Any) -> str:
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_use_is_a_one_line_error(small_env_options: dict, tmp_path: Path) -> None:
    config = EnvConfig(**small_env_options)
    checkpoint = _checkpoint(config)
    loop = _Loop(config, checkpoint, 0, 1e-3)
    scheduler = loop.scheduler
    for _ in range(config.update_freq - 1):
        loop.optimizer.step()
        scheduler.step()
    loop.optimizer.step()
    assert "no train loss was given" in _error(scheduler.step)

    waiting = _Loop(config, checkpoint, 0, 1e-3, mode="after").scheduler
    assert waiting.needs_validation
    assert "waits for the validation" in _error(waiting.step)
    assert "waits for the validation" in _error(lambda: waiting.report_train_loss(1.0))
    assert "calls its evaluate() itself" in _error(
        lambda: scheduler.report_validation(torch.zeros(3, 10), torch.zeros(3))
    )

    wrong = _checkpoint(config)
    wrong["metadata"]["features"] = [*PAPER_FEATURES[:6], "loss_ratio"]
    assert "not a feature set" in _error(lambda: _Loop(config, wrong, 0, 1e-3))
    contradicting = _checkpoint(config)
    contradicting["metadata"]["env"]["time_feature"] = True
    assert "contradict" in _error(lambda: _Loop(config, contradicting, 0, 1e-3))
    wider = _checkpoint(replace(config, time_feature=True))
    wider["metadata"] = checkpoint["metadata"]
    assert "takes 8 features" in _error(lambda: _Loop(config, wider, 0, 1e-3))
    continuous = _checkpoint(replace(config, discrete=False))
    continuous["metadata"] = checkpoint["metadata"]
    assert "the controller's actions" in _error(lambda: _Loop(config, continuous, 0, 1e-3))
    bare = _checkpoint(config)
    bare["metadata"] = {}
    assert "does not record the settings" in _error(lambda: _Loop(config, bare, 0, 1e-3))

    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).bytes(1000))
    assert "not a readable checkpoint" in _error(lambda: _Loop(config, noise, 0, 1e-3))
    unformatted = tmp_path / "unformatted.pt"
    save_torch({key: value for key, value in checkpoint.items() if key != "format"}, unformatted)
    assert "not an alrs controller checkpoint" in _error(lambda: _Loop(config, unformatted, 0, 1e-3))

    reported = _Loop(config, checkpoint, 0, 1e-3, mode="after")
    reported.run(1)
    assert "no observation is due" in _error(lambda: reported.scheduler.report_validation(*reported.evaluate()))
    reported.run(config.update_freq - 2)  # the next step() observes: a report is welcome, but of the same examples
    assert "same validation examples" in _error(
        lambda: reported.scheduler.report_validation(torch.zeros(3, 10), torch.zeros(3))
    )
    assert "shape (N, classes)" in _error(lambda: reported.scheduler.report_validation(torch.zeros(3), torch.zeros(3)))
    assert "update_freq must be a positive integer" in _error(lambda: _Loop(config, checkpoint, 0, 1e-3, update_freq=0))

    optimizer = torch.optim.Adam([torch.zeros(2, requires_grad=True)])
    optimizer.param_groups.clear()
    assert "no param groups" in _error(lambda: LearnedLRScheduler(optimizer, checkpoint, lambda: torch.zeros(2, 2)))


def test_update_freq_and_episode_length_can_be_overridden(small_env_options: dict) -> None:
    config = EnvConfig(**{**small_env_options, **OPTION_SETS["log-lr+time"]})
    loop = _Loop(config, _checkpoint(config), 7, 1e-3, update_freq=4, num_train_steps=100)
    loop.run(12)
    lrs = [group[0] for group in loop.lrs]
    assert all(lrs[i] == lrs[i - i % 4] for i in range(12)) and len(set(lrs)) >= 2
    assert [float(obs[-1]) for obs in loop.observations] == pytest.approx([1.0, 0.96, 0.92, 0.88])


@pytest.mark.parametrize("bad", ["train", "validation"])
def test_a_non_finite_loss_keeps_the_lr_and_warns_once(small_env_options: dict, bad: str) -> None:
    config = EnvConfig(**small_env_options)
    loop = _Loop(config, _checkpoint(config), 0, 1e-3)
    scheduler, lr = loop.scheduler, loop.scheduler.lr
    if bad == "validation":
        loop.val_x = torch.full_like(loop.val_x, float("inf"))  # the model's logits become NaN
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(3 * config.update_freq):
            loop.optimizer.step()
            scheduler.step(torch.tensor(float("nan" if bad == "train" else 1.0 + step)))
            assert loop.optimizer.param_groups[0]["lr"] == lr
    (warning,) = [w for w in caught if w.category is RuntimeWarning]
    assert "not finite" in str(warning.message) and warning.filename == __file__
    assert scheduler.diverged and scheduler.lr == lr and not np.all(np.isfinite(scheduler.last_observation))


def test_a_last_pt_works_like_its_controller(small_env_options: dict, tmp_path: Path) -> None:
    config = EnvConfig(**small_env_options)
    checkpoint = _checkpoint(config)
    save_torch({"ppo": {}, "progress": {}, "controller": checkpoint}, tmp_path / "last.pt")
    save_torch(checkpoint, tmp_path / "best.pt")
    runs = [_Loop(config, tmp_path / name, 1, 1e-3) for name in ("last.pt", "best.pt")]
    for loop in runs:
        loop.run(config.num_train_steps)
    assert runs[0].lrs == runs[1].lrs


def test_readme_example_runs(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's example, verbatim, with the released controller, on the fake data."""
    root = Path(__file__).parents[1]
    (tmp_path / "data").symlink_to(data_dir)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[]):  # the example draws from the global RNG
        exec(compile(README_EXAMPLE, "README example", "exec"), namespace)
    scheduler = namespace["scheduler"]
    assert scheduler.last_epoch == 200 and scheduler.update_freq == 10 and "budget_left" in scheduler.features
    seen = scheduler.last_validation
    assert capsys.readouterr().out == f"final LR {scheduler.lr:.3g}, validation loss {seen.loss:.4f}\n"

    readme = (root / "README.md").read_text()
    section = re.search(r"## Use a learned schedule in your own code\n.*?```python\n(.*?)```", readme, re.S)
    assert section is not None, "README.md lost its section 'Use a learned schedule in your own code'"
    assert section.group(1) == README_EXAMPLE


def test_released_controllers_load_by_name_and_a_path_still_works(small_env_options: dict, tmp_path: Path) -> None:
    for name, released in CONTROLLERS.items():
        assert controller_file(name) == released.checkpoint and released.checkpoint.is_file()
        assert f"`{name}`" in released.card.read_text().splitlines()[0]  # its card's title names it
        assert released.trained_for and released.tested_on
    config = EnvConfig(**small_env_options)
    model = init_child(config, 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    by_name = LearnedLRScheduler(optimizer, "quick-mlp", model.output_layer)
    by_path = LearnedLRScheduler(optimizer, CONTROLLERS["quick-mlp"].checkpoint, model.output_layer)
    assert by_name.features == by_path.features and by_name.update_freq == 10 and by_name.num_train_steps == 200
    pairs = zip(by_name.controller.parameters(), by_path.controller.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    message = _error(lambda: LearnedLRScheduler(optimizer, "quick-cnn", model.output_layer))
    assert "no released controller named 'quick-cnn'" in message and ", ".join(CONTROLLERS) in message
    assert "no such checkpoint" in _error(lambda: LearnedLRScheduler(optimizer, tmp_path / "a.pt", model.output_layer))
    assert "pass num_train_steps" in _error(lambda: LearnedLRScheduler(optimizer, "generalist", model.output_layer))
    generalist = LearnedLRScheduler(optimizer, "generalist", model.output_layer, num_train_steps=300)
    assert (generalist.update_freq, generalist.num_train_steps) == (15, 300)
