"""Lesion-wise BraTS metrics on one region's 3-D masks: the 2023-24 challenge rule and the 2025 (panoptica) rule.

**BraTS 2023-24** (the challenge's ``lesion_wise_metrics`` script by R. Saluja, used for GLI, SSA, PED,
MEN and MET in 2023 and 2024). Lesions are 26-connected components. The truth mask is dilated
(``generate_binary_structure(3, 2)``, ``dilation`` iterations) and each 26-connected component of the
dilated mask is one ground-truth lesion: the truth voxels inside it, so truth lesions whose dilations
touch are merged. Every predicted component that touches a lesion's dilation is grouped with it
(a component may serve several lesions). Per lesion: Dice and DeepMind HD95 of the lesion against
the union of its grouped components; a lesion with none is missed (Dice 0, HD95 inf -> 374). Lesions
of volume <= ``threshold`` mm^3 are dropped (their components are not false positives either).
Predicted components touching no lesion are false positives. Lesion-wise Dice = sum(Dice) /
(N_gt + N_fp); HD95 = (sum(HD95) + 374 N_fp) / (N_gt + N_fp); with N_gt + N_fp = 0 they are 1 and 0.

A lesion's dilation is exactly its component of the dilated mask (dilation distributes over unions, and
each voxel's dilation is connected), so the grouping is one pass over (dilated component, predicted
component) pairs instead of one dilation per lesion.

**BraTS 2025** (brats-evaluation on panoptica 2.x, configs ``config_{gli,mets,ped,...}.yaml``): lesions
are 26-connected components of each mask; truth and predicted lesions are matched one-to-one by
panoptica's ``MaxBipartiteMatching`` on Dice with threshold 1e-6: an assignment (Hungarian, scipy
``linear_sum_assignment``) minimising the sum of 1 - Dice over pairs with Dice >= 1e-6 (other pairs
cost 1 + 1e-6 and are never matches), so it maximises the total Dice of the matches rather than
taking the best pair first. Lesion-wise Dice and pooled HD95 are averaged over the matched pairs;
TP = matches, FP / FN = unmatched predicted / truth lesions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from fuse4seg.metrics.surfaces import bounding_box, pooled_hd95, surfel_hd95

#: 26-connectivity for 3-D components (both conventions; cc3d's default, as both references use).
FULL_CONNECTIVITY: np.ndarray = ndimage.generate_binary_structure(3, 3)
#: The 2023-24 dilation structure: 18-connected (``generate_binary_structure(3, 2)``).
DILATION_STRUCTURE: np.ndarray = ndimage.generate_binary_structure(3, 2)
#: Smallest Dice a pair needs to be a match candidate in the 2025 convention (panoptica's matching_threshold).
MATCH_THRESHOLD: float = 1e-6


@dataclass(frozen=True)
class LesionScores:
    """Lesion-wise scores of one region: Dice and HD95 (mm) over lesions, lesion counts (TP, FP, FN)."""

    dice: float
    hd95: float
    tp: int
    fp: int
    fn: int


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a 3-D boolean mask: (int32 labels 0..n, same shape; n)."""
    labels, n = ndimage.label(mask, structure=FULL_CONNECTIVITY, output=np.int32)
    return labels, int(n)


def _pair_counts(a: np.ndarray, b: np.ndarray, n_b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique (label in a, label in b) pairs where both are > 0, with their voxel counts: (ia, ib, count)."""
    both = (a > 0) & (b > 0)
    keys = a[both].astype(np.int64) * (n_b + 1) + b[both]
    uniq, counts = np.unique(keys, return_counts=True)
    return uniq // (n_b + 1), uniq % (n_b + 1), counts


def _padded_box(mask: np.ndarray, pad: int) -> tuple[slice, ...] | None:
    """Bounding box of ``mask`` grown by ``pad`` voxels per side (clipped to the array); None if empty."""
    box = bounding_box(mask)
    if box is None:
        return None
    return tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(box, mask.shape))


def _union_box(boxes: list[tuple[slice, ...]]) -> tuple[slice, ...]:
    """The smallest box holding all of ``boxes`` (scipy find_objects slices)."""
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(len(boxes[0])))


def brats2023_lesions(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float], dilation: int,
                      threshold: float, penalty: float) -> LesionScores:
    """2023-24 lesion-wise scores of two (X, Y, Z) boolean masks; ``threshold`` in mm^3, ``penalty`` = 374 mm."""
    # Everything happens within dilation + 1 voxels of the masks: crop there once (dilation near the
    # array's edge is still cut by the edge, as in the reference).
    box = _padded_box(pred | truth, dilation + 1)
    if box is None:
        return LesionScores(1.0, 0.0, 0, 0, 0)
    pred, truth = pred[box], truth[box]
    dilated = ndimage.binary_dilation(truth, structure=DILATION_STRUCTURE, iterations=dilation)
    lesion_of, n_gt = components(dilated)  # lesion k = truth voxels in dilated component k
    pred_cc, n_pred = components(pred)
    gt_lesions = np.where(truth, lesion_of, 0)
    gt_volume = np.bincount(gt_lesions.ravel(), minlength=n_gt + 1)
    pred_volume = np.bincount(pred_cc.ravel(), minlength=n_pred + 1)
    touch_gt, touch_pred, _ = _pair_counts(lesion_of, pred_cc, n_pred)
    # Overlap of lesion k with the components (a component overlapping a lesion also touches its dilation).
    ov_gt, _, ov_count = _pair_counts(gt_lesions, pred_cc, n_pred)
    overlap = np.bincount(ov_gt, weights=ov_count, minlength=n_gt + 1)
    grouped_volume = np.bincount(touch_gt, weights=pred_volume[touch_pred], minlength=n_gt + 1)
    n_fp = n_pred - np.unique(touch_pred).size
    keep = gt_volume * float(np.prod(spacing)) > threshold
    keep[0] = False
    gt_boxes, pred_boxes = ndimage.find_objects(gt_lesions, max_label=n_gt), ndimage.find_objects(pred_cc)
    dice_sum, hd_sum, tp, fn = 0.0, 0.0, 0, 0
    for k in np.flatnonzero(keep):
        group = touch_pred[touch_gt == k]
        if group.size == 0:
            fn += 1
            hd_sum += penalty
            continue
        tp += 1
        dice_sum += 2.0 * overlap[k] / (gt_volume[k] + grouped_volume[k])
        sub = _union_box([gt_boxes[k - 1], *(pred_boxes[j - 1] for j in group)])
        hd_sum += surfel_hd95(gt_lesions[sub] == k, np.isin(pred_cc[sub], group), spacing)
    n = int(keep.sum()) + n_fp
    if n == 0:
        return LesionScores(1.0, 0.0, 0, 0, 0)
    return LesionScores(dice_sum / n, (hd_sum + penalty * n_fp) / n, tp, n_fp, fn)


def match_lesions(ref_labels: np.ndarray, n_ref: int, pred_labels: np.ndarray,
                  n_pred: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matches of labelled truth and predicted lesions maximising total Dice (panoptica's
    MaxBipartiteMatching, Dice >= 1e-6): (truth labels, predicted labels, Dice) of the matched pairs."""
    ia, ib, overlap = _pair_counts(ref_labels, pred_labels, n_pred)
    ref_size = np.bincount(ref_labels.ravel(), minlength=n_ref + 1)
    pred_size = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    dsc = 2.0 * overlap / (ref_size[ia] + pred_size[ib])
    ok = dsc >= MATCH_THRESHOLD
    ia, ib, dsc = ia[ok], ib[ok], dsc[ok]
    empty = np.zeros(0, dtype=np.int64)
    if ia.size == 0:
        return empty, empty, np.zeros(0)
    # Only lesions with a candidate can be matched: solve on those rows and columns (the full matrix
    # of every lesion pair is what panoptica builds; a lesion without candidates only adds rows of
    # equal cost).
    rows, row_of = np.unique(ia, return_inverse=True)
    cols, col_of = np.unique(ib, return_inverse=True)
    cost = np.full((rows.size, cols.size), 1.0 + MATCH_THRESHOLD)
    cost[row_of, col_of] = 1.0 - dsc
    r, c = linear_sum_assignment(cost)
    valid = cost[r, c] < 1.0
    r, c = r[valid], c[valid]
    return rows[r], cols[c], 1.0 - cost[r, c]


def brats2025_lesions(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float],
                      penalty: float) -> LesionScores:
    """2025 lesion-wise scores of two (X, Y, Z) boolean masks: means over matched pairs; NaN with no lesions.

    No match while lesions exist: Dice 0 and HD95 ``penalty`` (panoptica reports inf; brats-evaluation
    writes its 373 penalty for an infinite HD95).
    """
    box = bounding_box(pred | truth)
    if box is None:
        return LesionScores(np.nan, np.nan, 0, 0, 0)
    pred, truth = pred[box], truth[box]
    ref_cc, n_ref = components(truth)
    pred_cc, n_pred = components(pred)
    ref_match, pred_match, dsc = match_lesions(ref_cc, n_ref, pred_cc, n_pred)
    tp = int(ref_match.size)
    if tp == 0:
        return LesionScores(0.0, penalty, 0, n_pred, n_ref)
    ref_boxes, pred_boxes = ndimage.find_objects(ref_cc), ndimage.find_objects(pred_cc)
    hds = []
    for i, j in zip(ref_match, pred_match):
        sub = _union_box([ref_boxes[i - 1], pred_boxes[j - 1]])
        hds.append(pooled_hd95(ref_cc[sub] == i, pred_cc[sub] == j, spacing))
    return LesionScores(float(np.mean(dsc)), float(np.mean(hds)), tp, n_pred - tp, n_ref - tp)
