"""``fuse4seg evaluate``: fusion metrics of the learned fused images and BraTS Dice/HD95 of a run.

Segmentation metrics are reported per slice (2-D, averaged over slices) and per case: a case's
slices are stacked in slice-index order into one (H, W, K) volume and scored in 3-D. HD95 is in mm,
from each slice's ``spacing`` (dy, dx, dz) in the benchmark: per slice with the pixel size (dy, dx),
per case with (dy, dx, median slice-index gap x dz), since the stacked slices are not contiguous in
the original volume (the benchmark keeps K spread-out slices); metrics.json and report.md say so.
Fusion metrics (fuse4seg.metrics.fusion_metrics, 0-255 scale, SSIM data_range 255) compare the
fused image with the fusion inputs; the benchmark's stored classical fusion is scored the same way
for reference.

A 3-D run (``--dims 3``) is scored on the split's stored whole volumes (``build-benchmark --volumes``): each
predicted by sliding windows of its training patch (overlap 0.5), scored in 3-D per case with the volume's
voxel spacing (mm) and averaged over cases; fusion metrics are those of :data:`FUSION_PLANES` axial planes
per case; the gallery shows each shown case's middle axial plane.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fuse4seg.conventions import REGIONS
from fuse4seg.data.package.schema import H5_NAME
from fuse4seg.errors import ConfigError, DataError
from fuse4seg.io import atomic_dir
from fuse4seg.metrics.fusion_structure import VIF_MIN_SIZE
from fuse4seg.runkit.benchmark import benchmark_info, open_split, read_benchmark_facts
from fuse4seg.train.config import TrainConfig
from fuse4seg.train.modes import MODES
from fuse4seg.train.networks import Pipeline, build_pipeline
from fuse4seg.train.predict import dice_per_slice, predict_batches
from fuse4seg.train.run import load_run, run_derived


def check_benchmark_matches(run: str | Path, config: TrainConfig, bench: Path) -> None:
    """ConfigError (one line) unless the benchmark ``bench`` given to evaluate RUN has the training slices'
    size (and slice_size rule, when both record it) and stores a fusion of the same inputs as the run's
    training benchmark (else the stored-fusion baseline, and a direct-mode segmenter's input, differ)."""
    derived = run_derived(run)
    other = read_benchmark_facts(bench / H5_NAME)
    trained = (int(derived["slice_height"]), int(derived["slice_width"]))
    if (other["height"], other["width"]) != trained:
        raise ConfigError(f"{bench} has {other['height']} x {other['width']} slices but the run was "
                          f"trained on {trained[0]} x {trained[1]} slices", option="benchmark")
    own = derived.get("benchmark_slice_size")
    if own is not None and own != other["slice_size"]:
        raise ConfigError(f"{bench} was built with slice_size {other['slice_size']} but the run's "
                          f"benchmark with {own} (a different crop/resize rule)", option="benchmark")
    try:
        reference = tuple(read_benchmark_facts(Path(config.benchmark) / H5_NAME)["fusion_inputs"])
    except DataError:  # the training benchmark moved away: the run's own fusion inputs are the reference
        reference = tuple(config.fusion_inputs)
    if tuple(other["fusion_inputs"]) != reference:
        raise ConfigError(f"{bench} stores a fusion of {','.join(other['fusion_inputs'])} but the run's "
                          f"benchmark fused {','.join(reference)}; its stored fusion is not comparable", option="benchmark")


def _mean_fusion(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-metric mean over slices (plus "count")."""
    if not rows:
        return {}
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out["count"] = len(rows)
    return out


def _stack_gap(slice_index: list[int]) -> float:
    """Median gap between consecutive stacked slice indices (1 for a single slice)."""
    gaps = np.diff(np.sort(np.asarray(slice_index)))
    return float(np.median(gaps)) if len(gaps) else 1.0


def score_split(pipeline: Pipeline, dataset: Dataset, spacing: np.ndarray, device: torch.device,
                limit: int | None = None, batch_size: int = 16, reports: list[dict[str, Any]] | None = None
                ) -> dict[str, Any]:
    """Every metric of ``pipeline`` on ``dataset``: per-slice/per-case segmentation, fusion, baselines, and the
    report-based semantic preservation score (fuse4seg.metrics.reports).

    ``spacing``: (N, 3) mm (dy, dx, dz) of the dataset's slices in order (HD95 in mm). ``reports``: receives one
    row per slice (case_id, slice_index, score, the report generated from the prediction, the reference text).
    """
    from fuse4seg.data.package.describe import describe_slice, slice_rng
    from fuse4seg.metrics import average_segmentation_metrics, fusion_metrics, segmentation_metrics
    from fuse4seg.metrics.reports import compare_reports, report_facts, report_score, summarise_reports

    inputs = pipeline.fusion_inputs
    per_slice, learned, stored, bg_dices, agreement = [], [], [], [], []
    cases: dict[str, dict[str, list]] = defaultdict(lambda: {"pred": [], "truth": [], "z": [], "row": []})
    can_fuse_metrics = len(inputs) >= 2
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
            if reports is not None:  # both reports worded by the slice's seed-0 RNG
                key = (b.case_id[i], b.slice_index[i])
                predicted = describe_slice(pred, all_sources, pixel, None, slice_rng(0, *key))
                reference = b.text[i] if b.text is not None else describe_slice(truth, all_sources, pixel, None,
                                                                                slice_rng(0, *key))
                reports.append({"case_id": key[0], "slice_index": key[1], "score": report_score(fields),
                                "predicted_report": predicted, "reference_report": reference})
            c = cases[b.case_id[i]]
            c["pred"].append(pred)
            c["truth"].append(truth)
            c["z"].append(b.slice_index[i])
            c["row"].append(row)
            row += 1
            if can_fuse_metrics and not small:
                if b.fused is not None:
                    learned.append(fusion_metrics(b.fused[i, 0].numpy() * 255.0, list(srcs[i])))
                stored.append(fusion_metrics(b.stored_fused[i, 0].numpy() * 255.0, list(srcs[i])))
        bg_dices.append(dice_per_slice(torch.zeros_like(b.label), b.label))
    if not per_slice:
        raise DataError("the evaluated split has no slices")
    per_case, case_rows = {}, []
    for case_id in sorted(cases):
        c = cases[case_id]
        order = np.argsort(c["z"])
        pred = np.stack([c["pred"][j] for j in order], axis=-1)
        truth = np.stack([c["truth"][j] for j in order], axis=-1)
        # One crop box per case, so its slices share (dy, dx); dz is the original voxel size along z.
        dy, dx, dz = np.median(spacing[c["row"]], axis=0)
        m = segmentation_metrics(pred, truth, spacing=(dy, dx, _stack_gap(c["z"]) * dz))
        per_case[case_id] = m
        case_rows.append(m)
    notes = []
    if not can_fuse_metrics:
        notes.append("fusion metrics need at least two fusion inputs; skipped")
    elif not learned and not stored:
        notes.append(f"fusion metrics need slices of at least {VIF_MIN_SIZE} px; skipped")
    return {
        "slices": len(per_slice), "cases": len(per_case), "hd95_unit": "mm",
        "segmentation": {"per_slice": average_segmentation_metrics(per_slice),
                         "per_case": average_segmentation_metrics(case_rows)},
        "per_case": per_case,
        "fusion": {"learned": _mean_fusion(learned), "benchmark_stored": _mean_fusion(stored)},
        "semantic": summarise_reports(agreement),
        "background_dice_per_slice_mean": dict(zip(REGIONS, torch.cat(bg_dices).mean(0).tolist())),
        "notes": notes,
    }


#: Axial planes per case (evenly spaced over the middle half of the volume) on which a 3-D run's fused volume is
#: scored by the 2-D fusion metrics.
FUSION_PLANES: int = 3


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
                mid = truth.shape[0] // 2
                shown = fused_np if fused_np is not None else (
                    case["fused"][0].numpy() if pipeline.seg_inputs == ("fused",) else None)
                rows.append({"case_id": str(case["case_id"]), "slice_index": mid, "sources": sources[:, mid],
                             "fused": None if shown is None else shown[mid], "truth": truth[mid].astype(np.int64),
                             "pred": pred[mid].astype(np.int64)})
    if not per_case:
        raise DataError("the evaluated split has no volumes")
    notes = [] if can_fuse_metrics else ["fusion metrics need at least two fusion inputs; skipped"]
    if can_fuse_metrics and not stored:
        notes.append(f"fusion metrics need planes of at least {VIF_MIN_SIZE} px; skipped")
    return {
        "cases": len(per_case), "hd95_unit": "mm",
        "segmentation": {"per_case": average_segmentation_metrics(list(per_case.values()))},
        "per_case": per_case,
        "fusion": {"learned": _mean_fusion(learned), "benchmark_stored": _mean_fusion(stored)},
        "background_dice_per_case_mean": dict(zip(REGIONS, torch.cat(bg_dices).mean(0).tolist())),
        "notes": notes,
    }, rows


def _gallery_rows(pipeline: Pipeline, dataset: Dataset, device: torch.device, count: int) -> list[dict[str, Any]]:
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


def is_eval_output(directory: Path) -> bool:
    """Whether ``directory`` (inside a run) is an evaluation written before output markers (has metrics.json)."""
    return (directory / "metrics.json").is_file()


def open_evaluated_split(run: str | Path, config: TrainConfig, bench: Path, split: str) -> Dataset:
    """The slices of ``split`` of ``bench`` (cached), checked against the run's benchmark when it is another one;
    DataError for an empty split."""
    dataset = open_split(bench, split, cache=True)
    if len(dataset) == 0:
        raise DataError(f"{bench}: split {split!r} has no slices")
    if bench.resolve() != Path(config.benchmark).resolve():
        check_benchmark_matches(run, config, bench)
    return dataset


def untrained_like(config: TrainConfig, pipeline: Pipeline, device: torch.device) -> Pipeline:
    """The networks of ``config`` at their initial weights, in eval mode, reading text through ``pipeline``'s own
    (fitted, frozen) text encoder."""
    untrained = build_pipeline(config)
    untrained.text_encoder, untrained.alignment = pipeline.text_encoder, pipeline.alignment
    return untrained.to(device).train(False)


def evaluate_run(run: str | Path, benchmark: str | Path | None = None, split: str = "test", checkpoint: str = "best",
                 device: str = "cpu", max_slices: int | None = None, compare_untrained: bool = False,
                 gallery: int = 6, texts: bool = True) -> dict[str, Any]:
    """Evaluate RUN on a benchmark split; writes RUN/eval/{metrics.json,report.md,gallery.png,reports.csv}; returns
    metrics. ``texts`` False: a text-guided fusion net fuses without the slices' texts (its "no text" token)."""
    from fuse4seg.evaluation.report import write_eval_outputs

    config, pipeline, state = load_run(run, checkpoint, device)
    if not texts:
        pipeline = dataclasses.replace(pipeline, text_encoder=None)
    if pipeline.classifies:
        return evaluate_classifier(run, config, pipeline, state, benchmark, split, checkpoint, max_slices,
                                   compare_untrained)
    dev = next(pipeline.seg.parameters()).device
    bench = Path(benchmark) if benchmark is not None else Path(config.benchmark)
    if config.dims == 3:
        return _evaluate_volumes(run, config, pipeline, state, bench, split, checkpoint, max_slices,
                                 compare_untrained, gallery)
    dataset = open_evaluated_split(run, config, bench, split)
    metrics: dict[str, Any] = {
        "run": str(run), "checkpoint": checkpoint, "step": int(state["step"]), "mode": config.mode,
        "split": split, "benchmark": str(bench), "fusion_inputs": list(config.fusion_inputs),
        "seg_inputs": list(config.seg_inputs()), "hypergrad": config.method if MODES[config.mode].hypergradient else None,
        "conventions": {
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
        },
        "text": ("the slices' texts" if pipeline.text_encoder is not None else "none (the 'no text' token)")
        if pipeline.reads_text else None,
    }
    metrics["hd95_unit"] = "mm"
    metrics["benchmark_fusion_method"] = str(getattr(dataset, "attrs", {}).get("fusion_method", ""))
    reports: list[dict[str, Any]] = []
    metrics.update(score_split(pipeline, dataset, dataset.spacing, dev, max_slices, reports=reports))
    if compare_untrained:
        base = score_split(untrained_like(config, pipeline, dev), dataset, dataset.spacing, dev, max_slices)
        metrics["untrained"] = {"segmentation": base["segmentation"], "fusion": base["fusion"]["learned"],
                                "semantic": base["semantic"]}
    rows = _gallery_rows(pipeline, dataset, dev, gallery)
    with atomic_dir(Path(run) / "eval", "eval", overwrite=True, legacy=is_eval_output, option=None) as tmp:
        write_eval_outputs(tmp, metrics, rows, config)
        write_reports_csv(tmp / "reports.csv", reports)
    return metrics


def write_reports_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """UTF-8 CSV of :func:`score_split`'s report rows: case_id, slice_index, score, predicted_report, reference_report."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["case_id", "slice_index", "score", "predicted_report",
                                                    "reference_report"])
        writer.writeheader()
        writer.writerows({**r, "score": f"{r['score']:.4f}"} for r in rows)


def _evaluate_volumes(run: str | Path, config: TrainConfig, pipeline: Pipeline, state: dict, bench: Path, split: str,
                      checkpoint: str, max_cases: int | None, compare_untrained: bool, gallery: int) -> dict[str, Any]:
    """:func:`evaluate_run` of a 3-D run: whole stored volumes of ``split`` (the first ``max_cases``), written by the
    same writers (metrics.json, report.md, gallery.png of middle axial planes)."""
    from fuse4seg.data.package.volumes import BraTSFuseVolumes
    from fuse4seg.evaluation.report import write_eval_outputs

    info = benchmark_info(bench)
    if not info.volumes:
        raise ConfigError(f"{bench} holds no volumes, which a --dims 3 run is evaluated on; rebuild with "
                          "build-benchmark --volumes", option="benchmark")
    volumes = BraTSFuseVolumes(bench, split, cache=True)
    if len(volumes) == 0:
        raise DataError(f"{bench}: split {split!r} has no volumes")
    dev = next(pipeline.seg.parameters()).device
    scores, rows = score_volumes(pipeline, volumes, config.patch, dev, max_cases, gallery)
    metrics: dict[str, Any] = {
        "run": str(run), "checkpoint": checkpoint, "step": int(state["step"]), "mode": config.mode, "dims": 3,
        "split": split, "benchmark": str(bench), "fusion_inputs": list(config.fusion_inputs),
        "seg_inputs": list(config.seg_inputs()), "hypergrad": config.method if MODES[config.mode].hypergradient else None,
        "patch": list(config.patch), "benchmark_fusion_method": info.fusion_method,
        "conventions": {
            "per_case": "each stored (brain-cropped) volume predicted whole by sliding windows of the training patch "
                        "(overlap 0.5, Gaussian blending) and scored in 3-D; means over cases",
            "hd95": "HD95 in mm from each volume's voxel spacing",
            "fusion": f"fusion_metrics of {FUSION_PLANES} axial planes per case (the middle half of the volume) on "
                      "the 0-255 scale vs the fusion inputs; SSIM data_range 255; MI, VIF and SSIM summed over "
                      "sources, Qabf and CC averaged, SCD the mean over source pairs",
            "empty_masks": "BraTS rule: both empty -> Dice 1, HD95 0; one empty -> Dice 0, HD95 = diagonal",
        },
    }
    metrics.update(scores)
    if compare_untrained:
        base, _ = score_volumes(untrained_like(config, pipeline, dev), volumes, config.patch, dev, max_cases)
        metrics["untrained"] = {"segmentation": base["segmentation"], "fusion": base["fusion"]["learned"]}
    with atomic_dir(Path(run) / "eval", "eval", overwrite=True, legacy=is_eval_output, option=None) as tmp:
        write_eval_outputs(tmp, metrics, rows, config)
    return metrics


def evaluate_classifier(run: str | Path, config: TrainConfig, pipeline: Pipeline, state: dict,
                        benchmark: str | Path | None, split: str, checkpoint: str, max_slices: int | None,
                        compare_untrained: bool) -> dict[str, Any]:
    """:func:`evaluate_run` of a ``--task classify`` run: per-region AUROC, accuracy, F1, precision, recall and
    support of slice-level WT/TC/ET presence on ``split`` (fuse4seg.metrics.classification), written to
    RUN/eval/{metrics.json,report.md}."""
    from fuse4seg.evaluation.report import classification_report
    from fuse4seg.metrics.classification import classification_metrics
    from fuse4seg.train.predict import presence_predictions

    bench = Path(benchmark) if benchmark is not None else Path(config.benchmark)
    dataset = open_evaluated_split(run, config, bench, split)
    dev = next(pipeline.seg.parameters()).device
    probs, targets = presence_predictions(pipeline, dataset, dev, limit=max_slices)
    metrics: dict[str, Any] = {
        "run": str(run), "checkpoint": checkpoint, "step": int(state["step"]), "mode": config.mode, "task": "classify",
        "split": split, "benchmark": str(bench), "slices": len(probs), "fusion_inputs": list(config.fusion_inputs),
        "seg_inputs": list(config.seg_inputs()), "classification": classification_metrics(probs, targets),
        "conventions": {"classification": "slice-level presence of WT, TC, ET; a slice is predicted positive when its "
                                          "sigmoid is >= 0.5; AUROC by ranks (nan for a region present in every slice "
                                          "or in none; the macro mean skips it); an empty denominator counts as 1"},
    }
    if compare_untrained:
        base = presence_predictions(untrained_like(config, pipeline, dev), dataset, dev, limit=max_slices)
        metrics["untrained"] = {"classification": classification_metrics(*base)}
    with atomic_dir(Path(run) / "eval", "eval", overwrite=True, legacy=is_eval_output, option=None) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(classification_report(metrics, markdown=True), encoding="utf-8")
    return metrics
