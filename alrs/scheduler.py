"""A learned LR schedule for anyone's PyTorch training loop: a trained controller as an ``LRScheduler``.

Two lines in a plain loop: construct it, then call ``scheduler.step(loss)`` after every ``optimizer.step()``::

    scheduler = LearnedLRScheduler(optimizer, "quick-mlp", model.output_layer, evaluate=evaluate)
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step(loss)

Every ``update_freq`` steps (and once in the constructor) it calls ``evaluate()``, which returns the
model's validation logits and integer targets, always of the same examples in the same order; what it
saw is ``scheduler.last_validation``, for your own logging. If you validate yourself, leave out
``evaluate`` and call ``scheduler.report_validation(logits, targets)`` whenever
``scheduler.needs_validation`` is true. :mod:`alrs.controllers` lists the released controllers.

The observation is the env's (:func:`alrs.features.child_features`, :func:`alrs.features.observation_tail`)
and the new LR the env's rule (:meth:`alrs.actions.Action.next_lr`): on the env's child, batches and
validation split it gives the env's LRs. A non-finite loss keeps the LR (with one warning).
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from alrs.actions import SETTINGS as ACTION_SETTINGS
from alrs.actions import checkpoint_action
from alrs.controller import Controller
from alrs.controllers import controller_file
from alrs.errors import UserError
from alrs.features import (
    child_features,
    feature_names,
    observation_tail,
    producible_feature_sets,
    relative_child_features,
)
from alrs.formats import ENV_ADDED_LATER, read_controller
from alrs.io import load_torch
from alrs.optim import evaluation_weights, optimizer_class

Evaluate = Callable[[], tuple[torch.Tensor, torch.Tensor]]
"""A function returning the model's validation logits (N, classes) and integer targets (N,)."""

_ENV_SETTINGS = (
    "update_freq",
    "num_train_steps",
    *ACTION_SETTINGS,
    "lr_feature",
    "time_feature",
    "feature_scale",
    "trend_features",
)  # what the scheduler reads from a checkpoint's metadata["env"]

_FIRST_ACTION_SETTINGS = ("discrete", "action_range", "lr_min", "lr_max")  # a state's own entries before alrs.actions
ACTION_ADDED_LATER = {key: ENV_ADDED_LATER[key] for key in ("action_set", "base_schedule")}

_SETTINGS = ("update_freq", "num_train_steps", "features", "action_settings")
_NOT_STATE = ("optimizer", "controller", "evaluate", "_output_weight", "_action")


@dataclass(frozen=True)
class Validation:
    """What the scheduler saw of the validation examples after ``step`` optimizer steps."""

    step: int
    loss: float
    accuracy: float
    prediction_variance: float  # the variance of the softmax predictions (a feature)
    prediction_change_variance: float  # the variance of their change since the previous observation (a feature)


def _controller_checkpoint(checkpoint: str | os.PathLike | dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The controller's checkpoint dict of a released controller's name, a best.pt, a last.pt or a loaded dict,
    and its name for errors."""
    if isinstance(checkpoint, dict):
        return read_controller(checkpoint), "the checkpoint"
    return read_controller(load_torch(controller_file(checkpoint))), str(checkpoint)


def _checked_settings(checkpoint: dict[str, Any], controller: Controller, source: str) -> dict[str, Any]:
    """The checkpoint's env settings, feature names and action, checked against each other and the controller."""
    metadata = checkpoint.get("metadata")
    env = metadata.get("env") if isinstance(metadata, dict) else None
    missing = [key for key in _ENV_SETTINGS if not isinstance(env, dict) or key not in env]
    if missing:
        raise UserError(
            f"{source}: the controller checkpoint does not record the settings it was trained with "
            f"(metadata['env'] lacks {', '.join(missing)})"
        )
    features = metadata.get("features")
    if not isinstance(features, (list, tuple)) or tuple(features) not in producible_feature_sets():
        raise UserError(
            f"{source}: the controller observes features {features}, not a feature set that "
            "alrs.features.feature_names produces"
        )
    names = ("lr_feature", "time_feature", "feature_scale", "trend_features")
    if tuple(features) != feature_names(*(env[name] for name in names)):
        recorded = ", ".join(f"{name}={env[name]!r}" for name in names)
        raise UserError(f"{source}: features {list(features)} contradict the checkpoint's {recorded}")
    if controller.obs_dim != len(features):
        raise UserError(
            f"{source}: the controller takes {controller.obs_dim} features, its metadata names {len(features)}"
        )
    return {
        **{key: env[key] for key in _ENV_SETTINGS},
        "features": tuple(features),
        "optimizer": env["optimizer"],
        "action": checkpoint_action(env, controller.action_spec, source),
        "decisions": metadata.get("decisions"),
    }


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return value


class LearnedLRScheduler(LRScheduler):
    """A trained controller setting an optimizer's LR every ``update_freq`` steps (the module's docs show the loop).

    Args:
        optimizer: the optimizer whose LR is set, of the class the controller was trained to drive (Adam for
            the released ones). The controller sets the first param group's LR; other groups keep their ratio to it.
        controller: a released controller's name (:data:`alrs.controllers.CONTROLLERS`), or the path of a
            ``best.pt`` or ``last.pt``, or such a file's loaded dict.
        output_layer: the model's output layer (an ``nn.Linear``), or a function returning its weight.
        update_freq: optimizer steps per controller step; default: the controller's (for one trained across
            run lengths: ``num_train_steps`` over its decisions per run).
        evaluate: returns the validation logits (N, classes) and integer targets (N,); called under
            ``torch.no_grad()`` (switch to ``model.eval()`` in it if the model has dropout or batch norm).
            None: give them with :meth:`report_validation`.
        num_train_steps: the length of your training in optimizer steps; default: the controller's.
        allow_transfer: drive an optimizer of another class than the controller's (untested).

    Attributes:
        lr: the LR the controller sets (the first group's).
        last_validation: what it saw at its latest observation (:class:`Validation`).
        diverged: a loss was not finite, so the controller kept the LR.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        controller: str | os.PathLike | dict[str, Any],
        output_layer: nn.Module | Callable[[], torch.Tensor],
        update_freq: int | None = None,
        *,
        evaluate: Evaluate | None = None,
        num_train_steps: int | None = None,
        allow_transfer: bool = False,
    ):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not a torch.optim.Optimizer")
        if not optimizer.param_groups:
            raise UserError("the optimizer has no param groups: there is no LR to schedule")
        data, source = _controller_checkpoint(controller)
        try:
            self.controller = Controller.from_checkpoint(data)
        except ValueError as exc:
            raise UserError(f"{source}: {exc}") from exc
        settings = _checked_settings(data, self.controller, source)
        expected = optimizer_class(settings["optimizer"])
        if not allow_transfer and type(optimizer) is not expected:
            raise UserError(
                f"{source}: the controller was trained to drive {settings['optimizer']} ({expected.__name__}), "
                f"not {type(optimizer).__name__}; pass allow_transfer=True to use it anyway (untested)"
            )
        if settings["decisions"] is not None and num_train_steps is None:
            raise UserError(
                f"{source}: the controller was trained across run lengths: pass num_train_steps (your run's length)"
            )
        steps = settings["num_train_steps"] if num_train_steps is None else num_train_steps
        self.num_train_steps = _positive_int("num_train_steps", steps)
        if update_freq is None:
            decisions = settings["decisions"]
            update_freq = settings["update_freq"] if decisions is None else max(1, self.num_train_steps // decisions)
        self.update_freq = _positive_int("update_freq", update_freq)
        self.features: tuple[str, ...] = settings["features"]
        self.action_settings = {key: settings[key] for key in ACTION_SETTINGS}
        self._action = settings["action"]
        if isinstance(output_layer, nn.Module):
            self._output_weight: Callable[[], torch.Tensor] = lambda: output_layer.weight
        elif callable(output_layer):
            self._output_weight = output_layer
        else:
            raise UserError(
                f"output_layer must be an nn.Linear or a function returning its weight, "
                f"got {type(output_layer).__name__}"
            )
        self.evaluate = evaluate
        first = optimizer.param_groups[0]
        self.lr = float(first.get("initial_lr", first["lr"]))  # what LRScheduler takes as the first base LR
        self.level = self.lr  # what the actions move; the LR is it times the base schedule (alrs.actions)
        self.diverged = False
        self._seen: dict[str, float] | None = None  # last_validation's fields (plain data: state_dict loads safely)
        self._prev_probs: torch.Tensor | None = None
        self._first_child: list[float] | None = None
        self._prev_train_loss: float | None = None  # the last observation's, for the trend features
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0
        self._pending: tuple[torch.Tensor, ...] | None = None  # validation reported before its step()
        self._waiting_at: int | None = None  # the step count of an observation waiting for validation
        self._waiting_train_loss: torch.Tensor | None = None
        self._last_obs: torch.Tensor | None = None
        super().__init__(optimizer)  # its initial step() makes the first observation

    @property
    def needs_validation(self) -> bool:
        """True while an observation waits for :meth:`report_validation`; no optimizer step may run until then."""
        return self._waiting_at is not None

    @property
    def last_observation(self) -> np.ndarray | None:
        """The controller's latest observation, as the env gives it (None before the first)."""
        return None if self._last_obs is None else self._last_obs.numpy().copy()

    @property
    def last_validation(self) -> Validation | None:
        """What the scheduler saw of the validation examples at its latest observation (None before the first)."""
        return None if self._seen is None else Validation(**self._seen)

    def report_train_loss(self, loss: torch.Tensor | float) -> None:
        """Deprecated: pass the loss to :meth:`step` instead."""
        warnings.warn(
            "LearnedLRScheduler.report_train_loss(loss) is deprecated: call scheduler.step(loss)",
            DeprecationWarning,
            stacklevel=2,
        )
        self._check_not_waiting("report_train_loss()")
        self._add_train_loss(loss)

    def _add_train_loss(self, loss: torch.Tensor | float) -> None:
        """Add one minibatch's loss to the train-loss feature (the mean since the last observation), on its device."""
        loss = torch.as_tensor(loss).detach()
        if loss.numel() != 1:
            raise UserError(f"the loss must be one minibatch's mean loss, got shape {tuple(loss.shape)}")
        if self._loss_sum is None:
            self._loss_sum = torch.zeros((), device=loss.device)
        self._loss_sum += loss.reshape(()).to(self._loss_sum.device)
        self._loss_count += 1

    def report_validation(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Give the validation logits (N, classes) and integer targets (N,) of the model as it is now.

        Call it while :attr:`needs_validation` is true (the observation is made and the LR set at
        once), or after the optimizer step that ends a controller step, before its :meth:`step`.
        """
        if self.evaluate is not None:
            raise UserError("this scheduler calls its evaluate() itself; report_validation() is for one made without")
        due = (self.last_epoch + 1) % self.update_freq == 0
        if self._waiting_at is None and not due:
            raise UserError(
                f"no observation is due: the controller observes after every {self.update_freq} optimizer "
                f"steps, next after step {(self.last_epoch // self.update_freq + 1) * self.update_freq}"
            )
        validation = self._validation(logits, targets)
        if self._waiting_at is None:
            self._pending = validation
            return
        self._observe(self._waiting_at, self._waiting_train_loss, validation)
        self._waiting_at = self._waiting_train_loss = None
        self._apply_lrs()

    def step(self, loss: torch.Tensor | float | None = None) -> None:  # type: ignore[override]
        """Count one optimizer step and its minibatch's mean loss (a tensor stays on its device); after every
        ``update_freq`` steps, observe and set the LR of the next ones."""
        if self.last_epoch < 0:  # LRScheduler.__init__'s initial step: before any optimizer step
            self._observation_due(0, None)
        else:
            self._check_not_waiting("step()")
            if loss is None:
                warnings.warn(
                    "LearnedLRScheduler.step() without the loss is deprecated: call scheduler.step(loss)",
                    DeprecationWarning,
                    stacklevel=2,
                )
            else:
                self._add_train_loss(loss)
            steps = self.last_epoch + 1
            if steps % self.update_freq == 0:
                if self._loss_sum is None:
                    raise UserError(
                        f"no train loss was given in optimizer steps {steps - self.update_freq + 1} to "
                        f"{steps}: call scheduler.step(loss) after every optimizer.step()"
                    )
                train_loss = self._loss_sum / self._loss_count
                self._loss_sum, self._loss_count = None, 0
                self._observation_due(steps, train_loss)
        super().step()

    def get_lr(self) -> list[float]:
        """Each group's LR: the reference LR times the group's initial LR over the first group's."""
        first = float(self.base_lrs[0])
        return [self.lr] + [float(base) * (self.lr / first) for base in self.base_lrs[1:]]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue (step count, reference LR, previous predictions, the train losses so far,
        settings), without the controller, which stays in its checkpoint; it loads with ``weights_only=True``."""
        return copy.deepcopy({key: value for key, value in self.__dict__.items() if key not in _NOT_STATE})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a scheduler with the same settings; sets the optimizer's LRs too."""
        if "action_settings" not in state_dict and all(key in state_dict for key in _FIRST_ACTION_SETTINGS):
            # A state saved before alrs.actions kept the action's settings as entries of their own.
            older = {key: state_dict[key] for key in _FIRST_ACTION_SETTINGS}
            state_dict = {key: value for key, value in state_dict.items() if key not in older}
            state_dict["action_settings"] = older
        if isinstance(state_dict.get("action_settings"), dict) and "level" not in state_dict:
            # A state saved before base schedules and action sets ran the paper's, whose level is the LR.
            action_settings = {**ACTION_ADDED_LATER, **state_dict["action_settings"]}
            state_dict = {**state_dict, "action_settings": action_settings, "level": state_dict.get("lr")}
        missing = [key for key in _SETTINGS if key not in state_dict]
        if missing:
            raise UserError(f"not the state of a LearnedLRScheduler (no {', '.join(missing)})")
        for key in _SETTINGS:
            if state_dict[key] != getattr(self, key):
                raise UserError(
                    f"the state was saved by a scheduler with {key}={state_dict[key]!r}, "
                    f"this one has {getattr(self, key)!r}"
                )
        self.__dict__.update(copy.deepcopy(state_dict))
        self._apply_lrs()

    def _check_not_waiting(self, call: str) -> None:
        if self._waiting_at is not None:
            raise UserError(
                f"{call} while the controller waits for the validation predictions after optimizer step "
                f"{self._waiting_at}: call report_validation() before the next optimizer step"
            )

    def _observation_due(self, steps: int, train_loss: torch.Tensor | None) -> None:
        """Observe now with the validation reported or evaluated, or wait for :meth:`report_validation`."""
        if self._pending is not None:
            validation, self._pending = self._pending, None
        elif self.evaluate is not None:
            # A schedule-free optimizer's evaluation weights are swapped in for the validation and the weights
            # feature, as the env does (alrs.optim.evaluation_weights; a no-op for other optimizers).
            with torch.no_grad(), evaluation_weights(self.optimizer):
                self._observe(steps, train_loss, self._validation(*self.evaluate()))
            return
        else:
            self._waiting_at, self._waiting_train_loss = steps, train_loss
            return
        self._observe(steps, train_loss, validation)

    def _validation(
        self, logits: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean validation loss (as ``LREnv._evaluate`` computes it), accuracy and softmax predictions, on the
        device."""
        if logits.dim() != 2 or targets.shape != logits.shape[:1]:
            raise UserError(
                f"validation logits must have shape (N, classes) and targets (N,), "
                f"got {tuple(logits.shape)} and {tuple(targets.shape)}"
            )
        logits = logits.detach().float()
        probs = logits.softmax(1)
        if self._prev_probs is not None and self._prev_probs.shape != probs.shape:
            raise UserError(
                f"the validation predictions have shape {tuple(probs.shape)}, previously "
                f"{tuple(self._prev_probs.shape)}: use the same validation examples every time"
            )
        accuracy = (logits.argmax(1) == targets).float().mean()
        return F.cross_entropy(logits, targets, reduction="sum") / len(targets), accuracy, probs

    def _observe(
        self, steps: int, train_loss: torch.Tensor | None, validation: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> None:
        """The env's observation after ``steps`` optimizer steps, and the controller's action on it.

        ``train_loss`` None: the first observation, where the validation loss stands in (``LREnv.reset``).
        """
        val_loss, accuracy, probs = validation
        train_loss = val_loss if train_loss is None else train_loss.to(val_loss.device)
        prev = None if self._prev_probs is None else self._prev_probs.to(probs.device)[None]
        weight = self._output_weight().detach().to(probs.device)
        features = child_features(train_loss[None], val_loss[None], probs[None], prev, weight[None])[0]
        values = torch.cat([features, accuracy.to(features.dtype)[None]]).double().tolist()  # the one host sync
        child = values[:-1]
        self._seen = {"step": steps, "loss": values[1], "accuracy": values[-1]}
        self._seen.update(prediction_variance=values[2], prediction_change_variance=values[3])
        if self.features[0] == "train_loss_rel":  # feature_scale=relative: against the untrained model's
            self._first_child = self._first_child or child
            child = relative_child_features(child, self._first_child, probs.shape[1])
        tail = observation_tail(self.features, self.lr, steps, self.num_train_steps, values[:-1], self._prev_train_loss)
        self._prev_train_loss = values[0]
        obs = np.asarray([*child, *tail], dtype=np.float32)
        self._prev_probs, self._last_obs = probs, torch.from_numpy(obs)
        if np.all(np.isfinite(obs)):
            self.level = self._action.next_level(self.level, self.controller.act(obs))
            self.lr = self._action.lr(self.level, steps, self.num_train_steps)
            return
        if not self.diverged:
            warnings.warn(
                f"the training or validation loss is not finite after {steps} optimizer steps: the learned "
                f"schedule keeps the LR at {self.lr:.3g} (this warning is given once)",
                RuntimeWarning,
                stacklevel=4,
            )
        self.diverged = True

    def _apply_lrs(self) -> None:
        """Set the groups' LRs outside :meth:`step` (which LRScheduler's own machinery does)."""
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        groups = self.optimizer.param_groups
        self._last_lr = [g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"] for g in groups]


__all__ = ["Evaluate", "LearnedLRScheduler", "Validation"]
