"""Qabf (Xydeas & Petrovic edge preservation) as a differentiable loss: 1 - Qabf of each fused image, batch mean.

The forward value is the metric :func:`fuse4seg.metrics.fusion_structure.qabf` reports (CDDFuse's convention:
images scaled to [0, 255], zero-padded Sobel responses, orientation arctan(SAy / SAx) with pi/2 where SAx = 0,
the same sigmoid constants and the same tie quirk), so a fusion net trained on it is judged by the metric it
optimised; the tests hold the two to 1e-6. Its gradient exists wherever the fused image's Sobel response is not
zero in x (arctan) and its strength differs from the source's (the min / max ratio); a 1e-12 floor inside the
square root keeps flat fused regions finite.
"""

from __future__ import annotations

import math

import torch

from fuse4seg.losses.filters import check_pair, sobel_gradients

# Qabf sigmoid constants (L = 1), as in fuse4seg.metrics.fusion_structure.
_QG, _KG, _DG = 0.9994, -15.0, 0.5
_QA, _KA, _DA = 0.9879, -22.0, 0.8
#: The metric scores 8-bit images: strengths (and the tie quirk) depend on that scale.
_SCALE = 255.0


def sobel_strength_angle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) -> Sobel strength and orientation (radians), CDDFuse's zero-padded convolution."""
    gx, sy = sobel_gradients(x, padding="zeros")
    sx = -gx  # CDDFuse's kernel is the mirror image of scipy's along W
    strength = torch.sqrt(sx * sx + sy * sy + 1e-12)
    flat = sx == 0
    angle = torch.where(flat, torch.full_like(sx, math.pi / 2), torch.atan(sy / torch.where(flat, 1.0, sx)))
    return strength, angle


def qabf_per_image(fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """Qabf of each fused image (N, 1, H, W) against its sources (N, C, H, W), both in [0, 1] -> (N,)."""
    check_pair(fused, sources)
    g_f, a_f = sobel_strength_angle(fused * _SCALE)
    g_s, a_s = sobel_strength_angle(sources * _SCALE)
    g_s, a_s = g_s.detach(), a_s.detach()
    rel = torch.minimum(g_s, g_f) / torch.maximum(g_s, g_f)
    rel = torch.where(g_s == g_f, g_f.expand_as(rel), rel)  # the metric's tie quirk
    q_g = _QG / (1.0 + torch.exp(_KG * (rel - _DG)))
    q_a = _QA / (1.0 + torch.exp(_KA * (1.0 - (a_s - a_f).abs() / (math.pi / 2) - _DA)))
    weight = g_s - 1e-6  # the 1e-12 floor made flat source pixels 1e-6 strong; their weight is 0, as in the metric
    return (q_g * q_a * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3)).clamp_min(1e-12)


def qabf_loss(fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """1 - Qabf, mean over the batch: 0 when every source edge is kept in strength and orientation."""
    return 1.0 - qabf_per_image(fused, sources).mean()
