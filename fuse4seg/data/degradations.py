"""RMR-Fusion style degradations of MR images for robustness tests.

All functions take (H, W) or (C, H, W) float arrays (channels degraded independently, over the
last two axes), a ``numpy.random.Generator``, and return float32 arrays of the same shape.
Parameter ranges follow RMR-Fusion: Gaussian noise sigma up to 0.1 of the image maximum,
Gaussian blur sigma 0.1-3 pixels, and k-space corruption (a spike or Cartesian undersampling).
With ``clip`` (the default) results are clipped to [0, channel max of the input] so degraded
images stay in the input's range; ``clip=False`` gives the raw result (used by the tests).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from fuse4seg.errors import ConfigError

NOISE_MAX_FRACTION = 0.1
BLUR_SIGMA_RANGE = (0.1, 3.0)


def _as_image(image: np.ndarray) -> np.ndarray:
    """Validate an (H, W) or (C, H, W) array and return it as float64."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim not in (2, 3):
        raise ConfigError(f"degradations take (H, W) or (C, H, W) images, got shape {image.shape}")
    return image


def _channel_max(image: np.ndarray) -> np.ndarray:
    """Per-channel maximum over the last two axes, broadcastable against the image."""
    return image.max(axis=(-2, -1), keepdims=True)


def gaussian_noise(image: np.ndarray, rng: np.random.Generator, fraction: float = 0.05,
                   clip: bool = True) -> np.ndarray:
    """Add zero-mean Gaussian noise with std = ``fraction`` (0..0.1) x the channel maximum."""
    if not 0.0 <= fraction <= NOISE_MAX_FRACTION:
        raise ConfigError(f"noise fraction must be in [0, {NOISE_MAX_FRACTION}], got {fraction}")
    image = _as_image(image)
    peak = _channel_max(image)
    out = image + rng.standard_normal(image.shape) * (fraction * peak)
    return (np.clip(out, 0.0, peak) if clip else out).astype(np.float32)


def gaussian_blur(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Blur each channel with an isotropic Gaussian of ``sigma`` pixels (0.1..3; 0 = identity)."""
    if sigma != 0 and not BLUR_SIGMA_RANGE[0] <= sigma <= BLUR_SIGMA_RANGE[1]:
        raise ConfigError(f"blur sigma must be 0 or in {list(BLUR_SIGMA_RANGE)} pixels, got {sigma}")
    image = _as_image(image)
    if sigma == 0:
        return image.astype(np.float32)
    return gaussian_filter(image, sigma=sigma, axes=(-2, -1), mode="reflect").astype(np.float32)


def kspace_spike(image: np.ndarray, rng: np.random.Generator, amplitude: float = 0.2,
                 clip: bool = True) -> np.ndarray:
    """Add one k-space spike (a herringbone artefact) and return the magnitude image.

    The spike sits at a random non-DC frequency with a random phase and magnitude ``amplitude``
    times the DC coefficient |F(0)| of each channel, as a spike-noise artefact in a real scanner.
    """
    if amplitude < 0:
        raise ConfigError(f"spike amplitude must be >= 0, got {amplitude}")
    image = _as_image(image)
    h, w = image.shape[-2:]
    if h * w < 2:
        raise ConfigError(f"k-space spike needs at least 2 pixels, got {h}x{w}")
    spectrum = np.fft.fft2(image, axes=(-2, -1))
    flat_index = int(rng.integers(1, h * w))
    u, v = divmod(flat_index, w)
    phase = np.exp(1j * rng.uniform(0.0, 2.0 * np.pi))
    spectrum[..., u, v] += amplitude * np.abs(spectrum[..., 0, 0]) * phase
    out = np.abs(np.fft.ifft2(spectrum, axes=(-2, -1)))
    return (np.clip(out, 0.0, _channel_max(image)) if clip else out).astype(np.float32)


def undersampling_mask(height: int, rng: np.random.Generator, keep: float = 0.5,
                       centre: float = 0.08) -> np.ndarray:
    """Boolean (height,) mask of kept phase-encode rows in FFT order: the central ``centre``
    fraction of low frequencies plus random others, round(keep * height) rows in all (at least the
    centre)."""
    if not 0.0 < keep <= 1.0 or not 0.0 <= centre <= keep:
        raise ConfigError(f"undersampling needs 0 < keep <= 1 and 0 <= centre <= keep, got {keep}, {centre}")
    low = np.abs(np.fft.fftfreq(height)) <= centre / 2  # cycles per pixel, 0 at DC
    others = np.flatnonzero(~low)
    n_random = max(0, round(keep * height) - int(low.sum()))
    rows = low.copy()
    rows[rng.permutation(others)[:n_random]] = True
    return rows


def kspace_undersample(image: np.ndarray, rng: np.random.Generator, keep: float = 0.5,
                       centre: float = 0.08, clip: bool = True) -> np.ndarray:
    """Cartesian undersampling: zero the phase-encode rows outside :func:`undersampling_mask` and
    return the magnitude image (aliasing and blur as in accelerated MRI)."""
    image = _as_image(image)
    rows = undersampling_mask(image.shape[-2], rng, keep, centre)
    spectrum = np.fft.fft2(image, axes=(-2, -1)) * rows[:, None]
    out = np.abs(np.fft.ifft2(spectrum, axes=(-2, -1)))
    return (np.clip(out, 0.0, _channel_max(image)) if clip else out).astype(np.float32)


def random_degradation(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Apply one degradation drawn uniformly (noise, blur, spike, undersampling) with RMR-Fusion's
    parameter ranges; returns (degraded float32 image, a description such as 'blur sigma=1.3')."""
    kind = int(rng.integers(4))
    if kind == 0:
        fraction = float(rng.uniform(0.0, NOISE_MAX_FRACTION))
        return gaussian_noise(image, rng, fraction), f"noise fraction={fraction:.3f}"
    if kind == 1:
        sigma = float(rng.uniform(*BLUR_SIGMA_RANGE))
        return gaussian_blur(image, sigma), f"blur sigma={sigma:.2f}"
    if kind == 2:
        amplitude = float(rng.uniform(0.05, 0.5))
        return kspace_spike(image, rng, amplitude), f"k-space spike amplitude={amplitude:.2f}"
    keep = float(rng.uniform(0.3, 0.7))
    return kspace_undersample(image, rng, keep), f"k-space undersampling keep={keep:.2f}"
