"""alrs: learning an adaptive learning-rate schedule (Xu, Dai, Kemp, Metz; arXiv:1909.09712).

The names below load their module on first use, so that ``import alrs.scheduler`` in a user's training
loop loads the controller and feature code only, not the LR environment.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_HOMES = {
    "DATASETS": "alrs.data",
    "load_dataset": "alrs.data",
    "FEATURES": "alrs.env",
    "EnvConfig": "alrs.env",
    "LREnv": "alrs.env",
    "make_env": "alrs.env",
    "ARCHITECTURES": "alrs.models",
    "build_model": "alrs.models",
}

__all__ = ["ARCHITECTURES", "DATASETS", "FEATURES", "EnvConfig", "LREnv", "build_model", "load_dataset", "make_env"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'alrs' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
