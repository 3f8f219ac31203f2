"""The Lightning callback sets the LRs the plain-loop scheduler sets on the same batches."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_scheduler import _checkpoint
from torch import nn

from alrs.config import EnvConfig
from alrs.io import save_torch
from alrs.scheduler import LearnedLRScheduler

lightning = pytest.importorskip("lightning", reason="the lightning extra is not installed: pip install -e .[lightning]")
from alrs.integrations.lightning import LearnedLR  # noqa: E402

ACCUMULATE, STEPS, UPDATE_FREQ, BATCH = 2, 24, 4, 8


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
        self.output_layer = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(x))


def _data() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(160, 8, generator=g), torch.randint(0, 10, (160,), generator=g), torch.randn(64, 8, generator=g)


class Classifier(lightning.LightningModule):
    def __init__(self, val_x: torch.Tensor, val_y: torch.Tensor):
        super().__init__()
        torch.manual_seed(0)
        self.model, self.val_x, self.val_y, self.lrs = Net(), val_x, val_y, []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)

    def validation_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(self.val_x), self.val_y


def _plain_loop(controller: Path, val_x: torch.Tensor, val_y: torch.Tensor) -> list[float]:
    """The same training in a plain loop: STEPS optimizer steps, each of ACCUMULATE batches."""
    train_x, train_y, _ = _data()
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def evaluate() -> tuple[torch.Tensor, torch.Tensor]:
        model.eval()
        out = model(val_x), val_y
        model.train()
        return out

    scheduler = LearnedLRScheduler(optimizer, controller, model.output_layer, UPDATE_FREQ, evaluate=evaluate)
    lrs, batches, loss_sum = [], len(train_x) // BATCH, None
    for i in range(STEPS * ACCUMULATE):
        b = i % batches
        loss = F.cross_entropy(model(train_x[b * BATCH : (b + 1) * BATCH]), train_y[b * BATCH : (b + 1) * BATCH])
        (loss / ACCUMULATE).backward()
        part = (loss / ACCUMULATE).detach()
        loss_sum = part if loss_sum is None else loss_sum + part
        if (i + 1) % ACCUMULATE == 0:
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step(loss_sum)
            loss_sum = None
    assert scheduler.num_train_steps == STEPS
    return lrs


def _fit(
    controller: Path, root: Path, max_steps: int, ckpt_path: Path | None = None, **options: Any
) -> tuple[Classifier, LearnedLR, Any]:
    train_x, train_y, val_x = _data()
    module = Classifier(val_x, torch.arange(64) % 10)
    callback = LearnedLR(controller, "model.output_layer", update_freq=UPDATE_FREQ, **options)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train_x, train_y), batch_size=BATCH)
    trainer = lightning.Trainer(
        max_steps=max_steps,
        accumulate_grad_batches=ACCUMULATE,
        callbacks=[callback],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on num_workers
        trainer.fit(module, loader, ckpt_path=ckpt_path)
    return module, callback, trainer


def test_the_callback_sets_the_plain_loops_lrs_and_resumes_from_a_checkpoint(
    small_env_options: dict, tmp_path: Path
) -> None:
    config = EnvConfig(**{**small_env_options, "num_train_steps": STEPS, "update_freq": UPDATE_FREQ})
    save_torch(_checkpoint(config), tmp_path / "best.pt")
    module, callback, _ = _fit(tmp_path / "best.pt", tmp_path, STEPS)
    expected = _plain_loop(tmp_path / "best.pt", _data()[2], torch.arange(64) % 10)
    assert len(module.lrs) == STEPS and len(set(expected)) >= 2  # the controller changes the LR
    assert module.lrs == expected
    assert callback.scheduler.num_train_steps == STEPS and callback.scheduler.last_validation.step == STEPS

    # Stopped after an epoch (10 optimizer steps, between two observations), then fit(ckpt_path=...): the same LRs.
    first, _, trainer = _fit(tmp_path / "best.pt", tmp_path, 10, num_train_steps=STEPS)
    trainer.save_checkpoint(tmp_path / "stop.ckpt")
    second, resumed, _ = _fit(tmp_path / "best.pt", tmp_path, STEPS, tmp_path / "stop.ckpt")
    assert first.lrs + second.lrs == expected
    # (Lightning's own resume at an epoch's end runs the next epoch's first batch twice, so the weights,
    # unlike the LRs, differ a little from the uninterrupted run's.)
    assert resumed.scheduler.last_validation.step == STEPS == resumed.scheduler.last_epoch
