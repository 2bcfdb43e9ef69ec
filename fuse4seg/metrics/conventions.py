"""Named BraTS scoring conventions: which Dice, HD95, empty-mask rules and lesion-wise metrics a number follows.

- ``monai``: fuse4seg's default (:mod:`fuse4seg.metrics.segmentation`): HD95 = the larger of the two
  directed 95th percentiles of surface-voxel distances (MONAI ``compute_hausdorff_distance``); one
  mask empty -> Dice 0, HD95 = the image diagonal (373.13 mm at 240 x 240 x 155, 1 mm); both empty ->
  Dice 1, HD95 0. No lesion-wise metrics.
- ``brats2023``: the BraTS 2023-24 challenge code (R. Saluja's ``lesion_wise_metrics`` script, the
  ranking of BraTS 2023 and 2024 GLI/SSA/PED/MEN/MET): legacy Dice (1 when both empty); legacy
  HD95 = DeepMind surface-distance ``compute_robust_hausdorff(..., 95)`` (surface elements weighted by
  area; :func:`fuse4seg.metrics.surfaces.surfel_hd95`), 374 when one mask is empty, 0 when both are;
  sensitivity and specificity as its GaNDLF-derived function (truth empty, prediction not:
  sensitivity 0); lesion-wise Dice / HD95 and lesion counts per challenge
  (:func:`fuse4seg.metrics.lesions.brats2023_piece`; dilation and volume threshold in
  :data:`CHALLENGES`).
- ``brats2025``: the brats-evaluation package on panoptica (BraTS 2025 configs; AGPL, read as a
  reference, not used): Dice, and HD95 = 95th percentile of both directions' surface distances pooled
  (:func:`fuse4seg.metrics.surfaces.pooled_hd95`); no overlap or one mask empty -> Dice 0, HD95 373;
  both empty -> NaN (left out of means); lesion-wise Dice / HD95 over one-to-one matched lesions
  (:func:`fuse4seg.metrics.lesions.brats2025_piece`) and recognition F1 = 2 TP / (2 TP + FP + FN).
  The same for every challenge (their configs differ only in label groups; WT/TC/ET are scored here).

The brats conventions are defined on 3-D volumes only; spacing in mm per axis (BraTS: 1 mm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fuse4seg.conventions import LABELS, REGIONS
from fuse4seg.errors import ConfigError
from fuse4seg.metrics.lesions import brats2023_piece, brats2025_piece, cluster_pieces
from fuse4seg.metrics.surfaces import pooled_hd95_points, surfel_hd95_cells

#: One piece of a region: (prediction mask, truth mask, origin of the crop in the volume).
Part = tuple[np.ndarray, np.ndarray, np.ndarray]

CONVENTIONS: tuple[str, ...] = ("monai", "brats2023", "brats2025")
#: What `evaluate --volumes` scores with when no --convention / --challenge is given.
DEFAULT_CONVENTION, DEFAULT_CHALLENGE = "brats2023", "gli"
#: HD95 (mm) that the 2023-24 code writes for an infinite distance (one mask empty, a missed lesion, a false positive).
BRATS2023_PENALTY: float = 374.0
#: HD95 (mm) that brats-evaluation writes for an infinite distance ("diameter of the cube in SRI space").
BRATS2025_PENALTY: float = 373.0

#: Metric names per convention, in output order (counts tp/fp/fn are lesions, not voxels).
METRICS: dict[str, tuple[str, ...]] = {
    "monai": ("dice", "hd95", "sensitivity", "specificity"),
    "brats2023": ("dice", "hd95", "sensitivity", "specificity", "lesion_dice", "lesion_hd95", "tp", "fp", "fn"),
    "brats2025": ("dice", "hd95", "lesion_dice", "lesion_hd95", "tp", "fp", "fn", "f1"),
}


@dataclass(frozen=True)
class Challenge:
    """2023-24 lesion-wise settings of one BraTS challenge: GT dilation (iterations) and volume threshold (mm^3)."""

    dilation: int
    threshold: float


#: Per challenge, as the 2023-24 script's get_LesionWiseResults sets them.
CHALLENGES: dict[str, Challenge] = {
    "gli": Challenge(3, 50.0),
    "ssa": Challenge(3, 50.0),
    "ped": Challenge(3, 50.0),
    "men": Challenge(1, 50.0),
    "met": Challenge(1, 2.0),
}


def check_convention(convention: str) -> str:
    """The convention name in lower case; ConfigError (option ``convention``) if it is unknown."""
    name = str(convention).lower()
    if name not in CONVENTIONS:
        raise ConfigError(f"must be one of {', '.join(CONVENTIONS)}, got {convention!r}", option="convention")
    return name


def check_challenge(challenge: str) -> str:
    """The challenge name in lower case; ConfigError (option ``challenge``) if it is unknown."""
    name = str(challenge).lower()
    if name not in CHALLENGES:
        raise ConfigError(f"must be one of {', '.join(CHALLENGES)}, got {challenge!r}", option="challenge")
    return name


def mask_parts(pred: np.ndarray, truth: np.ndarray) -> list[Part]:
    """The pieces (:func:`fuse4seg.metrics.lesions.cluster_pieces`) of two same-shape 3-D boolean masks."""
    return [(piece.take(pred), piece.take(truth), piece.origin) for piece in cluster_pieces(pred | truth)]


def _counts(parts: list[Part]) -> tuple[int, int, int]:
    """(|P & T|, |P|, |T|) voxels over all pieces (pieces hold every voxel of either mask, once)."""
    tp = sum(int(np.count_nonzero(p & t)) for p, t, _ in parts)
    return tp, sum(int(np.count_nonzero(p)) for p, _, _ in parts), sum(int(np.count_nonzero(t)) for _, t, _ in parts)


def _stack(arrays: list[np.ndarray], width: int = 3) -> np.ndarray:
    """Rows of all pieces in one array ((0, width) when there are none)."""
    return np.concatenate(arrays) if arrays else np.zeros((0, width), np.int64)


def brats2023_parts(parts: list[Part], spacing: tuple[float, float, float], challenge: str,
                    n_total: int) -> dict[str, float]:
    """BraTS 2023-24 metrics of one region from its pieces; ``n_total`` = voxels in the volume (for specificity)."""
    settings = CHALLENGES[check_challenge(challenge)]
    tp, n_pred, n_truth = _counts(parts)
    both_empty = n_pred + n_truth == 0
    pieces = [brats2023_piece(p, t, o, spacing, settings.dilation, settings.threshold) for p, t, o in parts]
    dice = 1.0 if both_empty else 2.0 * tp / (n_pred + n_truth)
    hd95 = 0.0 if both_empty else surfel_hd95_cells(
        _stack([x.cells_t for x in pieces]), np.concatenate([x.codes_t for x in pieces] or [np.zeros(0, np.uint8)]),
        _stack([x.cells_p for x in pieces]), np.concatenate([x.codes_p for x in pieces] or [np.zeros(0, np.uint8)]),
        spacing)
    # GaNDLF's TP / (TP + FN + tiny) and TN / (TN + FP + tiny): an empty denominator gives 0, except
    # sensitivity 1 when both masks are empty.
    negatives = n_total - n_truth
    sensitivity = 1.0 if both_empty else (tp / n_truth if n_truth else 0.0)
    specificity = (negatives - (n_pred - tp)) / negatives if negatives else 0.0
    lesion_dice = [d for x in pieces for d in x.dice]
    lesion_hd = [BRATS2023_PENALTY if np.isinf(h) else h for x in pieces for h in x.hd95]
    n_fp = sum(x.fp for x in pieces)
    n = len(lesion_dice) + n_fp
    return {"dice": dice, "hd95": BRATS2023_PENALTY if np.isinf(hd95) else hd95,
            "sensitivity": sensitivity, "specificity": specificity,
            "lesion_dice": sum(lesion_dice) / n if n else 1.0,
            "lesion_hd95": (sum(lesion_hd) + BRATS2023_PENALTY * n_fp) / n if n else 0.0,
            "tp": sum(x.tp for x in pieces), "fp": n_fp, "fn": sum(x.fn for x in pieces)}


def brats2025_parts(parts: list[Part], spacing: tuple[float, float, float]) -> dict[str, float]:
    """BraTS 2025 (brats-evaluation / panoptica) metrics of one region from its pieces."""
    tp, n_pred, n_truth = _counts(parts)
    nan = float("nan")
    if n_pred + n_truth == 0:
        return {"dice": nan, "hd95": nan, "lesion_dice": nan, "lesion_hd95": nan, "tp": 0, "fp": 0, "fn": 0,
                "f1": nan}
    pieces = [brats2025_piece(p, t, o, spacing) for p, t, o in parts]
    if tp == 0:  # panoptica's zero-overlap edge case: Dice 0, HD95 inf (-> 373)
        dice, hd95 = 0.0, BRATS2025_PENALTY
    else:
        dice = 2.0 * tp / (n_pred + n_truth)
        hd95 = pooled_hd95_points(_stack([x.surf_t for x in pieces]), _stack([x.surf_p for x in pieces]), spacing)
    lesion_dice = [d for x in pieces for d in x.dice]
    lesion_hd = [h for x in pieces for h in x.hd95]
    matched = len(lesion_dice)
    fp = sum(x.n_pred for x in pieces) - matched
    fn = sum(x.n_ref for x in pieces) - matched
    # No match while lesions exist: panoptica's edge case gives Dice 0 and HD95 inf (brats-evaluation: 373).
    return {"dice": dice, "hd95": hd95,
            "lesion_dice": float(np.mean(lesion_dice)) if matched else 0.0,
            "lesion_hd95": float(np.mean(lesion_hd)) if matched else BRATS2025_PENALTY,
            "tp": matched, "fp": fp, "fn": fn, "f1": 2 * matched / (2 * matched + fp + fn)}


def brats2023_region(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float],
                     challenge: str = "gli") -> dict[str, float]:
    """BraTS 2023-24 metrics of one region's (X, Y, Z) boolean masks (``spacing`` mm per axis)."""
    return brats2023_parts(mask_parts(pred, truth), spacing, challenge, pred.size)


def brats2025_region(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, float]:
    """BraTS 2025 (brats-evaluation / panoptica) metrics of one region's (X, Y, Z) boolean masks."""
    return brats2025_parts(mask_parts(pred, truth), spacing)


#: Per region, label value -> membership (canonical labels), for one gather per crop.
_REGION_LUT: dict[str, np.ndarray] = {r: np.isin(np.arange(max(LABELS) + 1), v) for r, v in REGIONS.items()}


def label_map_scores(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float], convention: str,
                     challenge: str = "gli") -> dict[str, dict[str, float]]:
    """The metrics of ``convention`` (brats2023 or brats2025) per region for canonical (X, Y, Z) label maps."""
    if convention not in ("brats2023", "brats2025"):
        raise ConfigError(f"label_map_scores covers brats2023 and brats2025, got {convention!r}", option="convention")
    # The pieces hold every labelled voxel; each region's masks are gathered from the crops only.
    crops = [(piece.take(pred), piece.take(truth), piece.origin) for piece in cluster_pieces((pred != 0) | (truth != 0))]
    out = {}
    for region, lut in _REGION_LUT.items():
        parts = [(lut[p], lut[t], origin) for p, t, origin in crops]
        out[region] = (brats2023_parts(parts, spacing, challenge, pred.size) if convention == "brats2023"
                       else brats2025_parts(parts, spacing))
    return out
