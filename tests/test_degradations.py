"""Degradations against closed forms: noise std, blur moments, k-space Parseval identities."""

from __future__ import annotations

import numpy as np
import pytest

from fuse4seg.data.degradations import (
    gaussian_blur,
    gaussian_noise,
    kspace_spike,
    kspace_undersample,
    random_degradation,
    undersampling_mask,
)
from fuse4seg.errors import ConfigError


def test_noise_std_is_the_fraction_of_the_max() -> None:
    """Noise std is the fraction of the max."""
    rng = np.random.default_rng(0)
    image = np.full((2, 256, 256), 0.5)
    image[1] *= 2  # channel max 1.0: twice the noise of channel 0
    noisy = gaussian_noise(image, rng, fraction=0.05, clip=False)
    diff = noisy - image
    assert diff[0].std() == pytest.approx(0.05 * 0.5, rel=0.02)
    assert diff[1].std() == pytest.approx(0.05 * 1.0, rel=0.02)
    assert abs(diff.mean()) < 1e-3
    clipped = gaussian_noise(image, np.random.default_rng(0), fraction=0.1)
    assert clipped.min() >= 0 and (clipped[0] <= 0.5).all() and (clipped[1] <= 1.0).all()


def test_blur_small_sigma_is_identity_and_moments_match() -> None:
    """Blur small sigma is identity and moments match."""
    rng = np.random.default_rng(1)
    image = rng.random((33, 40))
    np.testing.assert_array_equal(gaussian_blur(image, 0), image.astype(np.float32))
    np.testing.assert_allclose(gaussian_blur(image, 0.1), image, atol=1e-4)
    impulse = np.zeros((3, 65, 65))
    impulse[:, 32, 32] = 1.0
    blurred = gaussian_blur(impulse, 2.0).astype(np.float64)
    offsets = np.arange(65) - 32
    assert blurred.sum(axis=(-2, -1)) == pytest.approx([1.0] * 3, abs=1e-6)
    variance_rows = (blurred[0].sum(axis=1) * offsets**2).sum()
    assert variance_rows == pytest.approx(4.0, rel=1e-3)  # sigma^2 along each axis
    np.testing.assert_allclose(gaussian_blur(np.full((9, 9), 0.3), 3.0), 0.3, atol=1e-6)


def test_spike_adds_one_frequency_of_known_energy() -> None:
    # Constant c with a spike of a * |F(0)|: the complex image is c (1 + a e^{i phi(x)}), so the mean
    # squared magnitude is c^2 (1 + a^2) exactly (the cross term averages to zero over full periods).
    """Spike adds one frequency of known energy."""
    c, a = 0.5, 0.3
    out = kspace_spike(np.full((64, 48), c), np.random.default_rng(3), amplitude=a, clip=False).astype(np.float64)
    assert (out**2).mean() == pytest.approx(c**2 * (1 + a**2), rel=1e-6)
    assert out.min() >= c * (1 - a) - 1e-6 and out.max() <= c * (1 + a) + 1e-6
    np.testing.assert_allclose(kspace_spike(np.full((8, 8), c), np.random.default_rng(0), 0.0), c, atol=1e-6)


def test_undersampling_keep_all_is_identity_and_parseval_holds() -> None:
    """Undersampling keep all is identity and parseval holds."""
    rng = np.random.default_rng(4)
    image = rng.random((40, 30))
    np.testing.assert_allclose(kspace_undersample(image, rng, keep=1.0, centre=0.1), image, atol=1e-6)
    rows = undersampling_mask(40, np.random.default_rng(5), keep=0.5, centre=0.1)
    assert rows.sum() == 20 and rows[0] and rows[1] and rows[-1]  # DC and +-1 cycle always kept
    out = kspace_undersample(image, np.random.default_rng(5), keep=0.5, centre=0.1, clip=False)
    # Parseval: the magnitude image's energy is the kept rows' spectral energy / (H W).
    spectrum = np.fft.fft2(image)
    expected = (np.abs(spectrum[rows]) ** 2).sum() / image.size
    assert (out.astype(np.float64) ** 2).sum() == pytest.approx(expected, rel=1e-5)


def test_random_degradation_and_bad_parameters() -> None:
    """Random degradation and bad parameters."""
    rng = np.random.default_rng(6)
    image = rng.random((2, 16, 16)).astype(np.float32)
    kinds = set()
    for _ in range(40):
        out, name = random_degradation(image, rng)
        assert out.shape == image.shape and out.dtype == np.float32
        assert out.min() >= 0 and (out.max(axis=(1, 2)) <= image.max(axis=(1, 2)) + 1e-6).all()
        kinds.add(name.split()[0])
    assert kinds == {"noise", "blur", "k-space"}
    with pytest.raises(ConfigError, match="noise fraction"):
        gaussian_noise(image, rng, fraction=0.2)
    with pytest.raises(ConfigError, match="blur sigma"):
        gaussian_blur(image, 5.0)
    with pytest.raises(ConfigError, match="shape"):
        gaussian_blur(np.zeros(5), 1.0)
