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

**Pieces.** Voxels further apart than 2 x dilation + 1 never interact (not 26-adjacent, never merged
or grouped), so the work is done per *piece* (:func:`cluster_pieces`): the boxes around clusters of
occupied 8^3 blocks, padded by 5 voxels. A tumour with far satellites then costs what its lesions
cost, not its bounding box. Each piece returns lesion lists and surface points in whole-volume
coordinates; :mod:`fuse4seg.metrics.conventions` combines them.

**BraTS 2025** (brats-evaluation on panoptica 2.x, configs ``config_{gli,mets,ped,...}.yaml``): lesions
are 26-connected components of each mask; truth and predicted lesions are matched one-to-one by
panoptica's ``MaxBipartiteMatching`` on Dice with threshold 1e-6: an assignment (Hungarian, scipy
``linear_sum_assignment``) minimising the sum of 1 - Dice over pairs with Dice >= 1e-6 (other pairs
cost 1 + 1e-6 and are never matches), so it maximises the total Dice of the matches rather than
taking the best pair first. Lesion-wise Dice and pooled HD95 are averaged over the matched pairs;
TP = matches, FP / FN = unmatched predicted / truth lesions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from fuse4seg.metrics.surfaces import pooled_hd95_points, surface_voxels, surfel_cells, surfel_hd95_cells

#: 26-connectivity for 3-D components (both conventions; cc3d's default, as both references use).
FULL_CONNECTIVITY: np.ndarray = ndimage.generate_binary_structure(3, 3)
#: The 2023-24 dilation structure: 18-connected (``generate_binary_structure(3, 2)``).
DILATION_STRUCTURE: np.ndarray = ndimage.generate_binary_structure(3, 2)
#: Smallest Dice a pair needs to be a match candidate in the 2025 convention (panoptica's matching_threshold).
MATCH_THRESHOLD: float = 1e-6
#: Block edge (voxels) of the occupancy grid that finds pieces; must exceed 2 x the largest dilation + 1 (7).
BLOCK: int = 8
#: Padding (voxels) of a piece around its blocks: the largest dilation (3) + the surface cells' voxel + 1.
PIECE_PAD: int = 5


@dataclass(frozen=True)
class Piece:
    """A crop of the volume: its slices, its origin (voxel index of its corner) and the foreign-voxel mask (or None)."""

    box: tuple[slice, ...]
    origin: np.ndarray
    foreign: np.ndarray | None

    def take(self, volume: np.ndarray) -> np.ndarray:
        """``volume`` cropped to the piece, with voxels of other pieces (inside its box) set to 0."""
        crop = volume[self.box]
        return crop if self.foreign is None else np.where(self.foreign, 0, crop)


def cluster_pieces(occupied: np.ndarray) -> list[Piece]:
    """The pieces of a 3-D boolean mask of every voxel that may be in a lesion (either mask, any region)."""
    shape = occupied.shape
    blocks = tuple(-(-n // BLOCK) for n in shape)
    grid = np.zeros(tuple(b * BLOCK for b in blocks), dtype=bool)
    grid[:shape[0], :shape[1], :shape[2]] = occupied
    coarse = grid.reshape(blocks[0], BLOCK, blocks[1], BLOCK, blocks[2], BLOCK).any(axis=(1, 3, 5))
    clusters, _ = ndimage.label(coarse, structure=FULL_CONNECTIVITY)
    pieces = []
    for index, cbox in enumerate(ndimage.find_objects(clusters), start=1):
        box = tuple(slice(max(c.start * BLOCK - PIECE_PAD, 0), min(c.stop * BLOCK + PIECE_PAD, n))
                    for c, n in zip(cbox, shape))
        # Voxels of another cluster can fall in this box (a bent cluster's box); they are removed. The
        # padding only reaches blocks next to this cluster, which no other cluster occupies.
        wide = tuple(slice(max(c.start - 1, 0), min(c.stop + 1, b)) for c, b in zip(cbox, blocks))
        other = (clusters[wide] != index) & (clusters[wide] != 0)
        foreign = None
        if other.any():
            fine = other.repeat(BLOCK, 0).repeat(BLOCK, 1).repeat(BLOCK, 2)
            offset = [b.start - w.start * BLOCK for b, w in zip(box, wide)]
            foreign = fine[tuple(slice(o, o + (b.stop - b.start)) for o, b in zip(offset, box))]
        pieces.append(Piece(box, np.array([b.start for b in box]), foreign))
    return pieces


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


def _by_label(labels: np.ndarray, n: int) -> list[np.ndarray]:
    """Indices of the entries of ``labels`` (values 0..n) grouped by value: element k holds those equal to k."""
    order = np.argsort(labels, kind="stable")
    return np.split(order, np.cumsum(np.bincount(labels, minlength=n + 1))[:-1])


@dataclass
class Piece2023:
    """2023-24 results of one piece: per kept lesion Dice and HD95 (inf if missed), lesion counts, surface cells."""

    dice: list[float] = field(default_factory=list)
    hd95: list[float] = field(default_factory=list)
    tp: int = 0
    fn: int = 0
    fp: int = 0
    cells_t: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    codes_t: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    cells_p: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    codes_p: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))


def brats2023_piece(pred: np.ndarray, truth: np.ndarray, origin: np.ndarray, spacing: tuple[float, float, float],
                    dilation: int, threshold: float) -> Piece2023:
    """2023-24 lesions of one piece's (X, Y, Z) boolean masks (``threshold`` mm^3); cells in volume coordinates."""
    out = Piece2023()
    if not pred.any() and not truth.any():
        return out
    dilated = ndimage.binary_dilation(truth, structure=DILATION_STRUCTURE, iterations=dilation)
    lesion_of, n_gt = components(dilated)  # lesion k = truth voxels in dilated component k
    gt_lesions = np.where(truth, lesion_of, 0)
    pred_cc, n_pred = components(pred)
    out.cells_t, out.codes_t, cell_lesion = surfel_cells(truth, gt_lesions)
    out.cells_p, out.codes_p, cell_comp = surfel_cells(pred, pred_cc)
    gt_volume = np.bincount(gt_lesions.ravel(), minlength=n_gt + 1)
    pred_volume = np.bincount(pred_cc.ravel(), minlength=n_pred + 1)
    touch_gt, touch_pred, _ = _pair_counts(lesion_of, pred_cc, n_pred)
    # Overlap of lesion k with the components (a component overlapping a lesion also touches its dilation).
    ov_gt, _, ov_count = _pair_counts(gt_lesions, pred_cc, n_pred)
    overlap = np.bincount(ov_gt, weights=ov_count, minlength=n_gt + 1)
    grouped_volume = np.bincount(touch_gt, weights=pred_volume[touch_pred], minlength=n_gt + 1)
    out.fp = n_pred - np.unique(touch_pred).size
    keep = gt_volume * float(np.prod(spacing)) > threshold
    keep[0] = False
    lesion_cells = _by_label(cell_lesion, n_gt)
    for k in np.flatnonzero(keep):
        group = touch_pred[touch_gt == k]
        if group.size == 0:
            out.fn += 1
            out.dice.append(0.0)
            out.hd95.append(np.inf)
            continue
        out.tp += 1
        out.dice.append(2.0 * overlap[k] / (gt_volume[k] + grouped_volume[k]))
        mine, theirs = lesion_cells[k], np.isin(cell_comp, group)
        out.hd95.append(surfel_hd95_cells(out.cells_t[mine], out.codes_t[mine], out.cells_p[theirs],
                                          out.codes_p[theirs], spacing))
    out.cells_t, out.cells_p = out.cells_t + origin, out.cells_p + origin
    return out


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
    # Only lesions with a candidate can be matched: solve on those rows and columns (panoptica builds the
    # matrix of every lesion pair; a lesion without candidates only adds rows or columns of equal cost).
    rows, row_of = np.unique(ia, return_inverse=True)
    cols, col_of = np.unique(ib, return_inverse=True)
    cost = np.full((rows.size, cols.size), 1.0 + MATCH_THRESHOLD)
    cost[row_of, col_of] = 1.0 - dsc
    r, c = linear_sum_assignment(cost)
    valid = cost[r, c] < 1.0
    r, c = r[valid], c[valid]
    return rows[r], cols[c], 1.0 - cost[r, c]


@dataclass
class Piece2025:
    """2025 results of one piece: Dice and HD95 of matched pairs, lesion counts, surface voxels (volume coordinates)."""

    dice: list[float] = field(default_factory=list)
    hd95: list[float] = field(default_factory=list)
    n_ref: int = 0
    n_pred: int = 0
    surf_t: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    surf_p: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))


def brats2025_piece(pred: np.ndarray, truth: np.ndarray, origin: np.ndarray,
                    spacing: tuple[float, float, float]) -> Piece2025:
    """2025 lesions of one piece's (X, Y, Z) boolean masks: one-to-one matches and surface voxels."""
    out = Piece2025()
    if not pred.any() and not truth.any():
        return out
    ref_cc, out.n_ref = components(truth)
    pred_cc, out.n_pred = components(pred)
    # A component's surface is the mask's surface restricted to it (other components are not adjacent).
    st, sp = surface_voxels(truth), surface_voxels(pred)
    out.surf_t, out.surf_p = np.argwhere(st), np.argwhere(sp)
    ref_surf, pred_surf = _by_label(ref_cc[st], out.n_ref), _by_label(pred_cc[sp], out.n_pred)
    ref_match, pred_match, dsc = match_lesions(ref_cc, out.n_ref, pred_cc, out.n_pred)
    out.dice = [float(d) for d in dsc]
    out.hd95 = [pooled_hd95_points(out.surf_t[ref_surf[i]], out.surf_p[pred_surf[j]], spacing)
                for i, j in zip(ref_match, pred_match)]
    out.surf_t, out.surf_p = out.surf_t + origin, out.surf_p + origin
    return out
