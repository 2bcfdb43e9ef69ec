"""Pixel-wise classical fusion rules (mean, max, PCA) on batches of source images."""

from __future__ import annotations

import numpy as np


def mean_rule(sources: np.ndarray) -> np.ndarray:
    """Average of the sources: (N, C, H, W) in [0, 1] -> (N, H, W) float32."""
    return sources.mean(axis=1, dtype=np.float64).astype(np.float32)


def max_rule(sources: np.ndarray) -> np.ndarray:
    """Element-wise maximum over the sources: (N, C, H, W) in [0, 1] -> (N, H, W) float32."""
    return sources.max(axis=1).astype(np.float32)


def pca_weights(sources: np.ndarray) -> np.ndarray:
    """PCA fusion weights (N, C), summing to 1 per image, from the principal eigenvector of the
    (C, C) covariance of each image's sources (N, C, H, W).

    The eigenvector's components are taken in absolute value so the weights form a convex
    combination (for two positively correlated sources this is the classical rule). Images whose
    sources have no variance at all get equal weights.
    """
    n, c = sources.shape[:2]
    flat = sources.reshape(n, c, -1).astype(np.float64)
    centred = flat - flat.mean(axis=2, keepdims=True)
    cov = np.einsum("nip,njp->nij", centred, centred) / max(flat.shape[2] - 1, 1)
    _, vectors = np.linalg.eigh(cov)  # ascending eigenvalues: the last column is the principal one
    principal = np.abs(vectors[:, :, -1])
    total = principal.sum(axis=1, keepdims=True)
    flat_variance = np.trace(cov, axis1=1, axis2=2) <= 1e-20
    weights = np.where(total > 0, principal / np.where(total > 0, total, 1.0), 1.0 / c)
    weights[flat_variance] = 1.0 / c
    return weights


def pca_rule(sources: np.ndarray) -> np.ndarray:
    """PCA-weighted sum of the sources: (N, C, H, W) in [0, 1] -> (N, H, W) float32."""
    weights = pca_weights(sources)
    return np.einsum("nc,nchw->nhw", weights, sources.astype(np.float64)).astype(np.float32)
