"""Fusion metrics against independent computations: skimage SSIM, sklearn MI, direct formulas, and a
plain 2-D ``scipy.signal.convolve2d`` transcription of the MMIF (CDDFuse) VIF and Qabf definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.signal import convolve2d
from skimage.metrics import structural_similarity
from sklearn.metrics import mutual_info_score

from fuse4seg.errors import ConfigError, DataError
from fuse4seg.metrics import FUSION_METRIC_NAMES, average_fusion_metrics, fusion_metrics
from fuse4seg.metrics.fusion_stats import mutual_information_pair
from fuse4seg.metrics.fusion_structure import qabf, sobel_strength_angle, vif_per_source


def make_pair(seed: int, size: tuple[int, int] = (64, 72)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic integer-valued (fused, a, b) on the 0-255 scale: textures plus seeded noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: size[0], : size[1]].astype(np.float64)
    a = 120 + 70 * np.sin(x / (5.0 + seed)) * np.cos(y / 7.0) + rng.normal(0, 8, size)
    b = 60 + 1.5 * x + 40 * (((x - size[1] / 2) ** 2 + (y - size[0] / 2) ** 2) < 200) + rng.normal(0, 4, size)
    a, b = np.clip(np.round(a), 0, 255), np.clip(np.round(b), 0, 255)
    f = np.clip(np.round(0.6 * np.maximum(a, b) + 0.4 * (a + b) / 2), 0, 255)
    return f, a, b


# ---- independent reference implementations (direct formulas, 2-D convolutions, as the MMIF papers) ----

def ref_entropy(img: np.ndarray) -> float:
    """Entropy in bits via np.histogram with 256 unit bins centred on the integers."""
    hist, _ = np.histogram(np.round(img), bins=256, range=(-0.5, 255.5))
    p = hist / hist.sum()
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def ref_sf(img: np.ndarray) -> float:
    """Spatial frequency from row/column sums of squared neighbour differences (column by column)."""
    rf2 = sum(((img[:, j + 1] - img[:, j]) ** 2).sum() for j in range(img.shape[1] - 1)) / (img.shape[0] * (img.shape[1] - 1))
    cf2 = sum(((img[i + 1] - img[i]) ** 2).sum() for i in range(img.shape[0] - 1)) / ((img.shape[0] - 1) * img.shape[1])
    return math.sqrt(rf2 + cf2)


def ref_ag(img: np.ndarray) -> float:
    """Average gradient with hand-written central / one-sided differences."""
    gx = np.empty_like(img)
    gy = np.empty_like(img)
    gx[:, 1:-1] = (img[:, 2:] - img[:, :-2]) / 2
    gx[:, 0], gx[:, -1] = img[:, 1] - img[:, 0], img[:, -1] - img[:, -2]
    gy[1:-1] = (img[2:] - img[:-2]) / 2
    gy[0], gy[-1] = img[1] - img[0], img[-1] - img[-2]
    return float(np.mean(np.sqrt((gx**2 + gy**2) / 2)))


def ref_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation via np.corrcoef."""
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def ref_vif(ref: np.ndarray, dist: np.ndarray) -> float:
    """Pixel-domain VIF with full 2-D Gaussian windows (MATLAB vifvec style), non-separable convolve2d."""
    num = den = 0.0
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        m = (n - 1) / 2
        yy, xx = np.ogrid[-m : m + 1, -m : m + 1]
        win = np.exp(-(xx * xx + yy * yy) / (2 * (n / 5) ** 2))
        win /= win.sum()
        if scale > 1:
            ref = convolve2d(ref, win, mode="valid")[::2, ::2]
            dist = convolve2d(dist, win, mode="valid")[::2, ::2]
        mu1, mu2 = convolve2d(ref, win, mode="valid"), convolve2d(dist, win, mode="valid")
        s1 = np.maximum(convolve2d(ref * ref, win, mode="valid") - mu1**2, 0)
        s2 = np.maximum(convolve2d(dist * dist, win, mode="valid") - mu2**2, 0)
        s12 = convolve2d(ref * dist, win, mode="valid") - mu1 * mu2
        g = s12 / (s1 + 1e-10)
        sv = s2 - g * s12
        g[s1 < 1e-10], sv[s1 < 1e-10] = 0, s2[s1 < 1e-10]
        s1[s1 < 1e-10] = 0
        g[s2 < 1e-10], sv[s2 < 1e-10] = 0, 0
        sv[g < 0] = s2[g < 0]
        g[g < 0] = 0
        sv[sv <= 1e-10] = 1e-10
        num += np.log10(1 + g * g * s1 / (sv + 2)).sum()
        den += np.log10(1 + s1 / 2).sum()
    return 1.0 if den == 0 else float(num / den)


def ref_qabf(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Xydeas-Petrovic Qabf, zero-padded 'same' Sobel convolutions, relative strength g_F when equal."""
    h_y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], float)
    h_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)

    def arrays(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sobel strength and orientation of one image."""
        sx, sy = convolve2d(img, h_x, mode="same"), convolve2d(img, h_y, mode="same")
        ang = np.full(img.shape, math.pi / 2)
        nz = sx != 0
        ang[nz] = np.arctan(sy[nz] / sx[nz])
        return np.hypot(sx, sy), ang

    def q(g_s: np.ndarray, a_s: np.ndarray, g_f: np.ndarray, a_f: np.ndarray) -> np.ndarray:
        """Per-pixel edge preservation of a source in the fused image."""
        rel = np.zeros_like(g_s)
        gt, eq, lt = g_s > g_f, g_s == g_f, g_s < g_f
        rel[gt], rel[eq], rel[lt] = g_f[gt] / g_s[gt], g_f[eq], g_s[lt] / g_f[lt]
        dang = 1 - np.abs(a_s - a_f) / (math.pi / 2)
        return 0.9994 / (1 + np.exp(-15 * (rel - 0.5))) * 0.9879 / (1 + np.exp(-22 * (dang - 0.8)))

    (ga, aa), (gb, ab), (gf, af) = arrays(a), arrays(b), arrays(f)
    return float((q(ga, aa, gf, af) * ga + q(gb, ab, gf, af) * gb).sum() / (ga + gb).sum())


# ---- the tests ----

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_simple_metrics_match_direct_formulas(seed: int) -> None:
    """EN, SD, SF, AG, SCD, CC, PSNR against the formulas written above."""
    f, a, b = make_pair(seed)
    m = fusion_metrics(f, [a, b])
    assert tuple(m) == FUSION_METRIC_NAMES
    assert m["EN"] == pytest.approx(ref_entropy(f), abs=1e-12)
    assert m["SD"] == pytest.approx(math.sqrt(((f - f.mean()) ** 2).sum() / f.size), rel=1e-12)
    assert m["SF"] == pytest.approx(ref_sf(f), rel=1e-12)
    assert m["AG"] == pytest.approx(ref_ag(f), rel=1e-12)
    assert m["SCD"] == pytest.approx(ref_corr(a, f - b) + ref_corr(b, f - a), rel=1e-10)
    assert m["CC"] == pytest.approx((ref_corr(a, f) + ref_corr(b, f)) / 2, rel=1e-10)
    mse = (((f - a) ** 2).mean() + ((f - b) ** 2).mean()) / 2
    assert m["PSNR"] == pytest.approx(10 * math.log10(f.max() ** 2 / mse), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 3])
def test_mi_matches_sklearn_in_nats(seed: int) -> None:
    """MI = sklearn mutual_info_score(F, A) + (F, B), natural log, one label per integer intensity."""
    f, a, b = make_pair(seed)
    expected = mutual_info_score(f.ravel(), a.ravel()) + mutual_info_score(f.ravel(), b.ravel())
    assert fusion_metrics(f, [a, b])["MI"] == pytest.approx(expected, rel=1e-10)


def test_mi_hand_worked() -> None:
    """Independent ramps (every (row, column) level pair once): MI 0; an image with itself: MI = its entropy."""
    ramp = np.tile(np.arange(64.0) * 4, (64, 1))
    assert mutual_information_pair(ramp, ramp.T) == 0.0
    assert mutual_information_pair(ramp, ramp) == pytest.approx(math.log(64), rel=1e-12)


def test_mi_rounds_float_images_instead_of_one_bin_per_float() -> None:
    """Sub-integer jitter on F leaves MI unchanged (rounded bins, the documented deviation)."""
    f, a, b = make_pair(4)
    jitter = np.random.default_rng(9).uniform(-0.3, 0.3, f.shape)
    assert fusion_metrics(f + jitter, [a, b])["MI"] == pytest.approx(fusion_metrics(f, [a, b])["MI"], rel=1e-12)


@pytest.mark.parametrize("data_range", [255.0, 2.0])
def test_ssim_matches_skimage_uniform_window(data_range: float) -> None:
    """SSIM sum = skimage structural_similarity(win_size=7, uniform, sample covariance) per source."""
    f, a, b = make_pair(5)
    expected = sum(structural_similarity(f, s, win_size=7, data_range=data_range, gaussian_weights=False,
                                         use_sample_covariance=True, K1=0.01, K2=0.03) for s in (a, b))
    assert fusion_metrics(f, [a, b], data_range=data_range)["SSIM"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 6])
def test_vif_matches_two_dimensional_transcription(seed: int) -> None:
    """Separable VIF equals the full 2-D convolve2d VIF per source."""
    f, a, b = make_pair(seed, size=(70, 90))
    got = vif_per_source(f, np.stack([a, b]))
    np.testing.assert_allclose(got, [ref_vif(a, f), ref_vif(b, f)], rtol=1e-9)


def test_vif_properties() -> None:
    """VIF(A, A) = 1 per source; falls with noise; > 1 for contrast stretch; constant source -> 1."""
    _, a, _ = make_pair(7)
    # An image against itself: g = 1, residual variance clamps to eps, so VIF = 1 per source.
    assert fusion_metrics(a, [a, a])["VIF"] == pytest.approx(2.0, abs=1e-8)
    noisy = [a + np.random.default_rng(s).normal(0, sd, a.shape) for s, sd in ((1, 5.0), (2, 20.0))]
    v = [vif_per_source(img, a[None])[0] for img in noisy]
    assert 1.0 > v[0] > v[1] > 0.0
    # A linear contrast stretch gains information in VIF's model (g > 1, sigma_v ~ 0): VIF > 1.
    assert vif_per_source(1.5 * a, a[None])[0] > 1.0
    # Reference quirk kept: a constant source makes 0/0, reported as 1.
    assert vif_per_source(a, np.full((1,) + a.shape, 80.0))[0] == 1.0


def test_sobel_arrays_match_convolve2d() -> None:
    """Sobel strength and orientation equal zero-padded convolve2d 'same' responses."""
    _, a, _ = make_pair(8)
    strength, angle = sobel_strength_angle(a[None])
    sx = convolve2d(a, np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]), mode="same")
    sy = convolve2d(a, np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]]), mode="same")
    np.testing.assert_allclose(strength[0], np.hypot(sx, sy), atol=1e-9)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.testing.assert_allclose(angle[0], np.where(sx == 0, math.pi / 2, np.arctan(sy / sx)), atol=1e-12)


@pytest.mark.parametrize("seed", [0, 9])
def test_qabf_matches_transcription(seed: int) -> None:
    """Qabf equals the convolve2d transcription of the Xydeas-Petrovic formula."""
    f, a, b = make_pair(seed)
    assert qabf(f, np.stack([a, b])) == pytest.approx(ref_qabf(f, a, b), rel=1e-10)


def test_qabf_hand_worked_source_with_itself() -> None:
    """Qabf(A; A, A) and Qabf(A; A, 0) in closed form."""
    # Integer steps of >= 10 grey levels: every non-zero Sobel strength is >= 10, so equal strengths give
    # Q_g = 0.9994 / (1 + exp(-15 (g - 0.5))) = 0.9994 to double precision (the "relative strength = g_F"
    # quirk), equal angles give Q_a = 0.9879 / (1 + exp(-22 * 0.2)); the weights cancel.
    img = np.zeros((48, 48))
    img[10:30, 12:40] = 100.0
    img[20:44, 5:18] = 30.0
    expected = 0.9994 * 0.9879 / (1 + math.exp(-4.4))
    assert qabf(img, np.stack([img, img])) == pytest.approx(expected, rel=1e-12)
    assert fusion_metrics(img, [img, np.zeros_like(img)])["Qabf"] == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.975333, abs=1e-6)


def test_qabf_hand_worked_contrast_doubling() -> None:
    """F = 2A: every edge has relative strength g_A / g_F = 1/2 (Q_g = 0.9994 / 2), same orientation."""
    img = np.zeros((48, 48))
    img[10:30, 12:40] = 100.0
    img[20:44, 5:18] = 30.0
    expected = 0.9994 / 2 * 0.9879 / (1 + math.exp(-4.4))
    assert qabf(2 * img, np.stack([img, img])) == pytest.approx(expected, rel=1e-12)


def test_input_types_and_quantisation() -> None:
    """uint8 / float32 / (C, H, W) inputs give the float64 numbers; quantise=True undoes sub-integer jitter."""
    f, a, b = make_pair(15)
    ref = fusion_metrics(f, [a, b])
    for got in (fusion_metrics(f.astype(np.uint8), [a.astype(np.uint8), b.astype(np.uint8)]),
                fusion_metrics(f.astype(np.float32), np.stack([a, b]).astype(np.float32))):
        for key in FUSION_METRIC_NAMES:
            assert got[key] == pytest.approx(ref[key], rel=1e-12), key
    jitter = np.random.default_rng(3).uniform(-0.4, 0.4, f.shape)
    assert fusion_metrics(f + jitter, [a, b], quantise=True) == pytest.approx(ref, rel=1e-12)
    assert fusion_metrics(f + jitter, [a, b])["SD"] != pytest.approx(ref["SD"], rel=1e-9)


def test_qabf_prefers_the_better_fusion() -> None:
    """A real fusion scores higher Qabf than uniform noise; both in (0, 1)."""
    f, a, b = make_pair(10)
    noise = np.random.default_rng(0).uniform(0, 255, f.shape)
    assert 0 < fusion_metrics(noise, [a, b])["Qabf"] < fusion_metrics(f, [a, b])["Qabf"] < 1


def test_more_than_two_sources_sum_per_source() -> None:
    """Three sources: MI, SSIM, VIF per-source sums; SCD the mean over the 3 source pairs of the two-source
    SCD, written out pair by pair (before the fix: a sum of corr(S_i, F - all other sources)); CC the mean."""
    f, a, b = make_pair(11)
    c = np.clip(np.round(255 - a + 0.3 * b), 0, 255)
    m3 = fusion_metrics(f, [a, b, c])
    single = [mutual_info_score(f.ravel(), s.ravel()) for s in (a, b, c)]
    assert m3["MI"] == pytest.approx(sum(single), rel=1e-10)
    assert m3["SSIM"] == pytest.approx(sum(structural_similarity(f, s, win_size=7, data_range=255) for s in (a, b, c)),
                                       abs=1e-9)
    assert m3["VIF"] == pytest.approx(sum(ref_vif(s, f) for s in (a, b, c)), rel=1e-9)
    scd_ab = ref_corr(a, f - b) + ref_corr(b, f - a)
    scd_ac = ref_corr(a, f - c) + ref_corr(c, f - a)
    scd_bc = ref_corr(b, f - c) + ref_corr(c, f - b)
    assert m3["SCD"] == pytest.approx((scd_ab + scd_ac + scd_bc) / 3, rel=1e-10)
    assert fusion_metrics(f, [a, b])["SCD"] == pytest.approx(scd_ab, rel=1e-10)  # C = 2: the pair itself
    assert m3["CC"] == pytest.approx(np.mean([ref_corr(s, f) for s in (a, b, c)]), rel=1e-10)


def test_average_is_the_mean_of_pairs() -> None:
    """average_fusion_metrics is the per-key mean and counts the pairs."""
    pairs = [(f, [a, b]) for f, a, b in (make_pair(12), make_pair(13))]
    avg = average_fusion_metrics(pairs)
    single = [fusion_metrics(f, s) for f, s in pairs]
    assert avg["count"] == 2
    for key in FUSION_METRIC_NAMES:
        assert avg[key] == pytest.approx((single[0][key] + single[1][key]) / 2, rel=1e-12)
    with pytest.raises(DataError):
        average_fusion_metrics([])


def test_bad_input_is_rejected() -> None:
    """Wrong rank, shape mismatch, one source, NaN, too small, bad data_range."""
    f, a, b = make_pair(14)
    with pytest.raises(DataError, match="2-D"):
        fusion_metrics(f[None], [a, b])
    with pytest.raises(DataError, match="shape"):
        fusion_metrics(f, [a, b[:-1]])
    with pytest.raises(DataError, match="two source"):
        fusion_metrics(f, [a])
    with pytest.raises(DataError, match="two source"):
        fusion_metrics(f, [])
    with pytest.raises(DataError, match="two source"):
        fusion_metrics(f, a[None])
    with pytest.raises(DataError, match="NaN"):
        fusion_metrics(np.where(f > 100, np.nan, f), [a, b])
    with pytest.raises(DataError, match="41"):
        fusion_metrics(f[:30, :30], [a[:30, :30], b[:30, :30]])
    with pytest.raises(ConfigError, match="data_range"):
        fusion_metrics(f, [a, b], data_range=0)


def test_degenerate_images() -> None:
    """Constant images: zero statistics, NaN correlations, VIF 1 per constant source, PSNR inf for F = sources."""
    f, a, b = make_pair(16)
    flat = fusion_metrics(np.full_like(f, 100.0), [a, b])
    assert (flat["EN"], flat["SD"], flat["SF"], flat["AG"], flat["MI"]) == (0.0, 0.0, 0.0, 0.0, 0.0)
    assert math.copysign(1.0, flat["EN"]) == 1.0
    assert math.isnan(flat["CC"]) and math.isfinite(flat["SCD"])
    zeros = fusion_metrics(np.zeros_like(f), [np.zeros_like(a), np.zeros_like(b)])
    assert math.isnan(zeros["Qabf"]) and math.isnan(zeros["SCD"])
    assert zeros["VIF"] == 2.0 and zeros["SSIM"] == pytest.approx(2.0) and zeros["PSNR"] == math.inf


# Regression fixture. Inputs: make_pair(seed) above, 64 x 72, integer-valued. Expected values were computed
# once with the independent references in this file, not with fuse4seg: EN ref_entropy, SD np.std, SF ref_sf,
# AG ref_ag, MI sklearn mutual_info_score, SCD/CC ref_corr, PSNR the direct formula, VIF ref_vif (2-D
# convolve2d), Qabf ref_qabf (convolve2d Sobel), SSIM skimage structural_similarity(win_size=7, data_range=255).
EXPECTED = {
    0: {"EN": 6.641658645787286, "SD": 25.43482740954202, "SF": 12.27381683543224, "AG": 4.61989494408548,
        "MI": 3.144477157691939, "SCD": 1.3077086318878632, "VIF": 0.43012098329436554,
        "Qabf": 0.561377576123559, "SSIM": 1.263991486897834, "PSNR": 16.721902783909474,
        "CC": 0.6610045538432271},
    1: {"EN": 6.639603206107498, "SD": 25.433512448821297, "SF": 11.983696678925115, "AG": 4.382274000087532,
        "MI": 3.1650450284924716, "SCD": 1.3071982216019216, "VIF": 0.447122216411612,
        "Qabf": 0.5607965609504055, "SSIM": 1.2659421972387164, "PSNR": 16.59903896734502,
        "CC": 0.6577007243448929},
}


@pytest.mark.parametrize("seed", sorted(EXPECTED))
def test_regression_fixture(seed: int) -> None:
    """The literals above, to 1e-9 relative."""
    f, a, b = make_pair(seed)
    got = fusion_metrics(f, [a, b])
    assert set(EXPECTED[seed]) == set(FUSION_METRIC_NAMES)
    for key, value in EXPECTED[seed].items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
