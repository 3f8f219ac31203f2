"""What the controller observes and what it is rewarded with: the one place that names them, shared by
the env and by :mod:`alrs.scheduler` (what its action does to the LR: :mod:`alrs.actions`).

The paper's observation is 7 features (Sec. 3.1) and its reward is minus the validation loss at
each controller step (Sec. 3.2). Both stay the defaults. The options below are ours, each chosen
by one config value and recorded in every controller checkpoint:

- ``lr_feature="log-lr"``: the LR as ``log10(lr / 1e-3)``, a fixed transform, instead of the raw
  LR, whose running normalization drifts as the policy changes the LRs it visits.
- ``time_feature=True``: the fraction of the episode's optimizer steps still to come (1 at the start,
  0 at the end). A step decay is a function of time; without this feature a controller cannot
  tell how much budget is left.
- ``reward="log-best"``: ``log B_{t-1} - log B_t`` with B the best validation loss so far; with
  gamma = 1 an episode's return is ``log(L_0 / B_T)``, exactly what the paper's test measures
  (the best-validation checkpoint), and comparable across initial LRs.
- ``reward="log-val"``: ``log L_{t-1} - log L_t``, a potential-based shaping with potential
  ``-log L``; with gamma = 1 the return is ``log(L_0 / L_T)``, the final network's loss.
- ``reward="relative"``: the ``log-best`` reward minus that of a reference run of the same child (the
  same initial weights, batches and initial LR) under the base schedule alone (the env runs it at
  reset); with gamma = 1 the return is ``log(R_T / B_T)``, R the reference's best validation loss: how
  much better than the base schedule, with the task's difficulty taken out (after LHOPT's reward,
  Almeida et al. 2021).
- ``feature_scale="relative"``: the six child features in a scale-free form, so that they mean the
  same on any dataset and network (for a controller trained across tasks, :mod:`alrs.tasks`):
  the losses over the untrained child's validation loss ``L_0`` (about ``log C`` for C classes);
  the two prediction variances over ``1/C - 1/C^2``, their value for one-hot predictions (so
  0 = uniform, 1 = certain); the output weights' mean over their initial std and their
  variance over their initial variance (which depend on the layer's width).
- ``trend_features=True``: two scale-free signs that the LR level is wrong (after LHOPT, Almeida et
  al. 2021): the log ratio of the train loss to its value at the previous observation (its recent
  slope relative to its level; 0 at the first) and the log ratio of the validation to the train loss.
"""

from __future__ import annotations

import math

import torch

from alrs.errors import UserError

CHILD_FEATURES: tuple[str, ...] = (
    "train_loss",  # mean minibatch loss over the last update_freq optimizer steps
    "val_loss",  # loss on the validation split (or its fixed val_size subset)
    "pred_var",  # variance of the validation predictions (softmax probabilities)
    "pred_change_var",  # variance of their change since the previous observation
    "output_weight_mean",  # mean of the output layer's weights
    "output_weight_var",  # variance of the output layer's weights
)
"""The six features of the child network, the first six of every feature set."""

RELATIVE_CHILD_FEATURES: tuple[str, ...] = (
    "train_loss_rel",  # train loss / L_0
    "val_loss_rel",  # validation loss / L_0
    "pred_confidence",  # pred_var / (1/C - 1/C^2)
    "pred_change",  # pred_change_var / (1/C - 1/C^2)
    "output_weight_mean_rel",  # output weight mean / its initial std
    "output_weight_var_rel",  # output weight variance / its initial variance
)
"""The child features with ``feature_scale="relative"`` (ours): scale-free across datasets and networks."""

FEATURE_SCALES: tuple[str, ...] = ("raw", "relative")
"""How the child's six features are observed: as measured (the paper's), or scale-free (ours)."""

LR_FEATURES: tuple[str, ...] = ("lr", "log-lr")
"""How the current LR is observed: raw (the paper's), or ``log10(lr / 1e-3)`` (ours)."""

TREND_FEATURES: tuple[str, ...] = (
    "train_loss_trend",  # log(train loss / its value at the previous observation); 0 at the first
    "val_train_gap",  # log(validation loss / train loss)
)
"""The features of ``trend_features=True`` (ours), after the LR and the time left."""

FIXED_SCALE_FEATURES: frozenset[str] = frozenset({"log_lr", "budget_left"})
"""Features already on a unit scale by a fixed transform: a controller does not normalize them
by running statistics, so what it sees for a given LR or time never drifts during training."""


def fixed_scale_indices(features: tuple[str, ...]) -> tuple[int, ...]:
    """Positions of the fixed-scale features in ``features`` (the controller leaves them unnormalized)."""
    return tuple(i for i, name in enumerate(features) if name in FIXED_SCALE_FEATURES)


REWARDS: tuple[str, ...] = ("val-loss", "log-best", "log-val", "relative")
"""Reward options: the paper's minus validation loss, and three log-ratio rewards (ours)."""

LOG_LR_REFERENCE = 1e-3
"""The LR that the ``log-lr`` feature maps to 0."""


def feature_names(
    lr_feature: str = "lr", time_feature: bool = False, feature_scale: str = "raw", trend_features: bool = False
) -> tuple[str, ...]:
    """The observation's features, in order: the child's six, the LR, and optionally the time left and the
    two :data:`TREND_FEATURES`.

    ``feature_names()`` is the paper's 7 (Sec. 3.1).
    """
    if lr_feature not in LR_FEATURES:
        raise UserError(f"lr_feature must be one of {', '.join(LR_FEATURES)}, got {lr_feature!r}")
    if feature_scale not in FEATURE_SCALES:
        raise UserError(f"feature_scale must be one of {', '.join(FEATURE_SCALES)}, got {feature_scale!r}")
    child = CHILD_FEATURES if feature_scale == "raw" else RELATIVE_CHILD_FEATURES
    time = ("budget_left",) if time_feature else ()
    return (*child, "lr" if lr_feature == "lr" else "log_lr", *time, *(TREND_FEATURES if trend_features else ()))


def producible_feature_sets() -> list[tuple[str, ...]]:
    """Every feature set :func:`feature_names` produces (what a saved controller may observe)."""
    return [
        feature_names(lr, time, scale, trend)
        for lr in LR_FEATURES
        for time in (False, True)
        for scale in FEATURE_SCALES
        for trend in (False, True)
    ]


def relative_child_features(child: list[float], first: list[float], num_classes: int) -> list[float]:
    """The six child features ``child`` in the scale-free form of ``feature_scale="relative"``, given the
    untrained child's raw features ``first`` and the number of classes."""
    one_hot_var = 1 / num_classes - 1 / num_classes**2
    loss0, weight_var0 = first[1], first[5]
    return [
        child[0] / loss0,
        child[1] / loss0,
        child[2] / one_hot_var,
        child[3] / one_hot_var,
        child[4] / math.sqrt(weight_var0),
        child[5] / weight_var0,
    ]


PAPER_FEATURES: tuple[str, ...] = feature_names()
"""The paper's 7 state features (Sec. 3.1)."""


def _log(x: float) -> float:
    """The log of a loss, -inf for 0 (a non-finite feature ends an episode as divergence), nan for nan."""
    return math.log(x) if x > 0 else (-math.inf if x == 0 else math.nan)


def observation_tail(
    names: tuple[str, ...],
    lr: float,
    steps_done: int,
    total_steps: int,
    child: list[float] | None = None,
    prev_train_loss: float | None = None,
) -> list[float]:
    """The features after the child's six: the LR (raw or log) and, if asked for, the budget left and the
    trend features of the child's raw ``child`` features and the previous observation's train loss."""
    tail = [lr if names[len(CHILD_FEATURES)] == "lr" else math.log10(lr / LOG_LR_REFERENCE)]
    if "budget_left" in names:
        tail.append(1.0 - steps_done / total_steps)
    if TREND_FEATURES[0] in names:
        train, val = child[0], child[1]
        tail.append(0.0 if prev_train_loss is None else _log(train) - _log(prev_train_loss))
        tail.append(_log(val) - _log(train))
    return tail


def check_reward(reward: str) -> None:
    """A one-line error unless ``reward`` is one of :data:`REWARDS`."""
    if reward not in REWARDS:
        raise UserError(f"reward must be one of {', '.join(REWARDS)}, got {reward!r}")


def step_reward(reward: str, prev_val: float, val: float, prev_best: float, best: float) -> float:
    """The reward of one controller step that ended with validation loss ``val`` (best so far ``best``)."""
    if reward == "val-loss":
        return -val
    if reward in ("log-best", "relative"):  # relative: less the reference's own (EpisodeTracker)
        return math.log(prev_best) - math.log(best)
    return math.log(prev_val) - math.log(val)


def divergence_reward(reward: str, prev_val: float, prev_best: float, steps_left: int, divergence_loss: float) -> float:
    """The reward of the step on which the child diverged, which ends the episode.

    ``val-loss``: ``divergence_loss`` is charged for every step left, so diverging never pays.
    The log rewards treat the diverged child's loss as ``divergence_loss``: the return is then
    ``log(L_0 / divergence_loss)``, worse than any episode that trains on.
    """
    if reward == "val-loss":
        return -divergence_loss * steps_left
    return math.log(prev_val if reward == "log-val" else prev_best) - math.log(divergence_loss)


def child_features(
    train_loss: torch.Tensor,
    val_loss: torch.Tensor,
    probs: torch.Tensor,
    prev_probs: torch.Tensor | None,
    output_weight: torch.Tensor,
) -> torch.Tensor:
    """The six :data:`CHILD_FEATURES` of E children at once.

    Args:
        train_loss, val_loss: shape (E,).
        probs: validation softmax predictions, shape (E, N, classes).
        prev_probs: the same at the previous observation, or None at the start (change 0).
        output_weight: the output layers' weights, shape (E, classes, fan_in).
    Returns:
        shape (E, 6), on the device: no host sync here.
    """
    change_var = torch.zeros_like(val_loss) if prev_probs is None else (probs - prev_probs).flatten(1).var(1)
    w = output_weight.detach().flatten(1)
    return torch.stack([train_loss, val_loss, probs.flatten(1).var(1), change_var, w.mean(1), w.var(1)], dim=1)
