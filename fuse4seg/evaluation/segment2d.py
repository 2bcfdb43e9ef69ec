"""Evaluation of a 2-D segmentation run (variant ``segment-2d``): its slices scored one by one and stacked per case.

Segmentation metrics are reported per slice (2-D, averaged over slices) and per case: a case's
slices are stacked in slice-index order into one (H, W, K) volume and scored in 3-D. HD95 is in mm,
from each slice's ``spacing`` (dy, dx, dz) in the benchmark: per slice with the pixel size (dy, dx),
per case with (dy, dx, median slice-index gap x dz), since the stacked slices are not contiguous in
the original volume (the benchmark keeps K spread-out slices); metrics.json and report.md say so.
Fusion metrics (fuse4seg.metrics.fusion_metrics, 0-255 scale, SSIM data_range 255) compare the
fused image with the fusion inputs; the benchmark's stored classical fusion is scored the same way
for reference.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fuse4seg.conventions import REGIONS
from fuse4seg.errors import DataError
from fuse4seg.evaluation.common import EvalRequest, mean_fusion, open_evaluated_split
from fuse4seg.io import csv_cell
from fuse4seg.metrics.fusion_structure import VIF_MIN_SIZE
from fuse4seg.train.networks import Pipeline
from fuse4seg.train.predict import PredictedBatch, dice_per_slice, predict_batches

#: How the metrics of a 2-D segmentation run are computed (metrics.json "conventions", quoted by report.md).
METRIC_NOTES: dict[str, str] = {
    "per_slice": "2-D metrics per slice, averaged over slices",
    "per_case": "a case's slices stacked in slice order into a 3-D volume; spacing of the stacking axis "
                "= median slice-index gap x slice thickness",
    "hd95": "HD95 in mm: per slice with the pixel size (dy, dx), per case with (dy, dx, gap x dz), from the "
            "benchmark's spacing",
    "fusion": "fusion_metrics on the 0-255 scale vs the fusion inputs; SSIM data_range 255; MI, VIF and "
              "SSIM summed over sources, Qabf and CC averaged, SCD the mean over source pairs",
    "empty_masks": "BraTS rule: both empty -> Dice 1, HD95 0; one empty -> Dice 0, HD95 = diagonal",
    "semantic": "report facts of the predicted and the true labels compared field by field (labels present, "
                "region areas within the tolerance, hemisphere, anterior/posterior, relation); score = share "
                "of agreeing fields per slice, averaged over slices (fuse4seg.metrics.reports)",
}


def _stack_gap(slice_index: list[int]) -> float:
    """Median gap between consecutive stacked slice indices (1 for a single slice)."""
    gaps = np.diff(np.sort(np.asarray(slice_index)))
    return float(np.median(gaps)) if len(gaps) else 1.0


def _report_row(b: PredictedBatch, i: int, pred: np.ndarray, truth: np.ndarray, pixel: tuple[float, float],
                score: float) -> dict[str, Any]:
    """reports.csv's row of slice ``i`` of ``b``: both reports worded by the slice's seed-0 RNG."""
    from fuse4seg.data.package.describe import describe_slice, slice_rng

    key = (b.case_id[i], b.slice_index[i])
    sources = b.source[i].numpy()
    predicted = describe_slice(pred, sources, pixel, None, slice_rng(0, *key))
    reference = b.text[i] if b.text is not None else describe_slice(truth, sources, pixel, None, slice_rng(0, *key))
    return {"case_id": key[0], "slice_index": key[1], "score": score, "predicted_report": predicted,
            "reference_report": reference}


def _per_case(cases: dict[str, dict[str, list]], spacing: np.ndarray) -> dict[str, dict]:
    """Metrics of each case's slices stacked in slice-index order (one crop box per case, so its slices share
    (dy, dx); dz is the original voxel size along z, times the median slice gap)."""
    from fuse4seg.metrics import segmentation_metrics

    per_case = {}
    for case_id in sorted(cases):
        c = cases[case_id]
        order = np.argsort(c["z"])
        pred = np.stack([c["pred"][j] for j in order], axis=-1)
        truth = np.stack([c["truth"][j] for j in order], axis=-1)
        dy, dx, dz = np.median(spacing[c["row"]], axis=0)
        per_case[case_id] = segmentation_metrics(pred, truth, spacing=(dy, dx, _stack_gap(c["z"]) * dz))
    return per_case


def score_split(pipeline: Pipeline, dataset: Dataset, spacing: np.ndarray, device: torch.device,
                limit: int | None = None, batch_size: int = 16, reports: list[dict[str, Any]] | None = None
                ) -> dict[str, Any]:
    """Every metric of ``pipeline`` on ``dataset``: per-slice/per-case segmentation, fusion, baselines, and the
    report-based semantic preservation score (fuse4seg.metrics.reports).

    ``spacing``: (N, 3) mm (dy, dx, dz) of the dataset's slices in order (HD95 in mm). ``reports``: receives one
    row per slice (case_id, slice_index, score, the report generated from the prediction, the reference text).
    """
    from fuse4seg.metrics import average_segmentation_metrics, fusion_metrics, segmentation_metrics
    from fuse4seg.metrics.reports import compare_reports, report_facts, report_score, summarise_reports

    per_slice, learned, stored, bg_dices, agreement = [], [], [], [], []
    cases: dict[str, dict[str, list]] = defaultdict(lambda: {"pred": [], "truth": [], "z": [], "row": []})
    can_fuse_metrics = len(pipeline.fusion_inputs) >= 2
    row = 0
    for b in predict_batches(pipeline, dataset, device, batch_size, limit):
        small = min(b.source.shape[-2:]) < VIF_MIN_SIZE  # the smallest image fusion_metrics accepts
        srcs = (b.source[:, pipeline.fusion_channels].numpy() * 255.0).astype(np.float64)
        for i in range(len(b.pred)):
            pred, truth = b.pred[i].numpy().astype(np.uint8), b.label[i].numpy().astype(np.uint8)
            pixel = (float(spacing[row, 0]), float(spacing[row, 1]))
            per_slice.append(segmentation_metrics(pred, truth, spacing=pixel))
            all_sources = b.source[i].numpy()
            fields = compare_reports(report_facts(pred, all_sources, pixel), report_facts(truth, all_sources, pixel))
            agreement.append(fields)
            if reports is not None:
                reports.append(_report_row(b, i, pred, truth, pixel, report_score(fields)))
            c = cases[b.case_id[i]]
            for key, value in (("pred", pred), ("truth", truth), ("z", b.slice_index[i]), ("row", row)):
                c[key].append(value)
            row += 1
            if can_fuse_metrics and not small:
                if b.fused is not None:
                    learned.append(fusion_metrics(b.fused[i, 0].numpy() * 255.0, list(srcs[i])))
                stored.append(fusion_metrics(b.stored_fused[i, 0].numpy() * 255.0, list(srcs[i])))
        bg_dices.append(dice_per_slice(torch.zeros_like(b.label), b.label))
    if not per_slice:
        raise DataError("the evaluated split has no slices")
    per_case = _per_case(cases, spacing)
    notes = []
    if not can_fuse_metrics:
        notes.append("fusion metrics need at least two fusion inputs; skipped")
    elif not learned and not stored:
        notes.append(f"fusion metrics need slices of at least {VIF_MIN_SIZE} px; skipped")
    return {
        "slices": len(per_slice), "cases": len(per_case), "hd95_unit": "mm",
        "segmentation": {"per_slice": average_segmentation_metrics(per_slice),
                         "per_case": average_segmentation_metrics(list(per_case.values()))},
        "per_case": per_case,
        "fusion": {"learned": mean_fusion(learned), "benchmark_stored": mean_fusion(stored)},
        "semantic": summarise_reports(agreement),
        "background_dice_per_slice_mean": dict(zip(REGIONS, torch.cat(bg_dices).mean(0).tolist())),
        "notes": notes,
    }


def gallery_rows(pipeline: Pipeline, dataset: Dataset, device: torch.device, count: int) -> list[dict[str, Any]]:
    """Sources, fused, truth and prediction of ``count`` slices spread evenly over the split."""
    from fuse4seg.losses import predict_labels

    n = len(dataset)
    picks = np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int))
    items = [dataset[int(i)] for i in picks]
    source = torch.stack([it["source"] for it in items]).to(device)
    stored = torch.stack([it["fused"] for it in items]).to(device)
    with torch.no_grad():
        fused, logits = pipeline.forward(source, stored, [it["text"] for it in items] if "text" in items[0] else None)
    pred = predict_labels(logits, pipeline.region_based).cpu()
    shown = fused if fused is not None else (stored if pipeline.seg_inputs == ("fused",) else None)
    return [
        {"case_id": str(it["case_id"]), "slice_index": int(it["slice_index"]),
         "sources": source[j, pipeline.fusion_channels].cpu().numpy(),
         "fused": None if shown is None else shown[j, 0].cpu().numpy(),
         "truth": it["label"].numpy(), "pred": pred[j].numpy()}
        for j, it in enumerate(items)
    ]


def write_reports_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """UTF-8 CSV of :func:`score_split`'s report rows: case_id, slice_index, score, predicted_report, reference_report."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["case_id", "slice_index", "score", "predicted_report",
                                                    "reference_report"])
        writer.writeheader()
        # text cells a spreadsheet would execute (a report or case id beginning with =, +, -, @) get a leading '
        writer.writerows({**{k: csv_cell(v) for k, v in r.items()}, "score": f"{r['score']:.4f}"} for r in rows)


def evaluate_slices(request: EvalRequest) -> dict[str, Any]:
    """Evaluate a 2-D segmentation run on the slices of a benchmark split; writes RUN/eval/{metrics.json,report.md,
    gallery.png,reports.csv}; returns the metrics."""
    from fuse4seg.evaluation.report import write_eval_outputs

    r, pipeline, dev = request, request.pipeline, request.device
    dataset = open_evaluated_split(r.run, r.config, r.bench, r.split)
    metrics: dict[str, Any] = {
        **r.head(), "hypergrad": r.hypergrad(), "conventions": dict(METRIC_NOTES),
        "text": ("the slices' texts" if pipeline.text_encoder is not None else "none (the 'no text' token)")
        if pipeline.reads_text else None,
    }
    metrics["hd95_unit"] = "mm"
    metrics["benchmark_fusion_method"] = str(getattr(dataset, "attrs", {}).get("fusion_method", ""))
    reports: list[dict[str, Any]] = []
    metrics.update(score_split(pipeline, dataset, dataset.spacing, dev, r.limit, reports=reports))
    if r.compare_untrained:
        base = score_split(r.untrained(), dataset, dataset.spacing, dev, r.limit)
        metrics["untrained"] = {"segmentation": base["segmentation"], "fusion": base["fusion"]["learned"],
                                "semantic": base["semantic"]}
    rows = gallery_rows(pipeline, dataset, dev, r.gallery)
    with r.output_dir() as tmp:
        write_eval_outputs(tmp, metrics, rows, r.config)
        write_reports_csv(tmp / "reports.csv", reports)
    return metrics
