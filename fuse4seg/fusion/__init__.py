"""Classical image-fusion rules (mean, max, PCA, Laplacian pyramid, wavelet) for any number of sources.

Every rule maps sources (N, C, H, W) float in [0, 1] to one fused image per item, (N, H, W)
float32 in [0, 1]. :func:`fuse_images` is the single-image entry point, :func:`fuse_batch` the
batched one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fuse4seg.errors import ConfigError, DataError
from fuse4seg.fusion.pyramid import laplacian_pyramid, laplacian_rule, reconstruct_pyramid
from fuse4seg.fusion.rules import max_rule, mean_rule, pca_rule, pca_weights
from fuse4seg.fusion.wavelet import wavelet_rule

FUSION_RULES: dict[str, Callable[..., np.ndarray]] = {
    "mean": mean_rule,
    "max": max_rule,
    "pca": pca_rule,
    "laplacian": laplacian_rule,
    "wavelet": wavelet_rule,
}


def get_rule(method: str) -> Callable[..., np.ndarray]:
    """The rule registered as ``method``; ConfigError naming the known rules otherwise."""
    try:
        return FUSION_RULES[method]
    except KeyError:
        raise ConfigError(
            f"unknown fusion method {method!r}: expected one of {', '.join(FUSION_RULES)}"
        ) from None


def fuse_batch(sources: np.ndarray, method: str = "laplacian", **options: object) -> np.ndarray:
    """Fuse a batch: sources (N, C, H, W) float in [0, 1] -> (N, H, W) float32 in [0, 1]."""
    rule = get_rule(method)
    sources = np.asarray(sources)
    if sources.ndim != 4 or min(sources.shape) < 1:
        raise DataError(f"fusion sources must be a non-empty (N, C, H, W) array, got shape {sources.shape}")
    if not np.isfinite(sources).all():
        raise DataError("fusion sources contain NaN or infinite values")
    return np.clip(rule(sources.astype(np.float32, copy=False), **options), 0.0, 1.0).astype(np.float32)


def fuse_images(sources: np.ndarray, method: str = "laplacian", **options: object) -> np.ndarray:
    """Fuse one image: sources (C, H, W) float in [0, 1] -> (H, W) float32 in [0, 1]."""
    sources = np.asarray(sources)
    if sources.ndim != 3:
        raise DataError(f"fusion sources must be a (C, H, W) array, got shape {sources.shape}")
    return fuse_batch(sources[None], method, **options)[0]


__all__ = [
    "FUSION_RULES",
    "fuse_batch",
    "fuse_images",
    "get_rule",
    "laplacian_pyramid",
    "pca_weights",
    "reconstruct_pyramid",
]
