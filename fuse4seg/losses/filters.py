"""Differentiable image filters behind the fusion losses: Sobel gradients, band split, SSIM maps.

All functions take (N, C, H, W) float tensors and treat every channel as its own image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fuse4seg.errors import ConfigError

# split_bands / max_abs_select live with the fusion network that shares them; re-exported here.
from fuse4seg.models.blocks import max_abs_select, split_bands

__all__ = [
    "SOBEL_PADDING", "WINDOWS", "check_pair", "forward_differences", "gradient_magnitude", "max_abs_select", "sobel_gradients",
    "split_bands", "ssim", "ssim_window",
]

WINDOWS: tuple[str, ...] = ("gaussian", "uniform")

#: Border modes of :func:`sobel_gradients`: F.pad's "replicate", or "zeros" (CDDFuse's zero-padded convolution).
SOBEL_PADDING: tuple[str, ...] = ("replicate", "zeros")


def sobel_gradients(x: torch.Tensor, padding: str = "replicate") -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel derivatives (gx along W, gy along H) of (N, C, H, W); same shapes, intensity units per pixel.

    With ``padding="replicate"`` borders repeat the edge pixel, which for a 3x3 kernel equals
    scipy.ndimage.sobel's default ``mode="reflect"``; gx == sobel(img, axis=1), gy == sobel(img, axis=0).
    ``padding="zeros"`` pads with 0 (CDDFuse's convolution, as the Qabf metric uses it).
    """
    if padding not in SOBEL_PADDING:
        raise ConfigError(f"option 'padding' must be one of {', '.join(SOBEL_PADDING)}, got {padding!r}")
    # Differences of shifted slices rather than a grouped 3x3 convolution: the same sums, several times faster on CPU
    # forward and backward (mkldnn's depthwise convolution is slow for small kernels).
    p = F.pad(x, (1, 1, 1, 1), mode="replicate") if padding == "replicate" else F.pad(x, (1, 1, 1, 1))
    dx = p[..., :, 2:] - p[..., :, :-2]
    dy = p[..., 2:, :] - p[..., :-2, :]
    return dx[..., :-2, :] + 2.0 * dx[..., 1:-1, :] + dx[..., 2:, :], dy[..., :, :-2] + 2.0 * dy[..., :, 1:-1] + dy[..., :, 2:]


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """|gx| + |gy| of the Sobel derivatives of (N, C, H, W) (the L1 magnitude CDDFuse and U2Fusion use)."""
    gx, gy = sobel_gradients(x)
    return gx.abs() + gy.abs()


def forward_differences(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences (dx along W, dy along H) of (N, C, H, W), zero in the last column/row."""
    dx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1, 0, 0))
    dy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    return dx, dy


def ssim_window(window: str = "gaussian", win_size: int | None = None, sigma: float = 1.5) -> torch.Tensor:
    """2-D SSIM window (K, K), float64, summing to 1, matching skimage.metrics.structural_similarity.

    "gaussian": K = 2 * int(3.5 * sigma + 0.5) + 1 (skimage's truncate 3.5; 11 for sigma 1.5) unless
    ``win_size`` is given; "uniform": K = ``win_size`` (default 7).
    """
    if window == "gaussian":
        k = win_size if win_size is not None else 2 * int(3.5 * sigma + 0.5) + 1
        t = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
        g = torch.exp(-0.5 * (t / sigma) ** 2)
        w = torch.outer(g, g)
    elif window == "uniform":
        k = win_size if win_size is not None else 7
        w = torch.ones(k, k, dtype=torch.float64)
    else:
        raise ConfigError(f"option 'window' must be one of {', '.join(WINDOWS)}, got {window!r}")
    if k < 3 or k % 2 == 0:
        raise ConfigError(f"option 'win_size' must be an odd integer >= 3, got {k}")
    return w / w.sum()


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    window: str = "gaussian",
    win_size: int | None = None,
    sigma: float = 1.5,
    data_range: float = 1.0,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Mean SSIM per image and channel of (N, C, H, W) pairs -> (N, C), as skimage computes it.

    Local statistics over the window (sample covariance, N/(N-1) with N = K*K, as skimage's
    ``use_sample_covariance=True``), averaged over the valid region (skimage crops (K-1)/2 pixels
    at each border). Images must be at least K x K.
    """
    if x.shape != y.shape:
        raise ConfigError(f"ssim: shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    w = ssim_window(window, win_size, sigma).to(dtype=x.dtype, device=x.device)
    k = w.shape[0]
    if min(x.shape[-2:]) < k:
        raise ConfigError(f"ssim: images of {tuple(x.shape[-2:])} pixels are smaller than the {k}x{k} window")
    n, c = x.shape[:2]
    # All five local statistics in one grouped convolution: channels (x, y, xx, yy, xy) per image.
    stack = torch.stack([x, y, x * x, y * y, x * y], dim=2).reshape(n, 5 * c, *x.shape[-2:])
    m = F.conv2d(stack, w.expand(5 * c, 1, k, k), groups=5 * c).reshape(n, c, 5, -1)
    ux, uy, uxx, uyy, uxy = m.unbind(dim=2)
    cov_norm = k * k / (k * k - 1.0)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=-1)


def check_pair(fused: torch.Tensor, sources: torch.Tensor) -> None:
    """ConfigError unless fused is (N, 1, H, W) and sources (N, C, H, W) with matching N, H, W."""
    if fused.dim() != 4 or fused.shape[1] != 1:
        raise ConfigError(f"fused must have shape (N, 1, H, W), got {tuple(fused.shape)}")
    if sources.dim() != 4 or sources.shape[0] != fused.shape[0] or sources.shape[-2:] != fused.shape[-2:]:
        n, _, h, w = fused.shape
        raise ConfigError(
            f"sources must have shape (N, C, H, W) = ({n}, C, {h}, {w}), got {tuple(sources.shape)}"
        )
