"""alrs: learning an adaptive learning-rate schedule (Xu, Dai, Kemp, Metz; arXiv:1909.09712)."""

from alrs.data import DATASETS, load_dataset
from alrs.env import FEATURES, EnvConfig, LREnv, make_env
from alrs.models import ARCHITECTURES, build_model

__version__ = "0.1.0"

__all__ = ["ARCHITECTURES", "DATASETS", "FEATURES", "EnvConfig", "LREnv", "build_model", "load_dataset", "make_env"]
