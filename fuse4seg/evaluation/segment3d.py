"""Evaluation of a 3-D segmentation run (variant ``segment-3d``) on the split's stored whole volumes
(``build-benchmark --volumes``): each predicted by sliding windows of its training patch (overlap 0.5), scored in
3-D per case with the volume's voxel spacing (mm) and averaged over cases; fusion metrics are those of
:data:`FUSION_PLANES` axial planes per case; the gallery shows each shown case's middle axial plane.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fuse4seg.conventions import REGIONS
from fuse4seg.errors import ConfigError, DataError
from fuse4seg.evaluation.common import EvalRequest, mean_fusion
from fuse4seg.metrics.fusion_structure import VIF_MIN_SIZE
from fuse4seg.runkit.benchmark import benchmark_info
from fuse4seg.train.networks import Pipeline
from fuse4seg.train.predict import dice_per_slice

#: Axial planes per case (evenly spaced over the middle half of the volume) on which a 3-D run's fused volume is
#: scored by the 2-D fusion metrics.
FUSION_PLANES: int = 3
#: How the metrics of a 3-D run are computed (metrics.json "conventions", quoted by report.md).
METRIC_NOTES: dict[str, str] = {
    "per_case": "each stored (brain-cropped) volume predicted whole by sliding windows of the training patch "
                "(overlap 0.5, Gaussian blending) and scored in 3-D; means over cases",
    "hd95": "HD95 in mm from each volume's voxel spacing",
    "fusion": f"fusion_metrics of {FUSION_PLANES} axial planes per case (the middle half of the volume) on "
              "the 0-255 scale vs the fusion inputs; SSIM data_range 255; MI, VIF and SSIM summed over "
              "sources, Qabf and CC averaged, SCD the mean over source pairs",
    "empty_masks": "BraTS rule: both empty -> Dice 1, HD95 0; one empty -> Dice 0, HD95 = diagonal",
}


def _fusion_rows(fused: np.ndarray | None, stored: np.ndarray, sources: np.ndarray
                 ) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """(learned, stored) fusion metrics of :data:`FUSION_PLANES` axial planes of (D, H, W) fused volumes in [0, 1]
    against (C, D, H, W) sources in [0, 1] (none for planes under VIF_MIN_SIZE)."""
    from fuse4seg.metrics import fusion_metrics

    depth = sources.shape[1]
    if min(sources.shape[-2:]) < VIF_MIN_SIZE:
        return [], []
    planes = np.unique(np.linspace(depth * 0.25, depth * 0.75, FUSION_PLANES).astype(int).clip(0, depth - 1))
    learned, classical = [], []
    for d in planes.tolist():
        srcs = list(sources[:, d].astype(np.float64) * 255.0)
        if fused is not None:
            learned.append(fusion_metrics(fused[d] * 255.0, srcs))
        classical.append(fusion_metrics(stored[d] * 255.0, srcs))
    return learned, classical


def _gallery_row(pipeline: Pipeline, case: dict, sources: np.ndarray, fused: np.ndarray | None, truth: np.ndarray,
                 pred: np.ndarray) -> dict[str, Any]:
    """The gallery row of a case: its middle axial plane (learned fused image, else the stored one when read)."""
    mid = truth.shape[0] // 2
    shown = fused if fused is not None else (case["fused"][0].numpy() if pipeline.seg_inputs == ("fused",) else None)
    return {"case_id": str(case["case_id"]), "slice_index": mid, "sources": sources[:, mid],
            "fused": None if shown is None else shown[mid], "truth": truth[mid].astype(np.int64),
            "pred": pred[mid].astype(np.int64)}


def score_volumes(pipeline: Pipeline, volumes: Dataset, patch: tuple[int, ...], device: torch.device,
                  limit: int | None = None, gallery: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every metric of a 3-D ``pipeline`` on the first ``limit`` cases of ``volumes`` (a BraTSFuseVolumes), each
    predicted whole (sliding windows of ``patch`` voxels), and the gallery rows (middle axial plane) of the first
    ``gallery`` cases: per-case 3-D segmentation metrics (HD95 in mm from the volume's spacing), fusion metrics on
    a few axial planes, the all-background baseline."""
    from fuse4seg.losses import predict_labels
    from fuse4seg.metrics import average_segmentation_metrics, segmentation_metrics
    from fuse4seg.train.predict import sliding_predict

    per_case, learned, stored, bg_dices, rows = {}, [], [], [], []
    can_fuse_metrics = len(pipeline.fusion_inputs) >= 2
    with torch.no_grad():
        for index in range(len(volumes) if limit is None else min(limit, len(volumes))):
            case = volumes[index]
            fused, logits = sliding_predict(pipeline, case["source"][None].to(device),
                                            case["fused"][None].to(device), patch)
            pred = predict_labels(logits, pipeline.region_based)[0].cpu().numpy().astype(np.uint8)
            truth = case["label"].numpy().astype(np.uint8)
            sx, sy, sz = case["spacing"].tolist()  # (x, y, z) mm; the arrays are (D, H, W) = (z, x, y)
            per_case[str(case["case_id"])] = segmentation_metrics(pred, truth, spacing=(sz, sx, sy))
            sources = case["source"][pipeline.fusion_channels].numpy()
            fused_np = None if fused is None else fused[0, 0].float().cpu().numpy()
            if can_fuse_metrics:
                parts = _fusion_rows(fused_np, case["fused"][0].numpy(), sources)
                learned += parts[0]
                stored += parts[1]
            bg_dices.append(dice_per_slice(torch.zeros_like(case["label"])[None], case["label"][None]))
            if index < gallery:
                rows.append(_gallery_row(pipeline, case, sources, fused_np, truth, pred))
    if not per_case:
        raise DataError("the evaluated split has no volumes")
    notes = [] if can_fuse_metrics else ["fusion metrics need at least two fusion inputs; skipped"]
    if can_fuse_metrics and not stored:
        notes.append(f"fusion metrics need planes of at least {VIF_MIN_SIZE} px; skipped")
    return {
        "cases": len(per_case), "hd95_unit": "mm",
        "segmentation": {"per_case": average_segmentation_metrics(list(per_case.values()))},
        "per_case": per_case,
        "fusion": {"learned": mean_fusion(learned), "benchmark_stored": mean_fusion(stored)},
        "background_dice_per_case_mean": dict(zip(REGIONS, torch.cat(bg_dices).mean(0).tolist())),
        "notes": notes,
    }, rows


def evaluate_3d(request: EvalRequest) -> dict[str, Any]:
    """Evaluate a 3-D run on the whole stored volumes of the split (the first ``request.limit``), written by the
    2-D run's writers (metrics.json, report.md, gallery.png of middle axial planes); returns the metrics."""
    from fuse4seg.data.package.volumes import BraTSFuseVolumes
    from fuse4seg.evaluation.report import write_eval_outputs

    r, config = request, request.config
    info = benchmark_info(r.bench)
    if not info.volumes:
        raise ConfigError(f"{r.bench} holds no volumes, which a --dims 3 run is evaluated on; rebuild with "
                          "build-benchmark --volumes", option="benchmark")
    volumes = BraTSFuseVolumes(r.bench, r.split, cache=True)
    if len(volumes) == 0:
        raise DataError(f"{r.bench}: split {r.split!r} has no volumes")
    scores, rows = score_volumes(r.pipeline, volumes, config.patch, r.device, r.limit, r.gallery)
    head = r.head()
    metrics: dict[str, Any] = {
        **{k: head[k] for k in ("run", "checkpoint", "step", "mode")}, "dims": config.dims,
        **{k: head[k] for k in ("split", "benchmark", "fusion_inputs", "seg_inputs")}, "hypergrad": r.hypergrad(),
        "patch": list(config.patch), "benchmark_fusion_method": info.fusion_method, "conventions": dict(METRIC_NOTES),
    }
    metrics.update(scores)
    if r.compare_untrained:
        base, _ = score_volumes(r.untrained(), volumes, config.patch, r.device, r.limit)
        metrics["untrained"] = {"segmentation": base["segmentation"], "fusion": base["fusion"]["learned"]}
    with r.output_dir() as tmp:
        write_eval_outputs(tmp, metrics, rows, config)
    return metrics
