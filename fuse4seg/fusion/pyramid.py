"""Laplacian-pyramid fusion (Burt & Adelson): max-abs detail coefficients, mean base.

The pyramid uses the 5-tap binomial kernel [1, 4, 6, 4, 1] / 16 (what OpenCV's pyrDown/pyrUp use),
mirror borders, down-sampling by keeping every second pixel (so odd sizes give ceil(n / 2)), and
up-sampling by zero insertion to the exact size of the finer level followed by the same kernel
times 2 per axis. Because each detail level is defined as g_k - up(g_{k+1}) with that very
up-sampling, reconstruction is exact for every image size, divisible by 2**levels or not.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import convolve1d

_KERNEL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(images: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Separable binomial blur over the last two axes of (..., H, W) float64 (times scale**2).

    OpenCV's sepFilter2D (BORDER_REFLECT_101 = SciPy's "mirror") is about 3x faster than SciPy's
    convolve1d here; SciPy handles the sides shorter than the kernel that OpenCV rejects.
    """
    kernel = _KERNEL * scale
    h, w = images.shape[-2:]
    if min(h, w) < len(kernel):
        out = convolve1d(images, kernel, axis=-1, mode="mirror")
        return convolve1d(out, kernel, axis=-2, mode="mirror")
    flat = np.ascontiguousarray(images, dtype=np.float64).reshape(-1, h, w)
    out = np.empty_like(flat)
    for i, image in enumerate(flat):  # one call per 2-D image (OpenCV filters single planes)
        cv2.sepFilter2D(image, cv2.CV_64F, kernel, kernel, dst=out[i], borderType=cv2.BORDER_REFLECT_101)
    return out.reshape(images.shape)


def pyr_down(images: np.ndarray) -> np.ndarray:
    """Blur and keep every second pixel: (..., H, W) -> (..., ceil(H/2), ceil(W/2))."""
    return _blur(images)[..., ::2, ::2]


def pyr_up(images: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Zero-insert to (..., *shape) then blur with 2x the kernel per axis (keeps mean intensity)."""
    up = np.zeros(images.shape[:-2] + tuple(shape), dtype=np.float64)
    up[..., ::2, ::2] = images
    return _blur(up, scale=2.0)


def max_levels(shape: tuple[int, int]) -> int:
    """Largest number of pyramid levels for an (H, W) image: down-sample while both sides are >= 2."""
    h, w = shape
    levels = 0
    while min(h, w) >= 2:
        h, w = (h + 1) // 2, (w + 1) // 2
        levels += 1
    return levels


def laplacian_pyramid(images: np.ndarray, levels: int) -> list[np.ndarray]:
    """Laplacian pyramid of (..., H, W) images: ``levels`` detail bands (finest first) + the base."""
    current = np.asarray(images, dtype=np.float64)
    bands = []
    for _ in range(levels):
        coarser = pyr_down(current)
        bands.append(current - pyr_up(coarser, current.shape[-2:]))
        current = coarser
    bands.append(current)
    return bands


def reconstruct_pyramid(bands: list[np.ndarray]) -> np.ndarray:
    """Invert :func:`laplacian_pyramid`: detail bands (finest first) + base -> (..., H, W) float64."""
    current = bands[-1]
    for detail in reversed(bands[:-1]):
        current = detail + pyr_up(current, detail.shape[-2:])
    return current


def select_max_abs(coefficients: np.ndarray, axis: int = 1) -> np.ndarray:
    """Per element, the coefficient with the largest magnitude along ``axis`` (that axis removed)."""
    index = np.expand_dims(np.abs(coefficients).argmax(axis=axis), axis)
    return np.take_along_axis(coefficients, index, axis=axis).squeeze(axis)


def laplacian_rule(sources: np.ndarray, levels: int = 4) -> np.ndarray:
    """Laplacian-pyramid fusion: (N, C, H, W) in [0, 1] -> (N, H, W) float32 clipped to [0, 1].

    ``levels`` is capped at what the image size allows (see :func:`max_levels`).
    """
    levels = max(0, min(int(levels), max_levels(sources.shape[-2:])))
    bands = laplacian_pyramid(sources, levels)
    fused = [select_max_abs(band, axis=1) for band in bands[:-1]]
    fused.append(bands[-1].mean(axis=1))
    return np.clip(reconstruct_pyramid(fused), 0.0, 1.0).astype(np.float32)
