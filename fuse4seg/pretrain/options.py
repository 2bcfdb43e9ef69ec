"""Every option of ``fuse4seg pretrain``, declared once: :class:`PretrainOptions` (no torch import, so the
command line builds its flags cheaply)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from fuse4seg.errors import ConfigError
from fuse4seg.options import (
    MAX_BATCH_SIZE,
    MAX_SEED,
    MAX_SEG_CHANNELS,
    MAX_SEG_DEPTH,
    MAX_STEPS,
    MAX_WIDTH,
    above,
    at_least,
    check_options,
    device_problem,
    in_range,
    one_of,
    option,
    required,
    seed_problem,
    worker_count,
)

NORMS = ("group", "instance")
#: Splits pre-training may read. The test split is never among them: its images stay unseen until scoring.
SPLITS = ("train", "val")
#: Options that may change on --resume: they do not change the weights of a given step.
RESUMABLE = frozenset({"steps", "checkpoint_every", "workers", "resume", "overwrite", "progress"})
#: Size of the InfoNCE projection (the other bounds are train's, declared in fuse4seg.options).
MAX_EMBED_DIM = 4096


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
    tuple), :meth:`validate` checks them (ConfigError naming the option)."""

    benchmark: str = option("", "BraTS-Fuse package directory (its sources are read, never its labels); with --resume "
                                "the run's own unless given.", check=required("a benchmark directory"), path=True)
    out: str = option("", "Pre-training directory to create (encoder.pt, last.pt, config.json, metrics.jsonl, tb/).",
                      check=required("a directory"), path=True)
    splits: tuple[str, ...] = option(("train",), "Splits whose slices are pre-trained on: train and/or val.")
    steps: int = option(1000, "Total optimisation steps (--resume may raise it).", check=in_range(1, MAX_STEPS, integer=True))
    batch_size: int = option(8, f"Slices per step (2 to {MAX_BATCH_SIZE}: InfoNCE needs negatives).",
                             check=in_range(2, MAX_BATCH_SIZE, integer=True))
    lr: float = option(1e-3, "Adam learning rate.", check=above(0))
    width: int = option(16, f"Encoder feature maps at full resolution (doubled per scale; 1 to {MAX_WIDTH}, width * "
                            f"2**depth <= {MAX_SEG_CHANNELS}); match the segmenter's.", check=in_range(1, MAX_WIDTH, integer=True))
    depth: int = option(4, f"Encoder downsamplings (1 to {MAX_SEG_DEPTH}); match the segmenter's.",
                        check=in_range(1, MAX_SEG_DEPTH, integer=True))
    norm: str = option("group", "Encoder normalisation: group or instance; match the segmenter's.", check=one_of(NORMS))
    embed_dim: int = option(128, f"Size of the InfoNCE projection (1 to {MAX_EMBED_DIM}).",
                            check=in_range(1, MAX_EMBED_DIM, integer=True))
    temperature: float = option(0.1, "InfoNCE temperature (> 0).", check=above(0))
    consistency_weight: float = option(1.0, "Weight of the cross-modal InfoNCE loss (>= 0).", check=at_least(0))
    reconstruction_weight: float = option(1.0, "Weight of the masked-reconstruction loss (>= 0).", check=at_least(0))
    alignment_weight: float = option(1.0, "Weight of the per-location feature-alignment loss (>= 0).",
                                     check=at_least(0))
    mask_fraction: float = option(0.75, "Fraction of the masked modality's 2^depth-pixel cells hidden, in (0, 1] "
                                        "(1: restore it from the other modalities alone).",
                                  check=in_range(0, 1, low_open=True))
    seed: int = option(0, f"Seed of the initial weights, data order, pairs and masks, 0 to {MAX_SEED}.",
                       check=seed_problem)
    checkpoint_every: int = option(100, "Write last.pt every N steps (and at the end).", recorded=False,
                                   check=in_range(1, MAX_STEPS, integer=True))
    resume: bool = option(False, "Continue --out from its last.pt (bit-identical on CPU to an uninterrupted run).",
                          recorded=False)
    overwrite: bool = option(False, "Replace an existing --out written by fuse4seg pretrain.", recorded=False)
    workers: int = option(0, "DataLoader worker processes (0: read in the main process).", recorded=False,
                          check=worker_count(0))
    device: str = option("cpu", "cpu or cuda.", recorded=False, check=device_problem)
    progress: bool = option(True, "Show a progress bar on a terminal.", flag="--progress/--no-progress",
                            recorded=False)

    def __post_init__(self) -> None:
        """Normalise the paths and ``splits`` (see the class docstring)."""
        object.__setattr__(self, "benchmark", os.fspath(self.benchmark))
        object.__setattr__(self, "out", os.fspath(self.out))
        object.__setattr__(self, "splits", parse_splits(self.splits))

    def validate(self) -> PretrainOptions:
        """ConfigError naming the option for any value out of range (each field's declared check) or a combination
        that cannot train; returns self."""
        check_options(self)
        if self.width * 2**self.depth > MAX_SEG_CHANNELS:
            raise ConfigError(f"width {self.width} and depth {self.depth} give a bottleneck of "
                              f"{self.width * 2**self.depth} channels (width * 2**depth), over the limit of {MAX_SEG_CHANNELS}",
                              option="width")
        if not any((self.consistency_weight, self.reconstruction_weight, self.alignment_weight)):
            raise ConfigError("all three loss weights are 0: nothing would be learned", option="consistency_weight")
        return self
