"""Every option of ``fuse4seg pretrain``, declared once: :class:`PretrainOptions` (no torch import, so the
command line builds its flags cheaply)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from fuse4seg.errors import ConfigError
from fuse4seg.options import MAX_SEED, available_cpus, check_seed, option

NORMS = ("group", "instance")
#: Splits pre-training may read. The test split is never among them: its images stay unseen until scoring.
SPLITS = ("train", "val")
#: Options that may change on --resume: they do not change the weights of a given step.
RESUMABLE = frozenset({"steps", "checkpoint_every", "workers", "resume", "overwrite", "progress"})


def parse_splits(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """'train,val' (or a sequence) -> a tuple of distinct names from :data:`SPLITS`; ConfigError otherwise."""
    names = [s.strip() for s in value.split(",")] if isinstance(value, str) else [str(s) for s in value]
    names = [n for n in names if n]
    if not names or any(n not in SPLITS for n in names) or len(set(names)) != len(names):
        raise ConfigError(f"{value!r}: expected distinct splits among {', '.join(SPLITS)} (never test)",
                          option="splits")
    return tuple(names)


@dataclass(frozen=True)
class PretrainOptions:
    """The options of one pre-training run; construction normalises them (paths to str, ``splits`` to a
    tuple), :meth:`validate` checks ranges (ConfigError naming the option)."""

    benchmark: str = option("", "BraTS-Fuse package directory (its sources are read, never its labels); with --resume "
                                "the run's own unless given.")
    out: str = option("", "Pre-training directory to create (encoder.pt, last.pt, config.json, metrics.jsonl, tb/).")
    splits: tuple[str, ...] = option(("train",), "Splits whose slices are pre-trained on: train and/or val.")
    steps: int = option(1000, "Total optimisation steps (--resume may raise it).")
    batch_size: int = option(8, "Slices per step (>= 2: InfoNCE needs negatives).")
    lr: float = option(1e-3, "Adam learning rate.")
    width: int = option(16, "Encoder feature maps at full resolution (doubled per scale); match the segmenter's.")
    depth: int = option(4, "Encoder downsamplings; match the segmenter's.")
    norm: str = option("group", "Encoder normalisation: group or instance; match the segmenter's.")
    embed_dim: int = option(128, "Size of the InfoNCE projection.")
    temperature: float = option(0.1, "InfoNCE temperature (> 0).")
    consistency_weight: float = option(1.0, "Weight of the cross-modal InfoNCE loss (>= 0).")
    reconstruction_weight: float = option(1.0, "Weight of the masked-reconstruction loss (>= 0).")
    alignment_weight: float = option(1.0, "Weight of the per-location feature-alignment loss (>= 0).")
    mask_fraction: float = option(0.75, "Fraction of the masked modality's 2^depth-pixel cells hidden, in (0, 1] "
                                        "(1: restore it from the other modalities alone).")
    seed: int = option(0, f"Seed of the initial weights, data order, pairs and masks, 0 to {MAX_SEED}.")
    checkpoint_every: int = option(100, "Write last.pt every N steps (and at the end).", recorded=False)
    resume: bool = option(False, "Continue --out from its last.pt (bit-identical on CPU to an uninterrupted run).",
                          recorded=False)
    overwrite: bool = option(False, "Replace an existing --out written by fuse4seg pretrain.", recorded=False)
    workers: int = option(0, "DataLoader worker processes (0: read in the main process).", recorded=False)
    device: str = option("cpu", "cpu or cuda.", recorded=False)
    progress: bool = option(True, "Show a progress bar on a terminal.", recorded=False)

    def __post_init__(self) -> None:
        """Normalise the paths and ``splits`` (see the class docstring)."""
        object.__setattr__(self, "benchmark", os.fspath(self.benchmark))
        object.__setattr__(self, "out", os.fspath(self.out))
        object.__setattr__(self, "splits", parse_splits(self.splits))

    def validate(self) -> PretrainOptions:
        """ConfigError naming the option for any value out of range; returns self."""
        for name in ("out", "benchmark"):
            if not getattr(self, name):
                raise ConfigError(f"a {'directory' if name == 'out' else 'benchmark directory'} is required", option=name)
        for name, low in (("steps", 1), ("batch_size", 2), ("width", 1), ("depth", 1), ("embed_dim", 1),
                          ("checkpoint_every", 1), ("workers", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"must be an integer >= {low}, got {value!r}", option=name)
        if self.workers > available_cpus():
            raise ConfigError(f"must be <= {available_cpus()} (the CPUs available), got {self.workers}",
                              option="workers")
        if self.norm not in NORMS:
            raise ConfigError(f"must be one of {', '.join(NORMS)}, got {self.norm!r}", option="norm")
        _positive("lr", self.lr)
        _positive("temperature", self.temperature)
        weights = {n: getattr(self, n) for n in ("consistency_weight", "reconstruction_weight", "alignment_weight")}
        for name, value in weights.items():
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"must be a finite number >= 0, got {value!r}", option=name)
        if not any(weights.values()):
            raise ConfigError("all three loss weights are 0: nothing would be learned", option="consistency_weight")
        if not (0 < self.mask_fraction <= 1):
            raise ConfigError(f"must be in (0, 1], got {self.mask_fraction!r}", option="mask_fraction")
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ConfigError(f"must be cpu or cuda, got {self.device!r}", option="device")
        check_seed(self.seed)
        return self


def _positive(name: str, value: float) -> None:
    """ConfigError about ``name`` unless ``value`` is a finite number > 0."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"must be a finite number > 0, got {value!r}", option=name)
