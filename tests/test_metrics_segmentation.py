"""Segmentation metrics against MONAI (Dice, HD95 with spacing), brute-force surface distances, hand-worked
confusion counts, and every BraTS empty-mask case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from scipy import ndimage
from scipy.spatial.distance import cdist

from fuse4seg.conventions import REGIONS, region_masks
from fuse4seg.errors import ConfigError, DataError
from fuse4seg.metrics import (
    average_segmentation_metrics,
    dice,
    hd95,
    image_diagonal,
    segmentation_metrics,
    sensitivity,
    specificity,
)


def blob(shape: tuple[int, ...], seed: int, sigma: float = 3.0, level: float = 0.6) -> np.ndarray:
    """Random smooth blob mask: Gaussian-smoothed uniform noise thresholded at a quantile."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).uniform(size=shape), sigma)
    return noise > np.quantile(noise, level)


def monai_hd95(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> float:
    """MONAI compute_hausdorff_distance(percentile=95) of two boolean masks with the given spacing."""
    p = torch.from_numpy(pred)[None, None]
    t = torch.from_numpy(truth)[None, None]
    return float(compute_hausdorff_distance(p, t, percentile=95, spacing=list(spacing)))


def brute_hd95(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...], pooled: bool = False) -> float:
    """Max of directed 95th percentiles (or MedPy's percentile of the pooled distances when ``pooled``),
    surfaces from an explicit 2*ndim-neighbour test, all-pairs cdist."""
    def surface(mask: np.ndarray) -> np.ndarray:
        """Physical coordinates (mm) of the voxels with a background face-neighbour (or the border)."""
        padded = np.pad(mask, 1)
        inner = np.ones_like(mask)
        for axis in range(mask.ndim):
            for step in (-1, 1):
                inner &= np.roll(padded, step, axis=axis)[tuple(slice(1, -1) for _ in mask.shape)]
        return np.argwhere(mask & ~inner) * np.asarray(spacing)

    d = cdist(surface(pred), surface(truth))
    if pooled:
        return float(np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), 95))
    return float(max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95)))


@pytest.mark.parametrize(
    ("shape", "spacing", "seed"),
    [((64, 80), (1.0, 1.0), 0), ((64, 80), (0.7, 1.6), 1), ((26, 30, 22), (1.0, 1.0, 1.0), 2),
     ((26, 30, 22), (0.9, 1.2, 2.5), 3)],
)
def test_dice_and_hd95_match_monai(shape: tuple[int, ...], spacing: tuple[float, ...], seed: int) -> None:
    """Random smooth blobs, 2-D and 3-D, isotropic and anisotropic spacing."""
    pred, truth = blob(shape, seed), blob(shape, seed + 100, level=0.65)
    expected_dice = float(compute_dice(torch.from_numpy(pred)[None, None].float(),
                                       torch.from_numpy(truth)[None, None].float(), include_background=True))
    assert dice(pred, truth) == pytest.approx(expected_dice, rel=1e-6)
    got = hd95(pred, truth, spacing)
    assert got == pytest.approx(monai_hd95(pred, truth, spacing), rel=1e-5)
    assert got == pytest.approx(brute_hd95(pred, truth, spacing), rel=1e-12)


def test_hd95_on_speckle_masks_touching_the_border() -> None:
    """Salt-and-pepper masks whose voxels touch the image border (erosion border handling)."""
    rng = np.random.default_rng(4)
    pred, truth = rng.uniform(size=(30, 34)) > 0.8, rng.uniform(size=(30, 34)) > 0.85
    assert hd95(pred, truth, (1.0, 2.0)) == pytest.approx(monai_hd95(pred, truth, (1.0, 2.0)), rel=1e-5)


def test_hd95_hand_made_shift() -> None:
    """Two 10x10 squares, one shifted 4 pixels along x (0.5 mm pixels): each surface pixel is <= 2 mm away,
    and more than 5 % of them (the two shifted edges, 10 of 36 per square) are exactly 2 mm away."""
    a = np.zeros((30, 30), bool)
    b = np.zeros((30, 30), bool)
    a[10:20, 5:15] = True
    b[10:20, 9:19] = True
    assert hd95(a, b, (1.0, 0.5)) == pytest.approx(2.0)
    assert hd95(a, b) == pytest.approx(4.0)
    assert hd95(a, a, (0.3, 0.3)) == 0.0
    empty = np.zeros_like(a)
    assert hd95(empty, empty) == 0.0 and dice(empty, empty) == 1.0
    assert hd95(a, empty, (1.0, 0.5)) == pytest.approx(math.hypot(30, 15)) == hd95(empty, a, (1.0, 0.5))
    assert dice(a, empty) == 0.0 == dice(empty, a)


def test_hd95_is_max_of_directed_percentiles_not_pooled() -> None:
    """A far outlier component in the prediction: MONAI/BraTS keep the larger directed P95 (MedPy pools)."""
    truth = np.zeros((60, 60), bool)
    truth[10:40, 10:40] = True
    pred = truth.copy()
    pred[50:53, 50:53] = True
    got = hd95(pred, truth)
    assert got == pytest.approx(monai_hd95(pred, truth, (1.0, 1.0)), rel=1e-5)
    assert got == pytest.approx(brute_hd95(pred, truth, (1.0, 1.0)), rel=1e-12)
    # The 8 outlier surface pixels are 6.5 % of the prediction's 124, so its directed P95 lands on them
    # (>= 11 * sqrt(2) = 15.56 px away), while they are only 3.5 % of the pooled 240 distances.
    assert got > 11 * math.sqrt(2)
    assert brute_hd95(pred, truth, (1.0, 1.0), pooled=True) == 0.0


def test_brats_empty_mask_rules() -> None:
    """Both empty: Dice 1, HD95 0; one empty: Dice 0, HD95 = the image diagonal (373.13 mm for BraTS)."""
    empty = np.zeros((240, 240, 155), np.uint8)
    tumour = empty.copy()
    tumour[100:110, 100:120, 70:80] = 2
    tumour[103:106, 105:110, 72:76] = 3
    both = segmentation_metrics(empty, empty)
    for region in REGIONS:
        assert both[region] == {"dice": 1.0, "hd95": 0.0, "sensitivity": 1.0, "specificity": 1.0}
    diag = math.sqrt(240**2 + 240**2 + 155**2)
    assert diag == pytest.approx(373.13, abs=5e-3)
    missed = segmentation_metrics(empty, tumour)
    spurious = segmentation_metrics(tumour, empty)
    for region in ("WT", "TC", "ET"):
        assert missed[region]["dice"] == 0.0 and spurious[region]["dice"] == 0.0
        assert missed[region]["hd95"] == pytest.approx(diag) and spurious[region]["hd95"] == pytest.approx(diag)
    assert missed["WT"]["sensitivity"] == 0.0 and spurious["WT"]["sensitivity"] == 1.0
    assert spurious["WT"]["specificity"] == pytest.approx(1 - 2000 / (240 * 240 * 155))
    slice_empty = segmentation_metrics(tumour[:, :, 75], empty[:, :, 75], spacing=(1.0, 2.0))
    assert slice_empty["WT"]["hd95"] == pytest.approx(math.hypot(240, 480))
    assert image_diagonal((240, 240)) == pytest.approx(240 * math.sqrt(2))


def test_sensitivity_specificity_hand_worked() -> None:
    """4x4 case: truth 4 pixels, prediction 5 pixels of which 3 hit: TP 3, FN 1, FP 2, TN 10."""
    truth = np.zeros((4, 4), bool)
    truth[0, :4] = True
    pred = np.zeros((4, 4), bool)
    pred[0, :3] = True
    pred[2, 1:3] = True
    assert sensitivity(pred, truth) == pytest.approx(3 / 4)
    assert specificity(pred, truth) == pytest.approx(10 / 12)
    assert dice(pred, truth) == pytest.approx(2 * 3 / 9)
    assert specificity(pred, np.ones((4, 4), bool)) == 1.0


def test_regions_follow_the_conventions() -> None:
    """WT/TC/ET per the canonical labels: per-region numbers equal the metrics of region_masks' masks."""
    rng = np.random.default_rng(5)
    truth = rng.integers(0, 4, size=(48, 40, 12)).astype(np.uint8)
    pred = np.where(rng.uniform(size=truth.shape) < 0.2, rng.integers(0, 4, size=truth.shape), truth)
    got = segmentation_metrics(pred, truth, spacing=(1.0, 1.0, 2.0))
    pm, tm = region_masks(pred), region_masks(truth)
    for region in REGIONS:
        assert got[region]["dice"] == pytest.approx(dice(pm[region], tm[region]))
        assert got[region]["hd95"] == pytest.approx(monai_hd95(pm[region], tm[region], (1.0, 1.0, 2.0)), rel=1e-5)
        tp = np.count_nonzero(pm[region] & tm[region])
        assert got[region]["sensitivity"] == pytest.approx(tp / np.count_nonzero(tm[region]))
    avg = average_segmentation_metrics([got, segmentation_metrics(truth, truth)])
    assert avg["ET"]["dice"] == pytest.approx((got["ET"]["dice"] + 1.0) / 2)
    assert avg["ET"]["hd95"] == pytest.approx(got["ET"]["hd95"] / 2)


def test_bad_labels_and_shapes_are_rejected() -> None:
    """Values outside {0,1,2,3}, non-integer floats, shape mismatch, wrong rank, bad spacing."""
    ok = np.zeros((8, 8), np.uint8)
    bad = ok.copy()
    bad[2, 2] = 4
    with pytest.raises(DataError, match=r"prediction.*\[4\]"):
        segmentation_metrics(bad, ok)
    with pytest.raises(DataError, match=r"truth.*\[-1\]"):
        segmentation_metrics(ok, ok.astype(np.int16) - np.eye(8, dtype=np.int16))
    with pytest.raises(DataError, match="non-integer"):
        segmentation_metrics(ok + 0.5, ok)
    with pytest.raises(DataError, match="shape"):
        segmentation_metrics(ok, np.zeros((8, 9), np.uint8))
    with pytest.raises(DataError, match="2-D or 3-D"):
        segmentation_metrics(ok[0], ok[0])
    with pytest.raises(ConfigError, match="spacing"):
        segmentation_metrics(ok, ok, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match="spacing"):
        segmentation_metrics(ok, ok, spacing=(1.0, 0.0))
    assert segmentation_metrics(ok.astype(float), ok)["WT"]["dice"] == 1.0
