"""BraTS segmentation metrics per region (WT, TC, ET): Dice, HD95, sensitivity, specificity, 2-D or 3-D.

Empty-mask rules (BraTS convention, DESIGN.md section 2): both masks empty -> Dice 1, HD95 0; exactly
one empty -> Dice 0, HD95 = the image diagonal sqrt(sum((shape * spacing)^2)) (373.13 mm for a
240 x 240 x 155 volume at 1 mm). HD95 follows MONAI's ``compute_hausdorff_distance(percentile=95)``
(and BraTS/DeepMind's robust Hausdorff): the larger of the two directed 95th percentiles of the
distances between the surface voxels of the two masks -- not MedPy's ``hd95``, which takes one
percentile of the pooled distances. Sensitivity and specificity with an empty denominator (no true
positives to find / no true negatives to keep) are 1.0: nothing was missed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from fuse4seg.conventions import LABELS, REGIONS
from fuse4seg.errors import ConfigError, DataError

SEGMENTATION_METRIC_NAMES: tuple[str, ...] = ("dice", "hd95", "sensitivity", "specificity")


def _spacing(spacing: float | Sequence[float] | None, ndim: int) -> np.ndarray:
    """Voxel spacing as an (ndim,) float array in mm: None -> ones, a scalar -> isotropic."""
    if spacing is None:
        return np.ones(ndim)
    arr = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if arr.size == 1:
        arr = np.full(ndim, float(arr[0]))
    if arr.ndim != 1 or arr.size != ndim:
        raise ConfigError(f"spacing must be one number or {ndim} numbers (one per axis), got {spacing!r}")
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        raise ConfigError(f"spacing must be positive and finite, got {spacing!r}")
    return arr


def image_diagonal(shape: Sequence[int], spacing: float | Sequence[float] | None = None) -> float:
    """Length in mm of the image diagonal sqrt(sum((shape * spacing)^2)): the HD95 for one empty mask."""
    sp = _spacing(spacing, len(shape))
    return float(np.sqrt(np.sum((np.asarray(shape, dtype=np.float64) * sp) ** 2)))


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice 2|P & T| / (|P| + |T|) of two same-shape boolean masks; 1.0 when both are empty."""
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    total = np.count_nonzero(p) + np.count_nonzero(t)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(p & t) / total


def sensitivity(pred: np.ndarray, truth: np.ndarray) -> float:
    """TP / (TP + FN) of two same-shape boolean masks; 1.0 when the truth is empty."""
    t = np.asarray(truth, dtype=bool)
    positives = np.count_nonzero(t)
    return 1.0 if positives == 0 else np.count_nonzero(np.asarray(pred, dtype=bool) & t) / positives


def specificity(pred: np.ndarray, truth: np.ndarray) -> float:
    """TN / (TN + FP) of two same-shape boolean masks; 1.0 when the truth covers the whole image."""
    t = np.asarray(truth, dtype=bool)
    negatives = t.size - np.count_nonzero(t)
    if negatives == 0:
        return 1.0
    return (negatives - np.count_nonzero(np.asarray(pred, dtype=bool) & ~t)) / negatives


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a boolean mask: mask minus its erosion by the face-connected cross (zero border)."""
    return mask & ~ndimage.binary_erosion(mask)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: float | Sequence[float] | None = None) -> float:
    """95 % Hausdorff distance in mm between two same-shape 2-D/3-D boolean masks (MONAI convention).

    max(P95 of d(surface P -> surface T), P95 of d(surface T -> surface P)), percentiles with linear
    interpolation, exact Euclidean distances with anisotropic ``spacing`` (mm per axis). Both empty
    -> 0; one empty -> the image diagonal. Work is cropped to the bounding box of the union of the
    two masks: every surface voxel lies inside it and erosion outside it sees only background.
    """
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    if p.shape != t.shape:
        raise DataError(f"prediction shape {p.shape} differs from truth shape {t.shape}")
    sp = _spacing(spacing, p.ndim)
    p_any, t_any = p.any(), t.any()
    if not p_any and not t_any:
        return 0.0
    if not (p_any and t_any):
        return image_diagonal(p.shape, sp)
    union = p | t
    box = []
    for axis in range(p.ndim):
        hits = np.flatnonzero(union.any(axis=tuple(a for a in range(p.ndim) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    sp_surface, st_surface = _surface(p[tuple(box)]), _surface(t[tuple(box)])
    d_pt = ndimage.distance_transform_edt(~st_surface, sampling=sp)[sp_surface]
    d_tp = ndimage.distance_transform_edt(~sp_surface, sampling=sp)[st_surface]
    return float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))


def _check_label_map(label: np.ndarray, name: str) -> np.ndarray:
    """Validate a canonical label map (2-D or 3-D, values in {0,1,2,3}) and return it as an integer array."""
    arr = np.asarray(label)
    if arr.ndim not in (2, 3):
        raise DataError(f"{name} label map must be 2-D or 3-D, got shape {arr.shape}")
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise DataError(f"{name} label map has non-integer values; expected canonical labels {sorted(LABELS)}")
    elif arr.dtype.kind not in "iu":
        raise DataError(f"{name} label map has dtype {arr.dtype}; expected integers in {sorted(LABELS)}")
    if arr.size and (arr.min() < 0 or arr.max() > max(LABELS)):
        bad = np.unique(arr[(arr < 0) | (arr > max(LABELS))])[:5]
        raise DataError(f"{name} label map has values {bad.tolist()} outside the canonical labels {sorted(LABELS)}")
    return arr.astype(np.intp) if arr.dtype.kind == "f" else arr


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray,
                         spacing: float | Sequence[float] | None = None) -> dict[str, dict[str, float]]:
    """Dice, HD95 (mm), sensitivity, specificity per BraTS region for canonical (H, W[, D]) label maps.

    Returns {"WT": {"dice", "hd95", "sensitivity", "specificity"}, "TC": ..., "ET": ...}; regions from
    :data:`fuse4seg.conventions.REGIONS`; ``spacing`` in mm per axis (None -> 1 mm). DataError for a
    shape mismatch or a label outside {0, 1, 2, 3}; ConfigError for a bad spacing.
    """
    p = _check_label_map(pred, "prediction")
    t = _check_label_map(truth, "truth")
    if p.shape != t.shape:
        raise DataError(f"prediction shape {p.shape} differs from truth shape {t.shape}")
    sp = _spacing(spacing, p.ndim)
    out: dict[str, dict[str, float]] = {}
    for region, values in REGIONS.items():
        # A lookup table maps every label to its region membership in one gather (same as region_masks).
        lut = np.isin(np.arange(max(LABELS) + 1), values)
        pm, tm = lut[p], lut[t]
        out[region] = {
            "dice": float(dice(pm, tm)),
            "hd95": hd95(pm, tm, sp),
            "sensitivity": float(sensitivity(pm, tm)),
            "specificity": float(specificity(pm, tm)),
        }
    return out


def average_segmentation_metrics(results: Iterable[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per-region, per-metric arithmetic mean of several :func:`segmentation_metrics` results."""
    items = list(results)
    if not items:
        raise DataError("average_segmentation_metrics got no results to average")
    return {region: {m: float(np.mean([r[region][m] for r in items])) for m in SEGMENTATION_METRIC_NAMES}
            for region in REGIONS}

