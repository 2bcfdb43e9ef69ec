"""Training, evaluation and inference: the pipeline a user runs (``fuse4seg train/evaluate/fuse/demo``)."""

from fuse4seg.train.config import MODES, TrainConfig, build_config
from fuse4seg.train.loop import Trainer, resolve_config, train, train_from_options

__all__ = ["MODES", "TrainConfig", "Trainer", "build_config", "resolve_config", "train", "train_from_options"]
