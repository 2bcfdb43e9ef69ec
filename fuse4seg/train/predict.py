"""Batched prediction over a split and the fast per-slice Dice used for validation during training; for 3-D runs,
sliding-window prediction of whole volumes and the per-case Dice of their validation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from fuse4seg.conventions import REGIONS
from fuse4seg.losses import predict_labels, region_targets
from fuse4seg.models import sliding_window
from fuse4seg.parallel import loader_worker_init
from fuse4seg.runkit.batches import one_line_batches


class Predictable(Protocol):
    """What prediction needs of a trained pipeline (fuse4seg.train.networks.Pipeline has it): its networks, whether
    the segmenter predicts regions, a train/eval switch and the forward pass. Declared here so that the run variants,
    which score with these functions, and the pipeline, which knows its variant, need not import each other."""

    fusion: torch.nn.Module | None
    seg: torch.nn.Module
    region_based: bool

    def train(self, mode: bool = True) -> Predictable:
        """Set the trained networks' flag; returns self."""

    def forward(self, source: torch.Tensor, stored_fused: torch.Tensor | None = None,
                texts: Sequence[str | None] | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(N, 4, *spatial) sources -> (fused or None, logits)."""

#: Fraction of a window shared with its neighbours when whole volumes are predicted window by window.
VOLUME_OVERLAP: float = 0.5


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
    text: list[str] | None = None  # the slices' texts, when the split has them


def forward_batches(pipeline: Predictable, dataset: Dataset, device: torch.device | str, batch_size: int = 16,
                    limit: int | None = None, num_workers: int = 0
                    ) -> Iterator[tuple[dict, torch.Tensor | None, torch.Tensor]]:
    """(batch, learned fused image or None, outputs) of the pipeline (eval mode, no grad) over the first ``limit``
    items of ``dataset`` in order; the outputs are segmentation logits, or presence logits of a classifier."""
    if limit is not None and limit < len(dataset):
        dataset = Subset(dataset, range(limit))
    # Workers die with this process (a kill -9 leaves none behind); they compute nothing differently.
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        worker_init_fn=loader_worker_init() if num_workers else None)
    was_training = pipeline.seg.training
    pipeline.train(False)
    try:
        with torch.no_grad():
            for batch in one_line_batches(loader):  # a worker's error as its one line
                fused, logits = pipeline.forward(batch["source"].to(device), batch["fused"].to(device),
                                                 batch.get("text"))
                yield batch, fused, logits
    finally:
        pipeline.train(was_training)


def predict_batches(pipeline: Predictable, dataset: Dataset, device: torch.device | str, batch_size: int = 16,
                    limit: int | None = None, num_workers: int = 0) -> Iterator[PredictedBatch]:
    """Run a segmentation pipeline (eval mode, no grad) over the first ``limit`` items of ``dataset`` in order."""
    for batch, fused, logits in forward_batches(pipeline, dataset, device, batch_size, limit, num_workers):
        yield PredictedBatch(
            batch["source"], batch["fused"], None if fused is None else fused.cpu(),
            predict_labels(logits, pipeline.region_based).cpu(), batch["label"].long(),
            [str(c) for c in batch["case_id"]], [int(s) for s in batch["slice_index"]], batch.get("text"),
        )


def dice_per_slice(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(N, 3) Dice of WT, TC, ET per item for (N, H, W) label maps (or (N, D, H, W) volumes); both empty -> 1
    (BraTS rule)."""
    p, t = region_targets(pred).bool().flatten(2), region_targets(truth).bool().flatten(2)
    inter = (p & t).sum(2).double()
    total = (p.sum(2) + t.sum(2)).double()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


def validation_scores(pipeline: Predictable, dataset: Dataset, device: torch.device | str, batch_size: int = 16,
                      limit: int | None = None) -> tuple[dict[str, float], PredictedBatch | None]:
    """Mean per-slice Dice {"dice_WT","dice_TC","dice_ET","dice_mean"} and the first batch (for panels)."""
    dices, first = [], None
    for batch in predict_batches(pipeline, dataset, device, batch_size, limit):
        first = first or batch
        dices.append(dice_per_slice(batch.pred, batch.label))
    return _mean_scores(dices), first


def presence_predictions(pipeline: Predictable, dataset: Dataset, device: torch.device | str, batch_size: int = 16,
                         limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, 3), presence targets (N, 3)) of a classifier pipeline (``--task classify``) over the first
    ``limit`` items of ``dataset``, in order (eval mode, no grad)."""
    from fuse4seg.models.classifier import presence_targets

    probs, targets = [], []
    for batch, _, logits in forward_batches(pipeline, dataset, device, batch_size, limit):
        probs.append(torch.sigmoid(logits.float()).cpu().numpy())
        targets.append(presence_targets(batch["label"].long()).numpy())
    return np.concatenate(probs), np.concatenate(targets)


def classification_scores(pipeline: Predictable, dataset: Dataset, device: torch.device | str,
                          limit: int | None = None) -> dict[str, float]:
    """Validation scores of a classifier: {"auroc_WT", ..., "auroc_mean", "f1_mean", "accuracy_mean"} (AUROC nan for
    a region present in every slice or in none; the mean skips it)."""
    from fuse4seg.metrics.classification import classification_metrics

    metrics = classification_metrics(*presence_predictions(pipeline, dataset, device, limit=limit))
    scores = {f"auroc_{name}": metrics[name]["auroc"] for name in REGIONS}
    scores.update(auroc_mean=metrics["macro"]["auroc"], f1_mean=metrics["macro"]["f1"],
                  accuracy_mean=metrics["macro"]["accuracy"])
    return scores


def _mean_scores(dices: list[torch.Tensor]) -> dict[str, float]:
    """{"dice_WT","dice_TC","dice_ET","dice_mean"}: the means over items of (n, 3) Dice blocks ({} for none)."""
    if not dices:
        return {}
    mean = torch.cat(dices).mean(0).tolist()
    scores = {f"dice_{name}": float(v) for name, v in zip(REGIONS, mean)}
    scores["dice_mean"] = float(np.mean(mean))
    return scores


def sliding_predict(pipeline: Predictable, source: torch.Tensor, stored_fused: torch.Tensor, patch: tuple[int, ...],
                   overlap: float = VOLUME_OVERLAP) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Whole volumes (N, 4, D, H, W) sources and (N, 1, D, H, W) stored fused image, window by window (Gaussian
    blending, ``patch`` voxels, ``overlap``) -> (learned fused (N, 1, D, H, W) or None, logits (N, K, D, H, W)).

    Runs under the caller's grad mode and the pipeline's train flag (wrap it in no_grad and eval for inference).
    """
    channels = source.shape[1]

    def predict(window: torch.Tensor) -> torch.Tensor:
        """(B, 5, *patch) sources and stored fused -> (B, [1 +] K, *patch) fused and logits, blended together."""
        fused, logits = pipeline.forward(window[:, :channels], window[:, channels:])
        return logits if fused is None else torch.cat([fused, logits], dim=1)

    out = sliding_window(predict, torch.cat([source, stored_fused], dim=1), tuple(patch), overlap)
    return (None, out) if pipeline.fusion is None else (out[:, :1], out[:, 1:])


def volume_validation_scores(pipeline: Predictable, volumes: Dataset, device: torch.device | str,
                             patch: tuple[int, ...], limit: int | None = None
                             ) -> tuple[dict[str, float], PredictedBatch | None]:
    """Per-case 3-D Dice of the first ``limit`` cases of ``volumes`` (a BraTSFuseVolumes), each predicted whole by
    :func:`sliding_predict` in eval mode without grad, averaged over cases (the keys of
    :func:`validation_scores`), and the first case's middle axial plane as a one-item batch (for panels)."""
    dices, first = [], None
    was_training = pipeline.seg.training
    pipeline.train(False)
    try:
        with torch.no_grad():
            for index in range(len(volumes) if limit is None else min(limit, len(volumes))):
                case = volumes[index]
                source, stored, label = case["source"][None], case["fused"][None], case["label"][None].long()
                fused, logits = sliding_predict(pipeline, source.to(device), stored.to(device), patch)
                pred = predict_labels(logits, pipeline.region_based).cpu()
                dices.append(dice_per_slice(pred, label))
                if first is None:
                    mid = source.shape[2] // 2
                    first = PredictedBatch(source[:, :, mid], stored[:, :, mid],
                                           None if fused is None else fused[:, :, mid].cpu(), pred[:, mid],
                                           label[:, mid], [str(case["case_id"])], [mid])
    finally:
        pipeline.train(was_training)
    return _mean_scores(dices), first
