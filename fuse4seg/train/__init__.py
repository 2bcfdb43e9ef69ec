"""Training (``fuse4seg train``): the options, the modes and run variants, the steps and the loop; evaluation and
inference build on it (fuse4seg.evaluation, fuse4seg.inference)."""

from fuse4seg.train.config import TrainConfig
from fuse4seg.train.loop import Trainer, train, train_from_options
from fuse4seg.train.modes import MODES
from fuse4seg.train.resolve import build_config
from fuse4seg.train.run import load_run, resolve_config

__all__ = ["MODES", "TrainConfig", "Trainer", "build_config", "load_run", "resolve_config", "train",
           "train_from_options"]
