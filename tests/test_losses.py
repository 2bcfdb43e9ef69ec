"""Losses against independent computations: skimage SSIM, scipy Sobel/Gaussian, torch CE, hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.metrics import structural_similarity

from fuse4seg.errors import ConfigError, DataError
from fuse4seg.losses import (
    DEFAULT_FUSION_WEIGHTS,
    frequency_loss,
    fusion_loss,
    gradient_loss,
    intensity_loss,
    predict_labels,
    region_targets,
    segmentation_loss,
    sobel_gradients,
    spatial_gradient_loss,
    split_bands,
    ssim,
    ssim_loss,
)


def smooth_images(n: int, c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Random smooth images (n, c, h, w) in [0, 1] (float64), MRI-like rather than white noise."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random((n, c, h, w)), (0, 0, 2, 2))
    lo, hi = x.min(axis=(2, 3), keepdims=True), x.max(axis=(2, 3), keepdims=True)
    return (x - lo) / (hi - lo)


def sobel2d(a: np.ndarray, axis: int) -> np.ndarray:
    """scipy.ndimage.sobel of every (H, W) image of an (N, C, H, W) array (axis 0 = H, 1 = W)."""
    return np.stack([[ndimage.sobel(img, axis=axis) for img in imgs] for imgs in a])


def t(a: np.ndarray) -> torch.Tensor:
    """float64 tensor from an array (exact comparisons with float64 references)."""
    return torch.tensor(a, dtype=torch.float64)


# ---- SSIM -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "skimage_kwargs"),
    [
        ("uniform", {"win_size": 7}),
        ("gaussian", {"gaussian_weights": True, "sigma": 1.5}),
    ],
)
@pytest.mark.parametrize("data_range", [1.0, 2.0])
def test_ssim_matches_skimage(window: str, skimage_kwargs: dict, data_range: float) -> None:
    """Per-image, per-channel SSIM with the uniform 7x7 and the Gaussian sigma 1.5 windows equals skimage's
    structural_similarity to 1e-10, for data ranges 1 and 2."""
    x = smooth_images(2, 2, 40, 33)
    y = 0.6 * x + 0.4 * smooth_images(2, 2, 40, 33, seed=1)
    ours = ssim(t(x), t(y), window=window, data_range=data_range).numpy()
    for i in range(2):
        for c in range(2):
            ref = structural_similarity(x[i, c], y[i, c], data_range=data_range, **skimage_kwargs)
            assert ours[i, c] == pytest.approx(ref, abs=1e-10)


def test_ssim_loss_is_mean_one_minus_ssim_over_sources() -> None:
    """ssim_loss is the mean over images and sources of 1 - skimage SSIM(fused, source) with the Gaussian window,
    and 0 when the fused image is the only source."""
    s = smooth_images(2, 2, 32, 32)
    f = smooth_images(2, 1, 32, 32, seed=5)
    expected = np.mean(
        [
            1 - structural_similarity(f[i, 0], s[i, c], data_range=1.0, gaussian_weights=True, sigma=1.5)
            for i in range(2)
            for c in range(2)
        ]
    )
    assert float(ssim_loss(t(f), t(s))) == pytest.approx(expected, abs=1e-10)
    assert float(ssim_loss(t(s[:, :1]), t(s[:, :1]))) == pytest.approx(0.0, abs=1e-12)


def test_ssim_rejects_images_smaller_than_window() -> None:
    """8x8 images are smaller than the 11x11 Gaussian window, and 'box' is not a window: each is a ConfigError
    naming the window."""
    with pytest.raises(ConfigError, match="window"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(ConfigError, match="window"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), window="box")


# ---- gradients and bands --------------------------------------------------------------------


def test_sobel_matches_scipy() -> None:
    """sobel_gradients (x along W, y along H) equal scipy.ndimage.sobel along the matching axis to 1e-12, with
    its default border (replicate here) and with zeros outside (mode="constant"); an unknown padding is refused."""
    x = smooth_images(2, 3, 21, 30)
    gx, gy = sobel_gradients(t(x))
    np.testing.assert_allclose(gx.numpy(), sobel2d(x, axis=1), atol=1e-12)
    np.testing.assert_allclose(gy.numpy(), sobel2d(x, axis=0), atol=1e-12)
    gx, gy = sobel_gradients(t(x), padding="zeros")
    for g, axis in ((gx, 1), (gy, 0)):
        zeros = np.stack([[ndimage.sobel(img, axis=axis, mode="constant") for img in imgs] for imgs in x])
        np.testing.assert_allclose(g.numpy(), zeros, atol=1e-12)
    with pytest.raises(ConfigError, match="option 'padding' must be one of replicate, zeros"):
        sobel_gradients(t(x), padding="reflect")


def test_gradient_loss_matches_scipy_formula() -> None:
    """gradient_loss is mean | |Sobel(F)|_1 - max over sources of |Sobel(S)|_1 |, recomputed with scipy."""
    s = smooth_images(2, 2, 24, 24)
    f = smooth_images(2, 1, 24, 24, seed=3)

    def mag(a: np.ndarray) -> np.ndarray:
        return np.abs(sobel2d(a, axis=1)) + np.abs(sobel2d(a, axis=0))

    expected = np.abs(mag(f) - mag(s).max(axis=1, keepdims=True)).mean()
    assert float(gradient_loss(t(f), t(s))) == pytest.approx(expected, rel=1e-12)


def test_split_bands_matches_scipy_gaussian() -> None:
    """The low band is scipy's Gaussian filter (sigma 2, nearest border, truncate 3) to 1e-6 and low + high
    restores the input."""
    x = smooth_images(1, 2, 30, 30)
    low, high = split_bands(torch.tensor(x, dtype=torch.float32), sigma=2.0)
    ref = ndimage.gaussian_filter(x, (0, 0, 2.0, 2.0), mode="nearest", truncate=3.0)
    np.testing.assert_allclose(low.numpy(), ref, atol=1e-6)
    np.testing.assert_allclose((low + high).numpy(), x, atol=1e-6)


# ---- intensity, frequency, spatial gradient ---------------------------------------------------


def test_intensity_loss_hand_worked() -> None:
    """Two 1x2 sources by hand: the max target gives 0.2, a 3:1 mix 0.2, an equal mix 0.1; a negative mix weight
    or an unknown target is a ConfigError."""
    sources = torch.tensor([[[[0.2, 0.8]], [[0.6, 0.4]]]])  # (1, 2, 1, 2)
    fused = torch.tensor([[[[0.5, 0.5]]]])
    # max target (0.6, 0.8): |0.5-0.6| + |0.5-0.8| = 0.4 over 2 pixels.
    assert float(intensity_loss(fused, sources)) == pytest.approx(0.2)
    # mix 3:1 target (0.3, 0.7): (0.2 + 0.2) / 2.
    assert float(intensity_loss(fused, sources, target="mix", mix=(3, 1))) == pytest.approx(0.2)
    # equal mix target (0.4, 0.6): (0.1 + 0.1) / 2.
    assert float(intensity_loss(fused, sources, target="mix")) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="mix"):
        intensity_loss(fused, sources, target="mix", mix=(1, -1))
    with pytest.raises(ConfigError, match="target"):
        intensity_loss(fused, sources, target="min")


def test_frequency_loss_independent() -> None:
    """frequency_loss equals an independent NumPy/scipy computation: L1 of the low band to the mean (or max)
    source low band plus L1 of the high band to the max-absolute source detail."""
    s = smooth_images(1, 2, 28, 28).astype(np.float32)
    f = smooth_images(1, 1, 28, 28, seed=7).astype(np.float32)

    def bands(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        low = ndimage.gaussian_filter(a.astype(np.float64), (0, 0, 2, 2), mode="nearest", truncate=3.0)
        return low, a - low

    fl, fh = bands(f)
    sl, sh = bands(s)
    pick = np.take_along_axis(sh, np.abs(sh).argmax(axis=1)[:, None], axis=1)
    expected = np.abs(fl - sl.mean(axis=1, keepdims=True)).mean() + np.abs(fh - pick).mean()
    assert float(frequency_loss(torch.tensor(f), torch.tensor(s))) == pytest.approx(expected, rel=1e-5)
    expected_max = np.abs(fl - sl.max(axis=1, keepdims=True)).mean() + np.abs(fh - pick).mean()
    got = float(frequency_loss(torch.tensor(f), torch.tensor(s), low="max"))
    assert got == pytest.approx(expected_max, rel=1e-5)


def test_spatial_gradient_loss_hand_worked() -> None:
    """Hand-worked ramp and step sources: a flat fused image scores the mean |target dx|, the image carrying the
    target gradients scores 0, and inverted contrast is penalised here although the Sobel-magnitude loss gives
    0."""
    # Source A is a horizontal ramp (dx = 0.1), source B is flat except a step (dx = -0.3 once).
    a = np.tile(np.arange(4) * 0.1, (3, 1))
    b = np.zeros((3, 4))
    b[:, 2:] = -0.3 + 0.5
    b[:, :2] = 0.5
    sources = t(np.stack([a, b])[None])
    # Target dx per row: [0.1, -0.3, 0.1, 0] (B wins at the step); dy all 0.
    target_dx = np.array([0.1, -0.3, 0.1, 0.0])
    fused = t(np.full((1, 1, 3, 4), 0.2))  # flat: dx = dy = 0
    assert float(spatial_gradient_loss(fused, sources)) == pytest.approx(np.abs(target_dx).mean())
    # A fused image carrying exactly the target gradients scores zero.
    good = t(np.tile(np.concatenate([[0.5], 0.5 + np.cumsum(target_dx[:-1])]), (3, 1))[None, None])
    assert float(spatial_gradient_loss(good, sources)) == pytest.approx(0.0, abs=1e-12)
    # Inverted contrast has the same Sobel magnitudes but a non-zero spatial gradient loss.
    assert float(spatial_gradient_loss(1 - sources[:, :1], sources[:, :1])) > 0.05
    assert float(gradient_loss(1 - sources[:, :1], sources[:, :1])) == pytest.approx(0.0, abs=1e-12)


# ---- combined fusion loss ---------------------------------------------------------------------


def test_fusion_loss_zero_when_fused_is_the_only_source() -> None:
    """With one source equal to the fused image, every term weighted by default is reported and the total is 0."""
    s = torch.tensor(smooth_images(2, 1, 32, 32), dtype=torch.float32)
    total, parts = fusion_loss(s, s)
    assert set(parts) == {k for k, w in DEFAULT_FUSION_WEIGHTS.items() if w > 0}
    assert float(total) == pytest.approx(0.0, abs=1e-5)


def test_fusion_loss_is_weighted_sum_and_weights_override() -> None:
    """The total is the default-weighted sum of the reported parts (each equal to its own loss function),
    gradients flow to the fused image, and weights override defaults with a zero weight dropping the term."""
    s = torch.tensor(smooth_images(2, 2, 32, 32), dtype=torch.float32)
    f = s.mean(dim=1, keepdim=True).requires_grad_(True)
    total, parts = fusion_loss(f, s)
    parts = {k: v.detach() for k, v in parts.items()}
    expected = sum(DEFAULT_FUSION_WEIGHTS[k] * v.item() for k, v in parts.items())
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert float(parts["intensity"]) == pytest.approx(intensity_loss(f, s).item())
    assert float(parts["ssim"]) == pytest.approx(ssim_loss(f, s).item())
    total.backward()
    assert torch.isfinite(f.grad).all() and float(f.grad.abs().sum()) > 0

    total2, parts2 = fusion_loss(f, s, weights={"gradient": 0.0, "ssim": 2.0})
    assert "gradient" not in parts2
    expected2 = sum(w * float(parts[k]) for k, w in DEFAULT_FUSION_WEIGHTS.items() if k != "gradient" and w > 0)
    assert total2.item() == pytest.approx(expected2 + float(parts["ssim"]), rel=1e-6)


@pytest.mark.parametrize("weights", [{"edges": 1.0}, {"ssim": -1.0}, {"ssim": float("nan")}])
def test_fusion_loss_rejects_bad_weights(weights: dict) -> None:
    """An unknown term, a negative weight and a NaN weight are ConfigErrors naming the term."""
    s = torch.rand(1, 2, 16, 16)
    with pytest.raises(ConfigError, match="edges|ssim"):
        fusion_loss(s[:, :1], s, weights=weights)


def test_fusion_loss_rejects_bad_shapes() -> None:
    """A 2-channel fused image or sources of another size are ConfigErrors naming the argument."""
    with pytest.raises(ConfigError, match="fused"):
        fusion_loss(torch.rand(1, 2, 16, 16), torch.rand(1, 2, 16, 16))
    with pytest.raises(ConfigError, match="sources"):
        fusion_loss(torch.rand(1, 1, 16, 16), torch.rand(1, 2, 16, 15))


# ---- segmentation -----------------------------------------------------------------------------


def np_dice(p: np.ndarray, g: np.ndarray, smooth: float = 1.0) -> float:
    """Soft Dice of probability and target arrays of any shape."""
    return (2 * (p * g).sum() + smooth) / (p.sum() + g.sum() + smooth)


def test_segmentation_loss_is_ce_plus_foreground_dice() -> None:
    """The default loss equals torch cross-entropy plus 1 - the mean soft Dice (smooth 1) of classes 1..3,
    computed with NumPy."""
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, 5)
    label = torch.randint(0, 4, (2, 6, 5))
    probs = torch.softmax(logits, 1).numpy()
    lab = label.numpy()
    dice = np.mean([np_dice(probs[:, k], (lab == k).astype(float)) for k in (1, 2, 3)])
    expected = float(F.cross_entropy(logits, label)) + 1 - dice
    assert float(segmentation_loss(logits, label)) == pytest.approx(expected, rel=1e-5)


def test_dice_hand_worked_tiny() -> None:
    """Two pixels by hand: cross-entropy of probabilities 0.5 and 0.75 plus 1 - mean Dice, where absent classes 2
    and 3 score Dice 1."""
    # One image of 2 pixels with labels (1, 0). Class probabilities per pixel (classes 2, 3 ~ 0):
    probs = torch.tensor([[0.5, 0.75], [0.5, 0.25], [1e-9, 1e-9], [1e-9, 1e-9]]).reshape(1, 4, 1, 2)
    label = torch.tensor([[[1, 0]]])
    ce = -(np.log(0.5) + np.log(0.75)) / 2
    # Class 1: (2 * 0.5 + 1) / (0.75 + 1 + 1); classes 2, 3 absent: (0 + 1) / (0 + 0 + 1) = 1.
    dice = (2 / 2.75 + 1 + 1) / 3
    assert float(segmentation_loss(torch.log(probs), label)) == pytest.approx(ce + 1 - dice, rel=1e-5)


def test_perfect_prediction_scores_near_zero() -> None:
    """Confident correct logits (softmax and region-based sigmoid alike) give a loss below 1e-6."""
    label = torch.randint(0, 4, (2, 8, 8), generator=torch.Generator().manual_seed(0))
    logits = 30.0 * F.one_hot(label, 4).permute(0, 3, 1, 2).float()
    assert float(segmentation_loss(logits, label)) < 1e-6
    regions = region_targets(label)
    assert float(segmentation_loss(30.0 * (2 * regions - 1), label, region_based=True)) < 1e-6


def test_region_based_loss_hand_computed() -> None:
    """The region-based loss is mean BCE plus 1 - mean soft Dice over the WT/TC/ET targets (NumPy, float64); with
    4 channels, channel 0 is ignored."""
    torch.manual_seed(1)
    z = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    label = torch.randint(0, 4, (2, 5, 4))
    lab = label.numpy()
    targets = np.stack([np.isin(lab, (1, 2, 3)), np.isin(lab, (1, 3)), lab == 3], axis=1).astype(float)
    p = 1 / (1 + np.exp(-z.numpy()))
    bce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean()
    dice = np.mean([np_dice(p[:, r], targets[:, r]) for r in range(3)])
    got = segmentation_loss(z, label, region_based=True)
    assert float(got) == pytest.approx(bce + 1 - dice, rel=1e-10)
    # A 4-channel output trains region-based on channels 1..3 (channel 0 unused).
    z4 = torch.cat([torch.randn(2, 1, 5, 4, dtype=torch.float64), z], dim=1)
    assert float(segmentation_loss(z4, label, region_based=True)) == pytest.approx(float(got))


def test_segmentation_loss_input_errors() -> None:
    """Label 4 is a DataError (not canonical); a label of another size, 3 logit channels, and 5 channels
    region-based are ConfigErrors naming the problem."""
    logits = torch.randn(1, 4, 4, 4)
    with pytest.raises(DataError, match="canonical"):
        segmentation_loss(logits, torch.full((1, 4, 4), 4))
    with pytest.raises(ConfigError, match="label"):
        segmentation_loss(logits, torch.zeros(1, 4, 5, dtype=torch.int64))
    with pytest.raises(ConfigError, match="channels"):
        segmentation_loss(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.int64))
    with pytest.raises(ConfigError, match="region-based"):
        segmentation_loss(torch.randn(1, 5, 4, 4), torch.zeros(1, 4, 4, dtype=torch.int64), region_based=True)


def test_predict_labels_argmax_and_region_rule() -> None:
    """Softmax prediction is the int64 argmax; region-based prediction of all eight WT/TC/ET combinations follows
    ET over TC over WT."""
    logits = torch.randn(2, 4, 3, 3)
    assert torch.equal(predict_labels(logits), logits.argmax(1))
    assert predict_labels(logits).dtype == torch.int64
    # Every WT/TC/ET combination, one per pixel: ET wins, then TC, then WT.
    combos = torch.tensor([[w, c, e] for w in (0, 1) for c in (0, 1) for e in (0, 1)], dtype=torch.float32)
    z = (combos.T.reshape(1, 3, 1, 8) * 2 - 1) * 5.0
    # (WT, TC, ET) = 000, 001, 010, 011, 100, 101, 110, 111
    expected = torch.tensor([[[0, 3, 1, 3, 2, 3, 1, 3]]])
    assert torch.equal(predict_labels(z, region_based=True), expected)


def test_region_round_trip_recovers_labels() -> None:
    """Region targets turned into confident logits (3 or 4 channels) predict back the original canonical labels."""
    label = torch.randint(0, 4, (3, 7, 9), generator=torch.Generator().manual_seed(2))
    z = 10.0 * (2 * region_targets(label) - 1)
    assert torch.equal(predict_labels(z, region_based=True), label)
    z4 = torch.cat([torch.zeros(3, 1, 7, 9), z], dim=1)
    assert torch.equal(predict_labels(z4, region_based=True), label)


@pytest.mark.parametrize("channels", [2, 3])
def test_max_abs_select_equals_argmax_gather(channels: int) -> None:
    """The per-channel comparison equals argmax of |key| + gather (first channel on ties), values and gradient."""
    from fuse4seg.models.blocks import max_abs_select

    g = torch.Generator().manual_seed(0)
    values = torch.randint(-3, 4, (2, channels, 5, 6), generator=g).double().requires_grad_()  # many ties
    key = torch.randint(-2, 3, (2, channels, 5, 6), generator=g).double()
    for k in (None, key):
        ref = torch.gather(values, 1, (values if k is None else k).abs().argmax(dim=1, keepdim=True))
        out = max_abs_select(values, k)
        assert torch.equal(out, ref)
        w = torch.randn(out.shape, generator=g, dtype=torch.float64)
        assert torch.equal(torch.autograd.grad((out * w).sum(), values)[0],
                           torch.autograd.grad((ref * w).sum(), values)[0])
