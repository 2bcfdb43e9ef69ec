"""Independent references for the BraTS scoring conventions (tests and benchmarks/scoring.py).

- :func:`brats2023_reference`: the 2023-24 challenge's lesion-wise algorithm written out plainly, as its
  script does it (one full-size dilation per lesion, ``np.isin`` per lesion), with DeepMind's
  ``surface_distance`` package for every HD95. Not fuse4seg code: nothing of fuse4seg.metrics is used.
- :func:`panoptica_scores`: panoptica's evaluator built with the settings of brats-evaluation's BraTS 2025
  configs (semantic input, cc3d components, MaxBipartiteMatching on DSC >= 1e-6, the configs' zero-TP
  edge cases), reported as fuse4seg's keys with inf -> 373 as brats-evaluation's parser writes it.
- :func:`random_case`: canonical (pred, truth) label volumes with many lesions, splits, merges and
  false positives.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


def random_case(seed: int, shape: tuple[int, int, int] = (40, 40, 40)) -> tuple[np.ndarray, np.ndarray]:
    """(pred, truth) canonical uint8 label volumes: smooth random blobs, ED around NCR and ET; the prediction
    is the truth's field plus independent noise (shifted, split, merged, missed and extra lesions)."""
    rng = np.random.default_rng(seed)

    def field() -> np.ndarray:
        return ndimage.gaussian_filter(rng.random(shape), 2.0)

    base, inner, enh = field(), field(), field()

    def labels(b: np.ndarray, i: np.ndarray, e: np.ndarray) -> np.ndarray:
        out = np.zeros(shape, np.uint8)
        wt = b > np.quantile(b, 0.93)
        out[wt] = 2
        out[wt & (i > np.quantile(i, 0.5))] = 1
        out[wt & (e > np.quantile(e, 0.55))] = 3
        return out

    truth = labels(base, inner, enh)
    noise = 0.35
    pred = labels(base + noise * (field() - 0.5), inner + noise * (field() - 0.5), enh + noise * (field() - 0.5))
    return pred, truth


def _deepmind_hd95(truth: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...]) -> float:
    """DeepMind robust HD95 of two non-empty boolean masks (the package itself)."""
    import surface_distance

    return float(surface_distance.compute_robust_hausdorff(
        surface_distance.compute_surface_distances(truth, pred, spacing), 95))


def brats2023_reference(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float], dilation: int,
                        threshold: float) -> dict[str, float]:
    """2023-24 metrics of one region's boolean masks, computed lesion by lesion on the full arrays."""
    penalty = 374.0
    struct = ndimage.generate_binary_structure(3, 2)
    full = np.ones((3, 3, 3), bool)
    both_empty = not pred.any() and not truth.any()
    dice = 1.0 if both_empty else 2.0 * np.sum(pred & truth) / (pred.sum() + truth.sum())
    if both_empty:
        hd95 = 0.0
    elif not pred.any() or not truth.any():
        hd95 = penalty
    else:
        hd95 = _deepmind_hd95(truth, pred, spacing)
    dilated_cc, n_gt = ndimage.label(ndimage.binary_dilation(truth, struct, iterations=dilation), full)
    combined = np.where(truth, dilated_cc, 0)
    pred_cc, n_pred = ndimage.label(pred, full)
    rows, touched = [], set()
    for k in range(1, n_gt + 1):
        lesion = combined == k
        reach = ndimage.binary_dilation(lesion, struct, iterations=dilation)
        hits = [int(v) for v in np.unique(pred_cc[reach]) if v != 0]
        touched.update(hits)
        grouped = np.isin(pred_cc, hits)
        lesion_dice = 2.0 * np.sum(grouped & lesion) / (grouped.sum() + lesion.sum())
        lesion_hd = _deepmind_hd95(lesion, grouped, spacing) if hits else penalty
        rows.append((lesion.sum() * np.prod(spacing), bool(hits), lesion_dice, lesion_hd))
    kept = [r for r in rows if r[0] > threshold]
    n_fp = n_pred - len(touched)
    n = len(kept) + n_fp
    return {"dice": dice, "hd95": hd95,
            "lesion_dice": 1.0 if n == 0 else sum(r[2] for r in kept) / n,
            "lesion_hd95": 0.0 if n == 0 else (sum(r[3] for r in kept) + penalty * n_fp) / n,
            "tp": sum(r[1] for r in kept), "fp": n_fp, "fn": sum(not r[1] for r in kept)}


def panoptica_evaluator() -> Any:  # panoptica is optional: no annotation that imports it
    """A panoptica Panoptica_Evaluator with brats-evaluation's BraTS 2025 settings, for WT, TC and ET."""
    from panoptica import (
        ConnectedComponentsInstanceApproximator,
        InputType,
        MaxBipartiteMatching,
        Metric,
        Panoptica_Evaluator,
    )
    from panoptica.utils.citation_reminder import disable_citation_reminder
    from panoptica.utils.edge_case_handling import (
        EdgeCaseHandler,
        EdgeCaseResult,
        MetricZeroTPEdgeCaseHandling,
    )
    from panoptica.utils.label_group import LabelGroup, LabelMergeGroup
    from panoptica.utils.segmentation_class import SegmentationClassGroups

    disable_citation_reminder()
    zero, inf, nan = EdgeCaseResult.ZERO, EdgeCaseResult.INF, EdgeCaseResult.NAN
    handling = {
        Metric.DSC: MetricZeroTPEdgeCaseHandling(empty_prediction_result=zero, empty_reference_result=zero,
                                                 no_instances_result=nan, normal=zero),
        Metric.HD95: MetricZeroTPEdgeCaseHandling(empty_prediction_result=inf, empty_reference_result=inf,
                                                  no_instances_result=nan, normal=inf),
    }
    groups = SegmentationClassGroups({"WT": LabelMergeGroup([1, 2, 3]), "TC": LabelMergeGroup([1, 3]),
                                      "ET": LabelGroup([3])})
    return Panoptica_Evaluator(
        expected_input=InputType.SEMANTIC,
        instance_approximator=ConnectedComponentsInstanceApproximator(),
        instance_matcher=MaxBipartiteMatching(matching_metric=Metric.DSC, matching_threshold=1e-6),
        edge_case_handler=EdgeCaseHandler(listmetric_zeroTP_handling=handling, empty_list_std=nan),
        segmentation_class_groups=groups, instance_metrics=[Metric.DSC, Metric.HD95],
        global_metrics=[Metric.DSC, Metric.HD95], verbose=False)


def panoptica_scores(evaluator: Any, pred: np.ndarray, truth: np.ndarray,
                     spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> dict[str, dict[str, float]]:
    """panoptica's results per region as fuse4seg's brats2025 keys (inf HD95 -> 373, as brats-evaluation)."""
    results = evaluator.evaluate(pred, truth, voxelspacing=spacing, verbose=False)

    def finite(value: float | None) -> float:
        value = np.nan if value is None else float(value)
        return 373.0 if np.isinf(value) else value

    return {region: {"dice": finite(r.global_bin_dsc), "hd95": finite(r.global_bin_hd95),
                     "lesion_dice": finite(r.sq_dsc), "lesion_hd95": finite(r.sq_hd95),
                     "tp": int(r.tp), "fp": int(r.fp), "fn": int(r.fn), "f1": finite(r.rq)}
            for region, r in ((name.upper(), res) for name, res in results.items())}
