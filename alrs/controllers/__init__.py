"""The released controllers, shipped with the package and loaded by name.

Each is a folder of this package holding its ``best.pt`` and its card (``README.md``: how it was
trained, where it was tested and what it is meant for)::

    from alrs.controllers import CONTROLLERS
    for name, released in CONTROLLERS.items():
        print(name, released.trained_for, released.tested_on, released.card)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from alrs.errors import UserError


@dataclass(frozen=True)
class Released:
    """A released controller: its name, what it was trained for and where it was tested."""

    name: str
    trained_for: str
    tested_on: str

    @property
    def checkpoint(self) -> Path:
        """Its ``best.pt``."""
        return Path(str(files(__name__) / self.name / "best.pt"))

    @property
    def card(self) -> Path:
        """Its card, ``README.md``."""
        return Path(str(files(__name__) / self.name / "README.md"))


CONTROLLERS: dict[str, Released] = {
    released.name: released
    for released in (
        Released(
            "generalist",
            "Adam on short runs (100 to 400 steps) of small image classifiers from a known initial LR; "
            "pass num_train_steps (update_freq follows: 20 decisions a run)",
            "20 held-out tasks of configs/suites/fa-mnist-small.json: beats Adam's and Schedule-Free AdamW's "
            "defaults, loses to Prodigy's defaults and to a per-task tuned linear decay",
        ),
        Released(
            "generalist-relative",
            "Adam on short runs (100 to 400 steps) of small image classifiers from the LR a user would type; "
            "pass num_train_steps (update_freq follows: 20 decisions a run)",
            "20 held-out tasks of configs/suites/fa-mnist-small.json: beats every untuned default, Prodigy's "
            "included, on 16 to 20 of them; a per-task tuned linear decay is 1.5% better at the median",
        ),
        Released(
            "quick-mlp",
            "Adam on the MLP on Fashion-MNIST, batch 500, 200 steps from lr 1e-2 (configs/quick-recipe.json)",
            "that setting, 10 paired seeds: beats the tuned step decay, cosine and linear decay; "
            "a tuned Schedule-Free AdamW beats it",
        ),
    )
}


def controller_file(controller: str | os.PathLike) -> Path:
    """The checkpoint of a released controller's name, or ``controller`` itself as a path."""
    if isinstance(controller, str) and controller in CONTROLLERS:
        return CONTROLLERS[controller].checkpoint
    path = Path(controller)
    if not path.exists() and isinstance(controller, str) and path.suffix != ".pt" and len(path.parts) == 1:
        raise UserError(
            f"no released controller named {controller!r}: the names are {', '.join(CONTROLLERS)}; "
            "or give the path of a best.pt"
        )
    return path


__all__ = ["CONTROLLERS", "Released", "controller_file"]
