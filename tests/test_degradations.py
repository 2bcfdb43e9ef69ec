"""MR degradations against independent computations: noise moments, Gaussian kernels, k-space lines,
block-mean resampling; identity at level 0, monotone severity, seeding and serialisation round trips."""

from __future__ import annotations

import math

import albumentations as A
import numpy as np
import pytest
from scipy import ndimage, stats

from fuse4seg.data.augment.degradations import (
    ClippedGaussianBlur,
    GaussianNoise,
    KSpaceSpike,
    KSpaceUndersampling,
    LowResolution,
    MotionGhosting,
    RicianNoise,
    add_kspace_spikes,
    reweight_kspace_lines,
    undersampling_mask,
)
from fuse4seg.data.augment.severity import DEGRADATIONS, GROUPS, at_severity, random_degradation
from fuse4seg.errors import ConfigError


def brain(size: int = 64) -> np.ndarray:
    """(size, size, 2) float32 test image: a textured disc and a two-level disc on a zero background."""
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    disc = (yy**2 + xx**2) < 0.6
    return np.stack([disc * (0.6 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy)),
                     disc * (0.4 + 0.4 * (yy > 0.1))], axis=-1).astype(np.float32)


def run(transform: A.BasicTransform, image: np.ndarray, seed: int = 0) -> np.ndarray:
    """The transform's image output with its generators seeded."""
    transform.set_random_seed(seed)
    return transform(image=image)["image"]


def test_noise_std_mean_and_independent_channels() -> None:
    """Noise std is the fraction of each channel's max; mean 0; channels get independent draws."""
    image = np.full((128, 128, 3), 0.5, dtype=np.float32)
    image[0, 0, :2] = 1.0  # channel max 1 for channels 0 and 1; channel 2 is constant, max 0.5
    noisy = run(GaussianNoise(fraction_range=(0.08, 0.08), clip=False, p=1.0), image)
    diff = (noisy.astype(np.float64) - image).reshape(-1, 3)[1:]  # without the bright pixel
    n = len(diff)
    for channel, sigma in enumerate((0.08, 0.08, 0.04)):
        assert diff[:, channel].std() == pytest.approx(sigma, rel=5 / math.sqrt(2 * n))
        assert abs(diff[:, channel].mean()) < 5 * sigma / math.sqrt(n)
    assert abs(np.corrcoef(diff.T)[0, 1]) < 5 / math.sqrt(n)
    # Clipped: channels 0, 1 sit 6 sigma inside [0, 1], so nothing changes there; channel 2 is capped at its max.
    clipped = run(GaussianNoise(fraction_range=(0.08, 0.08), p=1.0), image)
    assert clipped.dtype == np.float32
    np.testing.assert_array_equal(clipped[..., :2], np.clip(noisy[..., :2], 0, 1))
    assert clipped[..., 2].max() == np.float32(0.5) and clipped.min() >= 0


def test_rician_moments() -> None:
    """Rician magnitude: Rayleigh mean sigma sqrt(pi/2) where the image is 0, the Rice mean where it is A,
    and E[M^2] = A^2 + 2 sigma^2 exactly in expectation."""
    image = np.zeros((128, 128, 2), dtype=np.float32)
    image[:, 64:] = 1.0
    sigma = 0.1
    out = run(RicianNoise(fraction_range=(sigma, sigma), clip=False, p=1.0), image).astype(np.float64)
    dark, bright = out[:, :64].ravel(), out[:, 64:].ravel()
    n = dark.size
    rayleigh = stats.rice(0.0, scale=sigma)
    assert dark.mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), abs=5 * rayleigh.std() / math.sqrt(n))
    rice = stats.rice(1.0 / sigma, scale=sigma)
    assert bright.mean() == pytest.approx(rice.mean(), abs=5 * rice.std() / math.sqrt(n))
    assert rice.mean() == pytest.approx(math.sqrt(1 + sigma**2), rel=1e-4)  # the high-SNR approximation
    assert (bright**2).mean() == pytest.approx(1 + 2 * sigma**2, abs=5 * (bright**2).std() / math.sqrt(n))


@pytest.mark.parametrize("sigma", [0.7, 1.5, 3.0])
def test_blur_is_the_truncated_gaussian(sigma: float) -> None:
    """An impulse's response is the normalised Gaussian of radius int(3.5 sigma); any image matches
    scipy's gaussian_filter with that truncation and mirrored borders."""
    blur = ClippedGaussianBlur(sigma_limit=(sigma, sigma), blur_limit=0, p=1.0)
    impulse = np.zeros((41, 41, 2), dtype=np.float32)
    impulse[20, 20] = 1.0
    radius = int(3.5 * sigma)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-offsets**2 / (2 * sigma**2))
    kernel /= kernel.sum()
    expected = np.zeros((41, 41))
    expected[20 - radius:21 + radius, 20 - radius:21 + radius] = np.outer(kernel, kernel)
    response = run(blur, impulse)
    for channel in range(2):
        np.testing.assert_allclose(response[..., channel], expected, atol=1e-7)
    image = np.random.default_rng(0).random((30, 40, 3)).astype(np.float32)
    reference = ndimage.gaussian_filter(image.astype(np.float64), sigma, truncate=radius / sigma, mode="mirror",
                                        axes=(0, 1))
    np.testing.assert_allclose(run(blur, image), reference, atol=1e-6)


def test_undersampling_mask_keeps_the_centre_and_the_count() -> None:
    """round(lines / R) lines in all, always the round(0.08 lines) nearest k = 0, the rest random."""
    rng = np.random.default_rng(0)
    for lines in (64, 65):
        mask = undersampling_mask(lines, 4.0, rng)
        assert mask.sum() == 16
        frequencies = np.fft.fftfreq(lines) * lines  # integer k in FFT order
        centre = np.abs(frequencies) <= 2  # round(0.08 x 64) = 5 lines: k = -2..2
        assert mask[centre].all()
    assert undersampling_mask(64, 1.0, rng).all()
    assert undersampling_mask(64, 100.0, rng).sum() == 5  # never fewer than the centre
    masks = {tuple(undersampling_mask(64, 4.0, np.random.default_rng(seed))) for seed in range(5)}
    assert len(masks) == 5


@pytest.mark.parametrize("axis", [0, 1])
def test_kspace_lines_are_masked_or_phase_shifted(axis: int) -> None:
    """The FFT of the complex result is the input's with each line multiplied by its weight: zeroed lines
    for undersampling, unit-modulus phases (magnitude unchanged line by line) for motion."""
    rng = np.random.default_rng(1)
    image = rng.random((2, 16, 24))
    lines = image.shape[1 + axis]
    along = (slice(None), slice(None), None) if axis == 0 else (slice(None), None, slice(None))
    masks = rng.random((2, lines)) < 0.5
    spectrum = np.fft.fft2(image)
    np.testing.assert_allclose(np.fft.fft2(reweight_kspace_lines(image, masks, axis)), spectrum * masks[along],
                               atol=1e-9)
    phases = rng.uniform(-np.pi, np.pi, (2, lines))
    shifted = np.fft.fft2(reweight_kspace_lines(image, np.exp(1j * phases), axis))
    np.testing.assert_allclose(np.abs(shifted), np.abs(spectrum), atol=1e-9)
    np.testing.assert_allclose(shifted, spectrum * np.exp(1j * phases)[along], atol=1e-9)


def test_spike_position_and_magnitude() -> None:
    """A spike adds intensity x |F(0)| e^{i phase} at its FFT position and nothing elsewhere."""
    image = np.full((1, 16, 16), 0.5)
    out = add_kspace_spikes(image, np.array([[37]]), np.array([[0.3]]), intensity=0.4)
    delta = (np.fft.fft2(out) - np.fft.fft2(image)).ravel()
    expected = np.zeros(256, dtype=complex)
    expected[37] = 0.4 * (0.5 * 256) * np.exp(0.3j)
    np.testing.assert_allclose(delta, expected, atol=1e-9)


def channels_first(image: np.ndarray) -> np.ndarray:
    """(H, W, C) -> (C, H, W) float64."""
    return np.moveaxis(image, -1, 0).astype(np.float64)


def test_kspace_transforms_apply_their_drawn_lines() -> None:
    """Each transform's output is the magnitude of its drawn corruption, clipped; draws differ per channel."""
    image = brain(32)
    peak = image.max(axis=(0, 1))
    undersample = KSpaceUndersampling(acceleration_range=(4.5, 4.5), p=1.0)
    out = run(undersample, image)
    masks = undersample.get_applied_params()["draws"]["masks"]
    assert masks.shape == (2, 32) and (masks.sum(axis=1) == 7).all() and (masks[0] != masks[1]).any()
    expected = np.abs(reweight_kspace_lines(channels_first(image), masks))
    np.testing.assert_allclose(out, np.clip(np.moveaxis(expected, 0, -1), 0, peak), atol=1e-6)

    motion = MotionGhosting(severity_range=(0.5, 0.5), p=1.0)
    out = run(motion, image)
    phases = motion.get_applied_params()["draws"]["phases"]
    assert ((phases != 0).sum(axis=1) == 8).all()  # 0.5 x 0.5 x 32 lines, up to +-pi/2
    assert np.abs(phases).max() <= np.pi / 2 and (phases[0] != phases[1]).any()
    expected = np.abs(reweight_kspace_lines(channels_first(image), np.exp(1j * phases)))
    np.testing.assert_allclose(out, np.clip(np.moveaxis(expected, 0, -1), 0, peak), atol=1e-6)

    spike = KSpaceSpike(intensity_range=(0.3, 0.3), num_spikes=3, p=1.0)
    out = run(spike, image)
    draws = spike.get_applied_params()["draws"]
    positions = draws["positions"]
    assert positions.shape == (2, 3) and (positions > 0).all() and all(len(set(row)) == 3 for row in positions)
    expected = np.abs(add_kspace_spikes(channels_first(image), positions, draws["phases"], 0.3))
    np.testing.assert_allclose(out, np.clip(np.moveaxis(expected, 0, -1), 0, peak), atol=1e-6)


def test_lowres_is_block_mean_then_bilinear() -> None:
    """Factor 2: 2x2 block means (area), then bilinear up-sampling with half-pixel centres and clamped edges."""
    image = np.random.default_rng(2).random((40, 50, 3)).astype(np.float32)
    blocks = image.astype(np.float64).reshape(20, 2, 25, 2, 3).mean(axis=(1, 3))

    def upsample(array: np.ndarray, size: int, axis: int) -> np.ndarray:
        """Linear interpolation at (i + 0.5) / 2 - 0.5, clamped to the ends."""
        weights = np.stack([np.interp((np.arange(size) + 0.5) / 2 - 0.5, np.arange(array.shape[axis]), row)
                            for row in np.eye(array.shape[axis])], axis=1)  # (size, n) interpolation matrix
        return np.moveaxis(np.tensordot(weights, array, axes=(1, axis)), 0, axis)

    expected = upsample(upsample(blocks, 40, 0), 50, 1)
    np.testing.assert_allclose(run(LowResolution(factor_range=(2.0, 2.0), p=1.0), image), expected, atol=1e-6)


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_level_zero_is_identity_and_severity_is_monotone(name: str) -> None:
    """Level 0 returns the input bit for bit; the mean squared change rises with the level for every seed;
    outputs are float32 within [0, channel max]; a 2-D image works too."""
    image = brain()
    np.testing.assert_array_equal(run(at_severity(name, 0.0), image), image)
    peak = image.max(axis=(0, 1))
    for seed in range(3):
        changes = []
        for level in (0.0, 0.25, 0.5, 0.75, 1.0):
            out = run(at_severity(name, level), image, seed)
            assert out.dtype == np.float32 and out.shape == image.shape
            assert out.min() >= 0 and (out.max(axis=(0, 1)) <= peak).all()
            changes.append(((out - image) ** 2).mean())
        assert np.all(np.diff(changes) > 0), changes
    flat = run(at_severity(name, 0.6), image[..., 0])
    assert flat.shape == image.shape[:2] and flat.dtype == np.float32


def test_channels_are_degraded_independently() -> None:
    """Two equal channels come out different for the random degradations, equal for blur and lowres."""
    image = np.repeat(brain()[..., :1], 2, axis=-1)
    for name in DEGRADATIONS:
        out = run(at_severity(name, 0.5), image)
        assert np.array_equal(out[..., 0], out[..., 1]) == (name in ("blur", "lowres")), name


def test_strength_mapping_and_random_ranges() -> None:
    """at_severity maps levels linearly; random_degradation draws over the whole (or a partial) range."""
    assert at_severity("noise", 0.5).fraction_range == (0.05, 0.05)
    assert at_severity("blur", 0.5).sigma_limit == (1.5, 1.5)
    assert at_severity("undersample", 0.5).acceleration_range == (4.5, 4.5)
    assert at_severity("lowres", 1.0).factor_range == (4.0, 4.0)
    assert at_severity("motion", 0.25).severity_range == (0.25, 0.25)
    assert at_severity("spike", 1.0).p == 1.0
    blur = random_degradation("blur", p=0.3)
    assert blur.sigma_limit == (0.1, 3.0) and blur.p == 0.3
    assert random_degradation("undersample", max_level=0.5).acceleration_range == (1.0, 4.5)
    assert random_degradation("blur", max_level=0.0).sigma_limit == (0.0, 0.0)
    strengths = set()
    noise = random_degradation("noise", p=1.0)
    for seed in range(20):
        run(noise, brain(8), seed)
        strengths.add(noise.get_applied_params()["strength"])
    assert len(strengths) == 20 and max(strengths) <= 0.1
    assert {name for group in GROUPS.values() for name in group} == set(DEGRADATIONS)


def test_bad_names_levels_and_parameters() -> None:
    """Unknown names and levels outside [0, 1] are one-line ConfigErrors; bad parameters fail validation."""
    with pytest.raises(ConfigError, match="unknown degradation 'gibbs'") as info:
        at_severity("gibbs", 0.5)
    assert info.value.option == "degradations"
    for level in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"must be in \[0, 1\]"):
            at_severity("noise", level)
    with pytest.raises(ConfigError):
        random_degradation("noise", p=2.0)
    for make in (lambda: GaussianNoise(fraction_range=(0.2, 0.1)), lambda: KSpaceSpike(num_spikes=0),
                 lambda: MotionGhosting(severity_range=(0.0, 1.5)), lambda: LowResolution(factor_range=(0.5, 2.0)),
                 lambda: KSpaceUndersampling(axis=2)):
        with pytest.raises(ValueError):
            make()


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_seeding_and_serialisation_round_trip(name: str, tmp_path) -> None:
    """Same seed, same output; another seed, another output (except for the deterministic ones); A.save /
    A.load (JSON and YAML) and to_dict / from_dict rebuild transforms that give identical outputs."""
    image = brain(32)
    for transform in (random_degradation(name, p=0.8), at_severity(name, 0.6)):
        first = run(transform, image, seed=3)
        np.testing.assert_array_equal(run(transform, image, seed=3), first)
        rebuilt = [A.from_dict(A.to_dict(transform))]
        for data_format in ("json", "yaml"):
            path = tmp_path / f"t.{data_format}"
            A.save(transform, str(path), data_format=data_format)
            rebuilt.append(A.load(str(path), data_format=data_format))
        for other in rebuilt:
            assert type(other) is type(transform) and A.to_dict(other) == A.to_dict(transform)
            np.testing.assert_array_equal(run(other, image, seed=3), first)
    outputs = {run(at_severity(name, 0.6), image, seed).tobytes() for seed in range(4)}
    assert len(outputs) == (1 if name in ("blur", "lowres") else 4)  # those two have no randomness at a level
    assert A.to_dict(transform)["transform"]["__class_fullname__"].startswith("fuse4seg.data.augment.degradations.")
