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
  (:func:`fuse4seg.metrics.lesions.brats2023_lesions`; dilation and volume threshold in
  :data:`CHALLENGES`).
- ``brats2025``: the brats-evaluation package on panoptica (BraTS 2025 configs; AGPL, read as a
  reference, not used): Dice, and HD95 = 95th percentile of both directions' surface distances pooled
  (:func:`fuse4seg.metrics.surfaces.pooled_hd95`); no overlap or one mask empty -> Dice 0, HD95 373;
  both empty -> NaN (left out of means); lesion-wise Dice / HD95 over one-to-one matched lesions
  (:func:`fuse4seg.metrics.lesions.brats2025_lesions`) and recognition F1 = 2 TP / (2 TP + FP + FN).
  The same for every challenge (their configs differ only in label groups; WT/TC/ET are scored here).

The brats conventions are defined on 3-D volumes only; spacing in mm per axis (BraTS: 1 mm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fuse4seg.errors import ConfigError
from fuse4seg.metrics.lesions import brats2023_lesions, brats2025_lesions
from fuse4seg.metrics.surfaces import pooled_hd95, surfel_hd95

CONVENTIONS: tuple[str, ...] = ("monai", "brats2023", "brats2025")
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


def brats2023_region(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float],
                     challenge: str = "gli") -> dict[str, float]:
    """BraTS 2023-24 metrics of one region's (X, Y, Z) boolean masks (``spacing`` mm per axis)."""
    settings = CHALLENGES[check_challenge(challenge)]
    tp = int(np.count_nonzero(pred & truth))
    n_pred, n_truth = int(np.count_nonzero(pred)), int(np.count_nonzero(truth))
    both_empty = n_pred + n_truth == 0
    dice = 1.0 if both_empty else 2.0 * tp / (n_pred + n_truth)
    hd95 = 0.0 if both_empty else surfel_hd95(truth, pred, spacing)
    # GaNDLF's TP / (TP + FN + tiny) and TN / (TN + FP + tiny): an empty denominator gives 0, except
    # sensitivity 1 when both masks are empty.
    negatives = pred.size - n_truth
    sensitivity = 1.0 if both_empty else (tp / n_truth if n_truth else 0.0)
    specificity = (negatives - (n_pred - tp)) / negatives if negatives else 0.0
    lesions = brats2023_lesions(pred, truth, spacing, settings.dilation, settings.threshold, BRATS2023_PENALTY)
    return {"dice": dice, "hd95": BRATS2023_PENALTY if np.isinf(hd95) else hd95,
            "sensitivity": sensitivity, "specificity": specificity, "lesion_dice": lesions.dice,
            "lesion_hd95": lesions.hd95, "tp": lesions.tp, "fp": lesions.fp, "fn": lesions.fn}


def brats2025_region(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, float]:
    """BraTS 2025 (brats-evaluation / panoptica) metrics of one region's (X, Y, Z) boolean masks."""
    lesions = brats2025_lesions(pred, truth, spacing, BRATS2025_PENALTY)
    tp = int(np.count_nonzero(pred & truth))
    n_pred, n_truth = int(np.count_nonzero(pred)), int(np.count_nonzero(truth))
    if n_pred + n_truth == 0:
        dice = hd95 = f1 = np.nan
    elif tp == 0:  # panoptica's zero-overlap edge case: Dice 0, HD95 inf (-> 373)
        dice, hd95 = 0.0, BRATS2025_PENALTY
    else:
        dice, hd95 = 2.0 * tp / (n_pred + n_truth), pooled_hd95(truth, pred, spacing)
    if n_pred + n_truth:
        matched = 2 * lesions.tp
        f1 = matched / (matched + lesions.fp + lesions.fn)
    return {"dice": dice, "hd95": hd95, "lesion_dice": lesions.dice, "lesion_hd95": lesions.hd95,
            "tp": lesions.tp, "fp": lesions.fp, "fn": lesions.fn, "f1": f1}


def region_scores(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float], convention: str,
                  challenge: str = "gli") -> dict[str, float]:
    """The metrics of ``convention`` (brats2023 or brats2025) for one region's (X, Y, Z) boolean masks."""
    if convention == "brats2023":
        return brats2023_region(pred, truth, spacing, challenge)
    if convention == "brats2025":
        return brats2025_region(pred, truth, spacing)
    raise ConfigError(f"region_scores covers brats2023 and brats2025, got {convention!r}", option="convention")
