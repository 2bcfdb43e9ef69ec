"""The three pre-training objectives as pure functions on tensors (no modules, no state).

* :func:`info_nce`: cross-modal consistency; two modalities of one slice are a positive pair, every other
  slice of the batch a negative (symmetric InfoNCE on cosine similarities).
* :func:`masked_reconstruction_loss`: mean squared error over the hidden pixels only.
* :func:`feature_alignment_loss`: per-location 1 - cosine similarity of two feature maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fuse4seg.errors import ConfigError

#: Norm floor of the cosine similarities (a zero vector has similarity 0 to everything, not NaN).
EPS = 1e-8


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE of (N, D) embeddings ``a`` and ``b`` (row i of each: the same slice), N >= 1.

    logits[i, j] = cos(a_i, b_j) / ``temperature`` (> 0); the loss is the mean of the cross-entropy of each
    row of logits against its diagonal (a -> b) and of each column (b -> a). Scalar in [0, inf): log(N) for
    embeddings that carry no information, near 0 when every pair is far more similar than any non-pair.
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise ConfigError(f"info_nce expects two (N, D) embeddings of one shape, got {tuple(a.shape)} and "
                          f"{tuple(b.shape)}")
    if not temperature > 0:
        raise ConfigError(f"must be > 0, got {temperature!r}", option="temperature")
    logits = F.normalize(a, dim=1, eps=EPS) @ F.normalize(b, dim=1, eps=EPS).T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def masked_reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (pred - target)^2 over the pixels where ``mask`` is true; visible pixels do not count.

    ``pred`` and ``target``: one shape, e.g. (N, 1, H, W) intensities in [0, 1]; ``mask``: bool, broadcastable
    to it. Scalar in [0, inf) (in [0, 1] for values in [0, 1]); 0, still attached to ``pred``'s graph, when
    no pixel is masked.
    """
    if pred.shape != target.shape:
        raise ConfigError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    weight = torch.broadcast_to(mask, pred.shape).to(pred.dtype)
    squared = (pred - target) ** 2 * weight
    return squared.sum() / weight.sum().clamp_min(1.0)


def feature_alignment_loss(features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
    """Mean over batch and locations of 1 - cosine similarity over the channels of (N, C, *S) feature maps.

    Scalar in [0, 2]: 0 where the two maps point the same way at every location (any positive scale),
    1 where they are orthogonal (or one is zero), 2 where they are opposite.
    """
    if features_a.shape != features_b.shape or features_a.dim() < 2:
        raise ConfigError(f"feature_alignment_loss expects two (N, C, ...) maps of one shape, got "
                          f"{tuple(features_a.shape)} and {tuple(features_b.shape)}")
    return (1.0 - F.cosine_similarity(features_a, features_b, dim=1, eps=EPS)).mean()
