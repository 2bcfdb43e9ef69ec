"""The differentiable Qabf loss (fuse4seg.losses.qabf) against the Qabf metric, and its gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fuse4seg.losses import fusion_loss
from fuse4seg.losses.qabf import qabf_loss, qabf_per_image
from fuse4seg.metrics.fusion_structure import qabf


def _images(n: int = 3, size: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random sources (N, 2, H, W) and a fused image (N, 1, H, W), float64 in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 4, size // 4, generator=g, dtype=torch.float64)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return smooth[:, :1], smooth[:, 1:]


def test_value_is_the_metric() -> None:
    """Per image, the loss's Qabf equals the metric's on the same image scaled to [0, 255], to 1e-6."""
    fused, sources = _images()
    mine = qabf_per_image(fused, sources).numpy()
    ref = [qabf(fused[i, 0].numpy() * 255.0, sources[i].numpy() * 255.0) for i in range(len(fused))]
    np.testing.assert_allclose(mine, ref, atol=1e-6)
    assert float(qabf_loss(fused, sources)) == pytest.approx(1.0 - float(np.mean(ref)), abs=1e-6)


def test_a_copy_of_one_source_keeps_its_edges() -> None:
    """F = source A: every edge of A is kept (Q^{AF} ~ 0.9994 * 0.9879 where A has edges), so Qabf of a
    single source against itself is that product; a flat image keeps only the border that zero padding makes."""
    _, sources = _images()
    a = sources[:, :1]
    assert qabf_per_image(a, a).numpy() == pytest.approx(0.9994 * 0.9879 / (1 + np.exp(-22 * 0.2)), rel=1e-3)
    flat = torch.full_like(a, 0.5)
    ref = [qabf(flat[i, 0].numpy() * 255.0, sources[i].numpy() * 255.0) for i in range(len(a))]
    np.testing.assert_allclose(qabf_per_image(flat, sources).numpy(), ref, atol=1e-6)
    assert max(ref) < 0.3


def test_gradient_matches_finite_differences() -> None:
    """torch.autograd.gradcheck in float64 on a small image (no ties, Sobel x response non-zero)."""
    fused, sources = _images(n=1, size=10, seed=3)
    fused = (fused + 0.01 * torch.rand_like(fused)).requires_grad_()
    assert torch.autograd.gradcheck(lambda f: qabf_loss(f, sources), (fused,), eps=1e-7, atol=1e-5)


def test_off_by_default_and_weighted_when_asked() -> None:
    """The default fusion loss leaves it out (bit-for-bit the old total); weighted 2, the total grows by 2 x it."""
    fused, sources = _images()
    total, parts = fusion_loss(fused.float(), sources.float())
    assert "qabf" not in parts
    more, parts2 = fusion_loss(fused.float(), sources.float(), {"qabf": 2.0})
    assert float(more - total) == pytest.approx(2.0 * float(parts2["qabf"]), rel=1e-5)
