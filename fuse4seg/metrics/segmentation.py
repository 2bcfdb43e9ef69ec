"""BraTS segmentation metrics per region (WT, TC, ET): Dice, HD95, sensitivity, specificity, 2-D or 3-D.

Empty-mask rules (the BraTS challenges' convention): both masks empty -> Dice 1, HD95 0; exactly
one empty -> Dice 0, HD95 = the image diagonal sqrt(sum((shape * spacing)^2)) (373.13 mm for a
240 x 240 x 155 volume at 1 mm). HD95 follows MONAI's ``compute_hausdorff_distance(percentile=95)``:
the larger of the two directed 95th percentiles (linear interpolation) of the distances between
the surface voxels (mask minus its face-connected erosion) of the two masks. That max-of-directed
form is also DeepMind's robust Hausdorff (used by recent BraTS evaluations, which in addition weight
by surfel area); MedPy's ``hd95`` instead takes one percentile of the pooled distances and is
smaller when only one direction has outliers. Sensitivity and specificity with an empty denominator (no true
positives to find / no true negatives to keep) are 1.0: nothing was missed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from fuse4seg.conventions import LABELS, REGIONS
from fuse4seg.errors import ConfigError, DataError
from fuse4seg.metrics.conventions import check_challenge, check_convention, label_map_scores
from fuse4seg.metrics.surfaces import bounding_box

SEGMENTATION_METRIC_NAMES: tuple[str, ...] = ("dice", "hd95", "sensitivity", "specificity")
#: Per region, a lookup table from label value to region membership: one gather per mask (as region_masks).
_REGION_LUT: dict[str, np.ndarray] = {r: np.isin(np.arange(max(LABELS) + 1), v) for r, v in REGIONS.items()}


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


def _counts(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """(|P & T|, |P|, |T|) of two same-shape boolean masks."""
    return int(np.count_nonzero(pred & truth)), int(np.count_nonzero(pred)), int(np.count_nonzero(truth))


def _rates(tp: int, n_pred: int, n_truth: int, n_total: int) -> tuple[float, float, float]:
    """(Dice, sensitivity, specificity) from confusion counts, with the empty-denominator rules above."""
    dice_value = 1.0 if n_pred + n_truth == 0 else 2.0 * tp / (n_pred + n_truth)
    sens = 1.0 if n_truth == 0 else tp / n_truth
    negatives = n_total - n_truth
    spec = 1.0 if negatives == 0 else (negatives - (n_pred - tp)) / negatives
    return dice_value, sens, spec


def _as_mask_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two same-shape boolean masks (DataError on a shape mismatch)."""
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    if p.shape != t.shape:
        raise DataError(f"prediction shape {p.shape} differs from truth shape {t.shape}")
    return p, t


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice 2|P & T| / (|P| + |T|) of two same-shape boolean masks; 1.0 when both are empty."""
    p, t = _as_mask_pair(pred, truth)
    return _rates(*_counts(p, t), p.size)[0]


def sensitivity(pred: np.ndarray, truth: np.ndarray) -> float:
    """TP / (TP + FN) of two same-shape boolean masks; 1.0 when the truth is empty."""
    p, t = _as_mask_pair(pred, truth)
    return _rates(*_counts(p, t), p.size)[1]


def specificity(pred: np.ndarray, truth: np.ndarray) -> float:
    """TN / (TN + FP) of two same-shape boolean masks; 1.0 when the truth covers the whole image."""
    p, t = _as_mask_pair(pred, truth)
    return _rates(*_counts(p, t), p.size)[2]


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a boolean mask: mask minus its erosion by the face-connected cross (zero border)."""
    return mask & ~ndimage.binary_erosion(mask)


def _hd95(p: np.ndarray, t: np.ndarray, sp: np.ndarray, diagonal: float) -> float:
    """HD95 of two boolean masks (possibly a crop holding both) with spacing sp; ``diagonal`` if one is empty."""
    box = bounding_box(p | t)
    if box is None:
        return 0.0
    pc, tc = p[box], t[box]
    if not (pc.any() and tc.any()):
        return diagonal
    surf_p, surf_t = _surface(pc), _surface(tc)
    d_pt = ndimage.distance_transform_edt(~surf_t, sampling=sp)[surf_p]
    d_tp = ndimage.distance_transform_edt(~surf_p, sampling=sp)[surf_t]
    return float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: float | Sequence[float] | None = None) -> float:
    """95 % Hausdorff distance in mm between two same-shape 2-D/3-D boolean masks (MONAI convention).

    max(P95 of d(surface P -> surface T), P95 of d(surface T -> surface P)), percentiles with linear
    interpolation, exact Euclidean distances with anisotropic ``spacing`` (mm per axis). Both empty
    -> 0; one empty -> the image diagonal. Work is cropped to the bounding box of the union of the
    two masks: every surface voxel lies inside it and erosion outside it sees only background.
    """
    p, t = _as_mask_pair(pred, truth)
    sp = _spacing(spacing, p.ndim)
    return _hd95(p, t, sp, image_diagonal(p.shape, sp))


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


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray, spacing: float | Sequence[float] | None = None,
                         convention: str = "monai", challenge: str = "gli") -> dict[str, dict[str, float]]:
    """Dice, HD95 (mm), sensitivity, specificity per BraTS region for canonical (H, W[, D]) label maps.

    Returns {"WT": {"dice", "hd95", "sensitivity", "specificity"}, "TC": ..., "ET": ...}; regions from
    :data:`fuse4seg.conventions.REGIONS`; ``spacing`` in mm per axis (None -> 1 mm). DataError for a
    shape mismatch or a label outside {0, 1, 2, 3}; ConfigError for a bad spacing.

    ``convention`` (:mod:`fuse4seg.metrics.conventions`): ``monai`` (the default, described above),
    ``brats2023`` (the 2023-24 challenge code, with lesion-wise metrics for ``challenge`` gli, ssa,
    ped, men or met) or ``brats2025`` (brats-evaluation / panoptica); the brats conventions take 3-D
    volumes and return the metrics of :data:`fuse4seg.metrics.conventions.METRICS` per region.
    """
    convention, challenge = check_convention(convention), check_challenge(challenge)
    p = _check_label_map(pred, "prediction")
    t = _check_label_map(truth, "truth")
    if p.shape != t.shape:
        raise DataError(f"prediction shape {p.shape} differs from truth shape {t.shape}")
    sp = _spacing(spacing, p.ndim)
    if convention != "monai":
        if p.ndim != 3:
            raise DataError(f"the {convention} convention scores 3-D volumes, got label maps of shape {p.shape}")
        return label_map_scores(p, t, (float(sp[0]), float(sp[1]), float(sp[2])), convention, challenge)
    diagonal = image_diagonal(p.shape, sp)
    n_total = p.size
    # Every region lies inside the non-background voxels: crop once, count the rest analytically.
    box = bounding_box((p != 0) | (t != 0))
    if box is not None:
        p, t = p[box], t[box]
    out: dict[str, dict[str, float]] = {}
    for region in REGIONS:
        if box is None:
            out[region] = {"dice": 1.0, "hd95": 0.0, "sensitivity": 1.0, "specificity": 1.0}
            continue
        pm, tm = _REGION_LUT[region][p], _REGION_LUT[region][t]
        dice_value, sens, spec = _rates(*_counts(pm, tm), n_total)
        out[region] = {"dice": dice_value, "hd95": _hd95(pm, tm, sp, diagonal), "sensitivity": sens,
                       "specificity": spec}
    return out


def average_segmentation_metrics(results: Iterable[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per-region, per-metric arithmetic mean of several :func:`segmentation_metrics` results."""
    items = list(results)
    if not items:
        raise DataError("average_segmentation_metrics got no results to average")
    return {region: {m: float(np.mean([r[region][m] for r in items])) for m in SEGMENTATION_METRIC_NAMES}
            for region in REGIONS}

