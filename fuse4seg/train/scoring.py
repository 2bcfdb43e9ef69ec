"""Batched prediction over a split and the fast per-slice Dice used for validation during training."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from fuse4seg.conventions import REGIONS
from fuse4seg.losses import predict_labels, region_targets
from fuse4seg.train.networks import Pipeline


@dataclass
class PredictedBatch:
    """One batch of predictions on CPU: sources (N,4,H,W), stored fused (N,1,H,W), learned fused
    (N,1,H,W) or None, predicted and true labels (N,H,W) int64, case ids and slice indices."""

    source: torch.Tensor
    stored_fused: torch.Tensor
    fused: torch.Tensor | None
    pred: torch.Tensor
    label: torch.Tensor
    case_id: list[str]
    slice_index: list[int]


def predict_batches(pipeline: Pipeline, dataset: Dataset, device: torch.device | str, batch_size: int = 16,
                    limit: int | None = None, num_workers: int = 0) -> Iterator[PredictedBatch]:
    """Run the pipeline (eval mode, no grad) over the first ``limit`` items of ``dataset`` in order."""
    if limit is not None and limit < len(dataset):
        dataset = Subset(dataset, range(limit))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = pipeline.seg.training
    pipeline.train(False)
    try:
        with torch.no_grad():
            for batch in loader:
                source = batch["source"].to(device)
                stored = batch["fused"].to(device)
                fused, logits = pipeline.forward(source, stored)
                pred = predict_labels(logits, pipeline.region_based)
                yield PredictedBatch(
                    batch["source"], batch["fused"], None if fused is None else fused.cpu(), pred.cpu(),
                    batch["label"].long(), [str(c) for c in batch["case_id"]],
                    [int(s) for s in batch["slice_index"]],
                )
    finally:
        pipeline.train(was_training)


def dice_per_slice(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(N, 3) Dice of WT, TC, ET per slice for (N, H, W) label maps; both empty -> 1 (BraTS rule)."""
    p, t = region_targets(pred).bool().flatten(2), region_targets(truth).bool().flatten(2)
    inter = (p & t).sum(2).double()
    total = (p.sum(2) + t.sum(2)).double()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


def validation_scores(pipeline: Pipeline, dataset: Dataset, device: torch.device | str, batch_size: int = 16,
                      limit: int | None = None) -> tuple[dict[str, float], PredictedBatch | None]:
    """Mean per-slice Dice {"dice_WT","dice_TC","dice_ET","dice_mean"} and the first batch (for panels)."""
    dices, first = [], None
    for batch in predict_batches(pipeline, dataset, device, batch_size, limit):
        first = first or batch
        dices.append(dice_per_slice(batch.pred, batch.label))
    if not dices:
        return {}, None
    mean = torch.cat(dices).mean(0).tolist()
    scores = {f"dice_{name}": float(v) for name, v in zip(REGIONS, mean)}
    scores["dice_mean"] = float(np.mean(mean))
    return scores, first
