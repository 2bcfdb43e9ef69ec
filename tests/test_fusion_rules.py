"""Classical fusion rules against closed forms and OpenCV's pyramid operators."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fuse4seg.errors import ConfigError, DataError
from fuse4seg.fusion import FUSION_RULES, fuse_batch, fuse_images, pca_weights
from fuse4seg.fusion.pyramid import (
    laplacian_pyramid,
    laplacian_rule,
    max_levels,
    pyr_down,
    pyr_up,
    reconstruct_pyramid,
)
from fuse4seg.fusion.wavelet import wavelet_rule


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator."""
    return np.random.default_rng(1234)


@pytest.mark.parametrize("method", sorted(FUSION_RULES))
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_identical_sources_give_the_source(method: str, channels: int, rng: np.random.Generator) -> None:
    """Identical sources give the source."""
    image = rng.random((37, 53)).astype(np.float32)
    fused = fuse_images(np.repeat(image[None], channels, axis=0), method)
    assert fused.shape == image.shape and fused.dtype == np.float32
    np.testing.assert_allclose(fused, image, atol=1e-5)


@pytest.mark.parametrize("method", sorted(FUSION_RULES))
@pytest.mark.parametrize("channels", [2, 3, 5])
def test_output_range_and_shape(method: str, channels: int, rng: np.random.Generator) -> None:
    # Binary images have the largest pyramid overshoot: the output must still be clipped to [0, 1].
    """Output range and shape."""
    sources = (rng.random((channels, 31, 40)) > 0.5).astype(np.float32)
    fused = fuse_images(sources, method)
    assert fused.shape == (31, 40)
    assert fused.min() >= 0.0 and fused.max() <= 1.0


def test_mean_and_max_closed_form(rng: np.random.Generator) -> None:
    """Mean and max closed form."""
    sources = rng.random((3, 8, 9)).astype(np.float32)
    np.testing.assert_allclose(fuse_images(sources, "mean"), (sources[0] + sources[1] + sources[2]) / 3, atol=1e-6)
    np.testing.assert_array_equal(fuse_images(sources, "max"), np.maximum(np.maximum(sources[0], sources[1]), sources[2]))


def test_pca_weights_for_known_covariances(rng: np.random.Generator) -> None:
    """Pca weights for known covariances."""
    x = rng.random((32, 32))
    # b = 2a: covariance var(a) [[1, 2], [2, 4]], principal eigenvector (1, 2) / sqrt(5).
    np.testing.assert_allclose(pca_weights(np.stack([x, 2 * x])[None] * 0.4), [[1 / 3, 2 / 3]], atol=1e-9)
    # Column patterns of period 2 and 4 are orthogonal after centring, with variance ratio 1:9:
    # covariance diag(0.01, 0.09) -> all weight on the second source.
    a = np.tile([0.4, 0.6], 512).reshape(32, 32)
    b = np.tile([0.2, 0.2, 0.8, 0.8], 256).reshape(32, 32)
    cov = np.cov(np.stack([a.ravel(), b.ravel()]))
    assert abs(cov[0, 1]) < 1e-12
    np.testing.assert_allclose(pca_weights(np.stack([a, b])[None]), [[0.0, 1.0]], atol=1e-9)
    # Constant sources carry no variance: equal weights.
    np.testing.assert_allclose(pca_weights(np.full((1, 4, 5, 5), 0.3)), [[0.25] * 4])


def test_pca_rule_is_the_weighted_sum(rng: np.random.Generator) -> None:
    """Pca rule is the weighted sum."""
    sources = rng.random((3, 16, 12)).astype(np.float32)
    weights = pca_weights(sources[None])[0]
    expected = np.tensordot(weights, sources.astype(np.float64), axes=1)
    np.testing.assert_allclose(fuse_images(sources, "pca"), expected, atol=1e-6)
    assert weights.sum() == pytest.approx(1.0)


def test_pyramid_operators_match_opencv(rng: np.random.Generator) -> None:
    """Pyramid operators match opencv."""
    image = rng.random((37, 53))
    np.testing.assert_allclose(pyr_down(image), cv2.pyrDown(image), atol=1e-12)
    coarse = rng.random((16, 20))
    np.testing.assert_allclose(pyr_up(coarse, (32, 40)), cv2.pyrUp(coarse, dstsize=(40, 32)), atol=1e-12)


@pytest.mark.parametrize("shape", [(240, 240), (37, 53), (17, 16), (5, 3), (1, 7)])
@pytest.mark.parametrize("levels", [1, 3, 4, 10])
def test_laplacian_pyramid_reconstructs_exactly(shape: tuple[int, int], levels: int, rng: np.random.Generator) -> None:
    """Laplacian pyramid reconstructs exactly."""
    image = rng.random(shape)
    bands = laplacian_pyramid(image, min(levels, max_levels(shape)))
    np.testing.assert_allclose(reconstruct_pyramid(bands), image, atol=1e-12)
    fused = laplacian_rule(image[None, None].astype(np.float32), levels=levels)[0]
    np.testing.assert_allclose(fused, image, atol=1e-6)


def test_max_levels() -> None:
    """Max levels."""
    assert max_levels((240, 240)) == 8  # 240 120 60 30 15 8 4 2 1
    assert max_levels((1, 100)) == 0
    assert max_levels((2, 2)) == 1


def test_laplacian_keeps_the_stronger_edge() -> None:
    # Source A has a vertical step, B is flat: fused detail comes from A, base is the mean.
    """Laplacian keeps the stronger edge."""
    a = np.zeros((32, 32))
    a[:, 16:] = 1.0
    b = np.full((32, 32), 0.5)
    fused = laplacian_rule(np.stack([a, b])[None].astype(np.float32), levels=3)[0]
    assert fused[:, 20:].mean() > 0.7 and fused[:, :12].mean() < 0.3
    assert fused.mean() == pytest.approx(0.5, abs=0.02)


def test_wavelet_levels_are_capped_and_odd_sizes_cropped(rng: np.random.Generator) -> None:
    """Wavelet levels are capped and odd sizes cropped."""
    image = rng.random((1, 1, 33, 47)).astype(np.float32)
    np.testing.assert_allclose(wavelet_rule(image, levels=99)[0, ...], image[0, 0], atol=1e-5)
    np.testing.assert_allclose(wavelet_rule(image, wavelet="haar", levels=2)[0], image[0, 0], atol=1e-5)


def test_batched_equals_single(rng: np.random.Generator) -> None:
    """Batched equals single."""
    sources = rng.random((3, 2, 24, 20)).astype(np.float32)
    for method in FUSION_RULES:
        batched = fuse_batch(sources, method)
        for i in range(3):
            np.testing.assert_allclose(batched[i], fuse_images(sources[i], method), atol=1e-6)


def test_bad_input() -> None:
    """Bad input."""
    with pytest.raises(ConfigError, match="unknown fusion method 'nope'"):
        fuse_images(np.zeros((2, 4, 4)), "nope")
    with pytest.raises(DataError, match="shape"):
        fuse_images(np.zeros((4, 4)), "mean")
    bad = np.zeros((2, 4, 4))
    bad[0, 1, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        fuse_images(bad, "mean")


@pytest.mark.parametrize("shape", [(240, 240), (3, 5, 5), (2, 4, 7, 9), (6, 4), (3, 3)])
def test_blur_matches_scipy_mirror_convolution(shape: tuple[int, ...], rng: np.random.Generator) -> None:
    """Blur matches scipy mirror convolution."""
    from scipy.ndimage import convolve1d

    from fuse4seg.fusion.pyramid import _KERNEL, _blur

    image = rng.random(shape)
    expected = convolve1d(convolve1d(image, 2 * _KERNEL, axis=-1, mode="mirror"), 2 * _KERNEL, axis=-2, mode="mirror")
    np.testing.assert_allclose(_blur(image, 2.0), expected, atol=1e-12)
