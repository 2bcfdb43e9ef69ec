"""Run variants (task x dims) at work: what each one opens for training and validation, its second network, output
count and loss, and how it is validated during training; one registry entry per variant.

A :class:`Variant` is its torch-free :class:`~fuse4seg.train.variant_facts.VariantFacts` (the option rules the
declarations check) plus these behaviours. The trainer, evaluation, ``fuse`` and ``robustness`` ask the variant of
a run (:func:`variant_of`) instead of comparing ``task`` or ``dims``; evaluation and inference keep their own
scorers and predictors keyed by the variant's name (they sit above train).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch.utils.data import Dataset

from fuse4seg.conventions import NUM_CLASSES, REGIONS, modality_indices
from fuse4seg.errors import ConfigError
from fuse4seg.losses.classification import presence_loss
from fuse4seg.losses.segmentation import Reduce, segmentation_loss
from fuse4seg.runkit.batches import TrainingView
from fuse4seg.runkit.benchmark import BenchmarkInfo, open_split
from fuse4seg.train.modes import MODES, Mode
from fuse4seg.train.patches import open_volumes
from fuse4seg.train.predict import (
    Predictable,
    PredictedBatch,
    classification_scores,
    validation_scores,
    volume_validation_scores,
)
from fuse4seg.train.variant_facts import VARIANT_FACTS, VariantFacts, facts_of

if TYPE_CHECKING:
    from fuse4seg.data.package.dataset import BraTSFuse
    from fuse4seg.train.config import TrainConfig

#: Region-based training (and presence) predicts WT, TC, ET sigmoids instead of 4-class softmax logits.
NUM_REGIONS = len(REGIONS)
#: Validation scores and the first predicted batch (for panels; None when the variant shows none).
Scores = tuple[dict[str, float], PredictedBatch | None]


class TrainingData(NamedTuple):
    """What a run trains and validates on: the train items as the steps read them, the val split (None without
    one) and the case id of every train item (the pools and the hold-out split are drawn over items)."""

    train_set: Dataset
    val_set: Dataset | None
    case_ids: tuple[str, ...]


def training_view(config: TrainConfig, info: BenchmarkInfo, dataset: BraTSFuse) -> BraTSFuse | TrainingView:
    """The train split as the steps see it: ``dataset`` itself, or a :class:`TrainingView` with --augment or
    --degrade-inputs (re-fusing degraded inputs by the benchmark's rule when the segmenter reads its fused image)."""
    from fuse4seg.fusion import FUSION_RULES

    if config.augment == "none" and config.degrade_inputs == "none":
        return dataset
    rule = None
    if config.degrade_inputs != "none" and "fused" in config.seg_inputs() and not MODES[config.mode].has_fusion:
        if info.fusion_method not in FUSION_RULES:
            raise ConfigError(f"direct training on the benchmark's fused image with degraded inputs re-fuses them by "
                              f"its rule, but {info.path} was fused by {info.fusion_method!r}, not a classical rule "
                              f"({', '.join(FUSION_RULES)})", option="degrade_inputs")
        rule = (info.fusion_method, modality_indices(info.fusion_inputs))
    return TrainingView(dataset, config.augment, config.degrade_inputs, rule)


def _open_slices(config: TrainConfig, info: BenchmarkInfo) -> TrainingData:
    """The stored train slices (through :func:`training_view`) and val slices; one item per slice."""
    train = training_view(config, info, open_split(config.benchmark, "train", config.cache))
    val = open_split(config.benchmark, "val", config.cache) if info.counts["val"] else None
    return TrainingData(train, val, info.train_case_ids)


def _open_volumes(config: TrainConfig, info: BenchmarkInfo) -> TrainingData:
    """Patches of the stored train volumes (drawn per step) and whole val volumes; one item per case."""
    train, val = open_volumes(config, info)
    return TrainingData(train, val, tuple(train.volumes.case_ids))


def _score_slices(pipeline: Predictable, val_set: Dataset, device: torch.device | str, config: TrainConfig) -> Scores:
    """Mean per-slice Dice of the first --eval-slices val slices, and their first batch."""
    return validation_scores(pipeline, val_set, device, limit=config.eval_slices)


def _score_volumes(pipeline: Predictable, val_set: Dataset, device: torch.device | str, config: TrainConfig) -> Scores:
    """Per-case 3-D Dice of the first --eval-slices val volumes (sliding windows of --patch), and a middle plane."""
    return volume_validation_scores(pipeline, val_set, device, config.patch, limit=config.eval_slices)


def _score_presence(pipeline: Predictable, val_set: Dataset, device: torch.device | str, config: TrainConfig) -> Scores:
    """AUROC, F1 and accuracy of slice-level presence on the first --eval-slices val slices (no panels)."""
    return classification_scores(pipeline, val_set, device, config.eval_slices), None


def _segmentation_loss(logits: torch.Tensor, label: torch.Tensor, region_based: bool, reduce: Reduce | None
                       ) -> torch.Tensor:
    """Dice + CE of (N, K, *spatial) logits against (N, *spatial) canonical labels (regions with ``region_based``)."""
    return segmentation_loss(logits, label, region_based, reduce=reduce)


def _presence_loss(logits: torch.Tensor, label: torch.Tensor, region_based: bool, reduce: Reduce | None
                   ) -> torch.Tensor:
    """BCE of (N, 3) presence logits against the presence of WT, TC, ET in (N, *spatial) canonical labels."""
    return presence_loss(logits, label, reduce=reduce)


@dataclass(frozen=True)
class Variant(VariantFacts):
    """A run variant's facts and behaviours.

    ``open_data``: (config, benchmark facts) -> :class:`TrainingData`; ``loss``: (logits, canonical labels,
    region_based, reduce) -> the second network's loss; ``score``: (pipeline, val set, device, config) ->
    validation :data:`Scores` (eval mode, no grad).
    """

    open_data: Callable[[TrainConfig, BenchmarkInfo], TrainingData] = _open_slices
    loss: Callable[[torch.Tensor, torch.Tensor, bool, Reduce | None], torch.Tensor] = _segmentation_loss
    score: Callable[[Predictable, Dataset, torch.device | str, TrainConfig], Scores] = _score_slices

    def num_outputs(self, config: TrainConfig) -> int:
        """Outputs of the second network: 3 region sigmoids or presence logits, or 4 class logits."""
        return NUM_REGIONS if config.region_based or self.sigmoid_outputs else NUM_CLASSES

    def network_name(self, name: str) -> str:
        """The registry name of network ``name`` (a 2-D name, as --fusion-model/--seg-model give it) for this
        variant's inputs: itself, or its ``-3d`` variant (fuse4seg.models.registry registers one per 2-D network)."""
        return name + self.network_suffix

    def second_network(self, config: TrainConfig, mode: Mode) -> str:
        """The 2-D name of the second network: the variant's own (a classifier), the mode's, or --seg-model."""
        return self.network or mode.seg_model or config.seg_model


def _variant(facts: VariantFacts, **behaviours: Any) -> Variant:
    """The variant of ``facts`` with ``behaviours`` (the defaults: those of 2-D segmentation)."""
    return Variant(**{f.name: getattr(facts, f.name) for f in dataclasses.fields(VariantFacts)}, **behaviours)


#: Every run variant, by name (the names of fuse4seg.train.variant_facts.VARIANT_FACTS).
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    _variant(VARIANT_FACTS["segment-2d"]),
    _variant(VARIANT_FACTS["segment-3d"], open_data=_open_volumes, score=_score_volumes),
    _variant(VARIANT_FACTS["classify-2d"], loss=_presence_loss, score=_score_presence),
)}


def variant_of(config: TrainConfig) -> Variant:
    """The variant of a configuration (its ``task`` and ``dims``); ConfigError for a pair no variant trains."""
    return VARIANTS[facts_of(config).name]


__all__ = ["VARIANTS", "Variant", "variant_of"]
