"""The BraTS scoring conventions (fuse4seg.metrics.conventions, lesions, surfaces) against independent computations.

References: DeepMind's surface-distance package (brats2023 HD95), a plain lesion-by-lesion transcription of
the 2023-24 challenge algorithm (tests/_scoring_refs.py), panoptica with brats-evaluation's 2025 settings
(brats2025), brute-force all-pairs distances, and hand-worked cases on 40^3 volumes.
"""

from __future__ import annotations

import numpy as np
import pytest
from _scoring_refs import REGIONS, brats2023_reference, panoptica_evaluator, panoptica_scores, random_case
from scipy import ndimage

from fuse4seg.errors import ConfigError, DataError
from fuse4seg.metrics import segmentation_metrics
from fuse4seg.metrics.conventions import brats2023_region, brats2025_region
from fuse4seg.metrics.lesions import cluster_pieces, match_lesions
from fuse4seg.metrics.surfaces import pooled_hd95, surfel_areas, surfel_hd95

SHAPE = (40, 40, 40)
ISO = (1.0, 1.0, 1.0)
ANISO = (1.0, 0.8, 1.5)


def box(*ranges: tuple[int, int]) -> np.ndarray:
    """A 40^3 boolean mask that is True on the box [x0, x1) x [y0, y1) x [z0, z1)."""
    mask = np.zeros(SHAPE, bool)
    mask[tuple(slice(a, b) for a, b in ranges)] = True
    return mask


def close(a: float, b: float, tol: float = 1e-4) -> bool:
    """Equal within ``tol``, NaN equal to NaN."""
    return (np.isnan(a) and np.isnan(b)) or abs(a - b) <= tol


# ---- surfaces --------------------------------------------------------------------------------------------


def test_surfel_table_equals_deepmind() -> None:
    lookup = pytest.importorskip("surface_distance.lookup_tables")
    for spacing in (ISO, ANISO, (0.5, 2.0, 3.0)):
        np.testing.assert_allclose(surfel_areas(spacing),
                                   lookup.create_table_neighbour_code_to_surface_area(spacing), rtol=0, atol=1e-12)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("spacing", [ISO, ANISO])
def test_surfel_hd95_equals_deepmind(spacing: tuple[float, float, float]) -> None:
    surface_distance = pytest.importorskip("surface_distance")
    rng = np.random.default_rng(1)
    for _ in range(8):
        a = ndimage.gaussian_filter(rng.random((30, 30, 30)), 2.5) > 0.52
        b = ndimage.gaussian_filter(rng.random((30, 30, 30)), 2.5) > 0.52
        if not (a.any() and b.any()):
            continue
        ref = surface_distance.compute_robust_hausdorff(surface_distance.compute_surface_distances(a, b, spacing), 95)
        assert surfel_hd95(a, b, spacing) == pytest.approx(ref, abs=1e-4)


def test_empty_masks_give_inf() -> None:
    cube = box((5, 9), (5, 9), (5, 9))
    empty = np.zeros(SHAPE, bool)
    for fn in (surfel_hd95, pooled_hd95):
        assert fn(cube, empty, ISO) == np.inf and fn(empty, cube, ISO) == np.inf and fn(empty, empty, ISO) == np.inf


def test_pooled_hd95_equals_brute_force() -> None:
    rng = np.random.default_rng(2)
    a = ndimage.gaussian_filter(rng.random((16, 16, 16)), 2) > 0.52
    b = ndimage.gaussian_filter(rng.random((16, 16, 16)), 2) > 0.52

    def surface_points(m: np.ndarray) -> np.ndarray:
        """Coordinates in mm of voxels with a face neighbour outside the mask (or outside the image)."""
        padded = np.pad(m, 1)
        inner = padded[1:-1, 1:-1, 1:-1]
        for axis in range(3):
            for step in (-1, 1):
                inner = inner & np.roll(padded, step, axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(m & ~inner) * np.asarray(ANISO)

    pa, pb = surface_points(a), surface_points(b)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    expected = np.percentile(np.concatenate((d.min(1), d.min(0))), 95)
    assert pooled_hd95(a, b, ANISO) == pytest.approx(expected, abs=1e-9)


# ---- brats2023: hand-worked ------------------------------------------------------------------------------

A = box((5, 9), (5, 9), (5, 9))            # 64 voxels
B = box((14, 18), (5, 9), (5, 9))          # 64 voxels, 5 voxels from A along x


def test_dilation_merges_lesions_within_reach() -> None:
    truth = A | B
    # GLI (3 dilations): A and B are one lesion; a prediction of A alone is grouped with it.
    gli = brats2023_region(A, truth, ISO, "gli")
    assert (gli["tp"], gli["fp"], gli["fn"]) == (1, 0, 0)
    assert gli["lesion_dice"] == pytest.approx(2 * 64 / (128 + 64))
    # MEN (1 dilation): two lesions; B is missed (Dice 0, HD95 374).
    men = brats2023_region(A, truth, ISO, "men")
    assert (men["tp"], men["fp"], men["fn"]) == (1, 0, 1)
    assert men["lesion_dice"] == pytest.approx(0.5) and men["lesion_hd95"] == pytest.approx(374 / 2)
    # A perfect prediction scores 1 / 0 either way.
    for challenge in ("gli", "men"):
        perfect = brats2023_region(truth, truth, ISO, challenge)
        assert perfect["lesion_dice"] == 1.0 and perfect["lesion_hd95"] == 0.0


def test_far_false_positive() -> None:
    far = box((30, 32), (30, 32), (30, 32))
    out = brats2023_region(A | far, A, ISO, "gli")
    assert (out["tp"], out["fp"], out["fn"]) == (1, 1, 0)
    assert out["lesion_dice"] == pytest.approx(0.5) and out["lesion_hd95"] == pytest.approx(187.0)
    assert out["dice"] == pytest.approx(2 * 64 / (64 + 72))


def test_volume_threshold() -> None:
    fifty = box((5, 10), (5, 10), (5, 7))                  # 50 voxels = 50 mm^3: not over 50, dropped
    fifty_one = fifty | box((10, 11), (5, 6), (5, 6))      # 51 voxels: kept
    empty = np.zeros(SHAPE, bool)
    dropped = brats2023_region(empty, fifty, ISO, "gli")
    assert (dropped["lesion_dice"], dropped["lesion_hd95"], dropped["fn"]) == (1.0, 0.0, 0)
    assert (dropped["dice"], dropped["hd95"]) == (0.0, 374.0)
    kept = brats2023_region(empty, fifty_one, ISO, "gli")
    assert (kept["lesion_dice"], kept["lesion_hd95"], kept["fn"]) == (0.0, 374.0, 1)
    # MET's threshold is 2 mm^3; anisotropic voxels count in mm^3 (26 voxels of 2 mm^3 = 52 > 50).
    assert brats2023_region(empty, fifty, ISO, "met")["fn"] == 1
    assert brats2023_region(empty, box((5, 31), (5, 6), (5, 6)), (1.0, 1.0, 2.0), "gli")["fn"] == 1
    # A component that touches only a dropped lesion is not a false positive.
    touching = brats2023_region(fifty, fifty, ISO, "gli")
    assert (touching["tp"], touching["fp"], touching["fn"], touching["lesion_dice"]) == (0, 0, 0, 1.0)


def test_empty_masks_2023() -> None:
    empty = np.zeros(SHAPE, bool)
    both = brats2023_region(empty, empty, ISO, "gli")
    assert both == {"dice": 1.0, "hd95": 0.0, "sensitivity": 1.0, "specificity": 1.0, "lesion_dice": 1.0,
                    "lesion_hd95": 0.0, "tp": 0, "fp": 0, "fn": 0}
    fp_only = brats2023_region(A | B, empty, ISO, "gli")
    assert (fp_only["dice"], fp_only["hd95"], fp_only["sensitivity"]) == (0.0, 374.0, 0.0)
    assert (fp_only["lesion_dice"], fp_only["lesion_hd95"], fp_only["fp"]) == (0.0, 374.0, 2)


# ---- brats2023 against the lesion-by-lesion reference --------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("seed,spacing,challenge", [(0, ISO, "gli"), (1, ANISO, "gli"), (2, ISO, "met"),
                                                     (3, ANISO, "men")])
def test_brats2023_equals_reference(seed: int, spacing: tuple[float, float, float], challenge: str) -> None:
    pytest.importorskip("surface_distance")
    settings = {"gli": (3, 50.0), "met": (1, 2.0), "men": (1, 50.0)}[challenge]
    pred, truth = random_case(seed)
    ours = segmentation_metrics(pred, truth, spacing, convention="brats2023", challenge=challenge)
    for region, labels in REGIONS.items():
        ref = brats2023_reference(np.isin(pred, labels), np.isin(truth, labels), spacing, *settings)
        for key, value in ref.items():
            assert close(ours[region][key], value), (region, key, ours[region][key], value)
    wt = ours["WT"]
    assert wt["tp"] >= 1 and wt["fp"] >= 1 and wt["tp"] + wt["fp"] + wt["fn"] > 5  # many lesions, merged and not


# ---- brats2025 ----------------------------------------------------------------------------------------------


def test_matching_maximises_total_dice() -> None:
    # Truth lesions RA, RB; predicted PX (overlaps both) and PY (overlaps RA only). Dice: RA-PX 0.5,
    # RA-PY 0.4, RB-PX 0.133. Taking the best pair first (RA-PX) would leave RB and PY unmatched;
    # panoptica's maximum bipartite matching takes RA-PY and RB-PX (total 0.533 > 0.5).
    ra, rb = box((5, 15), (5, 9), (5, 6)), box((17, 35), (5, 7), (5, 6))
    px, py = box((7, 19), (5, 7), (5, 6)), box((5, 15), (8, 9), (5, 6))
    ref, n_ref = ndimage.label(ra | rb)
    pred, n_pred = ndimage.label(px | py)
    rows, cols, dsc = match_lesions(ref, n_ref, pred, n_pred)
    pairs = {(ref[ra][0], pred[py][0]): 0.4, (ref[rb][0], pred[px][0]): 8 / 60}
    assert {(int(r), int(c)): d for r, c, d in zip(rows, cols, dsc)} == pytest.approx(pairs)
    out = brats2025_region(px | py, ra | rb, ISO)
    assert (out["tp"], out["fp"], out["fn"], out["f1"]) == (2, 0, 0, 1.0)
    assert out["lesion_dice"] == pytest.approx((0.4 + 8 / 60) / 2)


def test_empty_and_disjoint_2025() -> None:
    empty = np.zeros(SHAPE, bool)
    far = box((30, 34), (30, 34), (30, 34))
    both = brats2025_region(empty, empty, ISO)
    assert all(np.isnan(both[k]) for k in ("dice", "hd95", "lesion_dice", "lesion_hd95", "f1"))
    assert (both["tp"], both["fp"], both["fn"]) == (0, 0, 0)
    disjoint = brats2025_region(far, A, ISO)
    assert disjoint == {"dice": 0.0, "hd95": 373.0, "lesion_dice": 0.0, "lesion_hd95": 373.0, "tp": 0, "fp": 1,
                        "fn": 1, "f1": 0.0}
    fp_only = brats2025_region(A | far, empty, ISO)
    assert (fp_only["dice"], fp_only["hd95"], fp_only["lesion_hd95"], fp_only["fp"], fp_only["f1"]) == (
        0.0, 373.0, 373.0, 2, 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_brats2025_equals_panoptica(seed: int) -> None:
    pytest.importorskip("panoptica")
    pred, truth = random_case(seed)
    ours = segmentation_metrics(pred, truth, ISO, convention="brats2025")
    ref = panoptica_scores(panoptica_evaluator(), pred, truth, ISO)
    for region in REGIONS:
        for key, value in ref[region].items():
            assert close(ours[region][key], value), (region, key, ours[region][key], value)


def test_brats2025_anisotropic_against_panoptica() -> None:
    # panoptica passes the voxel spacing to the lesion-wise metrics but not to the global HD95 (voxel units);
    # fuse4seg's global HD95 is in mm. At BraTS's 1 mm they agree (test above).
    pytest.importorskip("panoptica")
    pred, truth = random_case(4)
    ours = segmentation_metrics(pred, truth, ANISO, convention="brats2025")
    unit = segmentation_metrics(pred, truth, ISO, convention="brats2025")
    ref = panoptica_scores(panoptica_evaluator(), pred, truth, ANISO)
    for region in REGIONS:
        for key in ("dice", "lesion_dice", "lesion_hd95", "tp", "fp", "fn", "f1"):
            assert close(ours[region][key], ref[region][key]), (region, key)
        assert close(unit[region]["hd95"], ref[region]["hd95"])


def test_empty_label_maps_both_empty() -> None:
    zeros = np.zeros((12, 12, 12), np.uint8)
    out = segmentation_metrics(zeros, zeros, convention="brats2025")
    assert all(np.isnan(out[r]["dice"]) for r in REGIONS)
    out = segmentation_metrics(zeros, zeros, convention="brats2023")
    assert all(out[r]["dice"] == 1.0 and out[r]["lesion_dice"] == 1.0 for r in REGIONS)


# ---- pieces: far-apart lesions are scored crop by crop ----------------------------------------------------------


def spread_case() -> tuple[np.ndarray, np.ndarray]:
    """(pred, truth) 64 x 64 x 40 label maps: an L-shaped tumour whose box holds a far satellite (another piece),
    a lesion at the volume's corner, a missed lesion and far false positives."""
    truth = np.zeros((64, 64, 40), np.uint8)
    truth[2:60, 2:9, 10:17] = 2
    truth[2:9, 2:60, 10:17] = 2
    truth[3:40, 4:7, 12:15] = 3
    truth[40:47, 40:47, 20:27] = 2      # satellite inside the L's box, 30 voxels from it
    truth[42:45, 42:45, 22:25] = 1
    truth[57:64, 57:64, 33:40] = 3      # at the volume's corner
    truth[20:24, 40:44, 30:34] = 3      # missed by the prediction
    pred = np.zeros_like(truth)
    pred[1:, :-1, 1:] = truth[:-1, 1:, :-1]   # shifted by (1, -1, 1)
    pred[21:25, 39:43, 31:35] = 0
    pred[57:64, 57:64, 33:40] = truth[57:64, 57:64, 33:40]
    pred[30:33, 20:23, 2:5] = 2         # false positives
    pred[50:52, 10:12, 30:33] = 3
    return pred, truth


def test_cluster_pieces_partition_the_volume() -> None:
    pred, truth = spread_case()
    occupied = (pred != 0) | (truth != 0)
    pieces = cluster_pieces(occupied)
    assert len(pieces) >= 3 and any(piece.foreign is not None for piece in pieces)
    assert sum(int(np.count_nonzero(piece.take(occupied))) for piece in pieces) == int(np.count_nonzero(occupied))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("challenge", ["gli", "met"])
def test_spread_case_equals_references(challenge: str) -> None:
    pytest.importorskip("surface_distance")
    pred, truth = spread_case()
    ours = segmentation_metrics(pred, truth, ANISO, convention="brats2023", challenge=challenge)
    settings = {"gli": (3, 50.0), "met": (1, 2.0)}[challenge]
    for region, labels in REGIONS.items():
        ref = brats2023_reference(np.isin(pred, labels), np.isin(truth, labels), ANISO, *settings)
        for key, value in ref.items():
            assert close(ours[region][key], value), (region, key, ours[region][key], value)
    assert ours["ET"]["fn"] == 1 and ours["ET"]["fp"] == 1 and ours["WT"]["fp"] == 2


def test_spread_case_equals_panoptica() -> None:
    pytest.importorskip("panoptica")
    pred, truth = spread_case()
    ours = segmentation_metrics(pred, truth, ISO, convention="brats2025")
    ref = panoptica_scores(panoptica_evaluator(), pred, truth, ISO)
    for region in REGIONS:
        for key, value in ref[region].items():
            assert close(ours[region][key], value), (region, key, ours[region][key], value)


# ---- segmentation_metrics: convention argument ---------------------------------------------------------------


def test_monai_default_unchanged() -> None:
    pred, truth = random_case(5, (24, 24, 24))
    assert segmentation_metrics(pred, truth, ANISO) == segmentation_metrics(pred, truth, ANISO, convention="monai")
    assert segmentation_metrics(pred[..., 5], truth[..., 5], convention="MONAI")["WT"].keys() == {
        "dice", "hd95", "sensitivity", "specificity"}


def test_convention_errors() -> None:
    pred, truth = random_case(6, (12, 12, 12))
    with pytest.raises(ConfigError) as info:
        segmentation_metrics(pred, truth, convention="brats2019")
    assert info.value.option == "convention"
    with pytest.raises(ConfigError) as info:
        segmentation_metrics(pred, truth, convention="brats2023", challenge="xyz")
    assert info.value.option == "challenge"
    with pytest.raises(DataError, match="3-D"):
        segmentation_metrics(pred[..., 0], truth[..., 0], convention="brats2025")
