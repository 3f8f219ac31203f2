"""A learned LR schedule in a PyTorch Lightning ``Trainer``: the :class:`LearnedLR` callback.

Needs the ``lightning`` extra (``pip install alrs[lightning]``)::

    class Classifier(lightning.LightningModule):
        ...
        def validation_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
            return self.model(self.val_x), self.val_y  # the same examples every time

    trainer = lightning.Trainer(max_steps=200, callbacks=[LearnedLR("quick-mlp", "model.output_layer")])

The callback drives :class:`alrs.scheduler.LearnedLRScheduler` on the module's optimizer: it counts optimizer
steps (with gradient accumulation, one per ``accumulate_grad_batches`` batches; the train loss of a step is
the mean of its batches'), takes the horizon from the trainer (``max_steps``) and calls the module's
validation hook, in ``eval()`` mode, every ``update_freq`` steps. Automatic optimization, one optimizer,
and no other LR scheduler on it. Its state is saved in Lightning's checkpoints, so ``fit(ckpt_path=...)``
continues the same schedule.
"""

from __future__ import annotations

import os
from typing import Any

import lightning
import torch

from alrs.errors import UserError
from alrs.scheduler import LearnedLRScheduler


class LearnedLR(lightning.pytorch.Callback):
    """Sets the LR of the module's optimizer by a learned controller.

    Args:
        controller: a released controller's name (:data:`alrs.controllers.CONTROLLERS`) or a checkpoint's path.
        output_layer: the module's output layer, as a dotted attribute path (``"model.output_layer"``).
        validation: the name of the module's method returning the validation logits and integer targets.
        update_freq, num_train_steps, allow_transfer: as :class:`~alrs.scheduler.LearnedLRScheduler`'s;
            ``num_train_steps`` defaults to the trainer's optimizer steps (``max_steps``, else its estimate).

    Attributes:
        scheduler: the scheduler, from the start of training (its ``last_validation`` for your logging).
    """

    def __init__(
        self,
        controller: str | os.PathLike,
        output_layer: str = "output_layer",
        validation: str = "validation_logits",
        *,
        update_freq: int | None = None,
        num_train_steps: int | None = None,
        allow_transfer: bool = False,
    ):
        self.controller, self.output_layer, self.validation = controller, output_layer, validation
        self.options: dict[str, Any] = dict(
            update_freq=update_freq, num_train_steps=num_train_steps, allow_transfer=allow_transfer
        )
        self.scheduler: LearnedLRScheduler | None = None
        self._loss: torch.Tensor | None = None  # the sum of the (normalized) losses since the last optimizer step
        self._steps = 0
        self._restored: dict[str, Any] | None = None  # a checkpoint's state, loaded when training starts

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state and the loss of a partial optimizer step, saved in Lightning's checkpoints."""
        if self.scheduler is None:
            return {}
        return {"scheduler": self.scheduler.state_dict(), "loss": self._loss}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep a checkpoint's state for the scheduler made when training starts (Lightning restores first)."""
        self._restored = state_dict or None

    def on_train_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise UserError(f"LearnedLR drives one optimizer, the module has {len(trainer.optimizers)}")
        hook = getattr(pl_module, self.validation, None)
        if not callable(hook):
            raise UserError(f"LearnedLR: the module has no method {self.validation}() returning validation logits")

        def evaluate() -> tuple[torch.Tensor, torch.Tensor]:
            was_training = pl_module.training
            pl_module.eval()
            try:
                return hook()
            finally:
                pl_module.train(was_training)

        options = dict(self.options)
        if options["num_train_steps"] is None:
            options["num_train_steps"] = int(
                trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
            )
        layer = pl_module.get_submodule(self.output_layer)
        self.scheduler = LearnedLRScheduler(trainer.optimizers[0], self.controller, layer, evaluate=evaluate, **options)
        self._steps, self._loss = trainer.global_step, None
        if self._restored is not None:  # fit(ckpt_path=...): the schedule goes on where the checkpoint left it
            self.scheduler.load_state_dict(self._restored["scheduler"])
            self._loss, self._restored = self._restored["loss"], None

    def on_train_batch_end(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.scheduler is None:
            return
        loss = outputs["loss"].detach() if isinstance(outputs, dict) else None
        if loss is None:
            raise UserError("LearnedLR needs training_step to return the loss (automatic optimization)")
        self._loss = loss if self._loss is None else self._loss + loss  # each divided by accumulate_grad_batches
        if trainer.global_step > self._steps:  # an optimizer step was made
            self._steps = trainer.global_step
            self.scheduler.step(self._loss)
            self._loss = None


__all__ = ["LearnedLR"]
