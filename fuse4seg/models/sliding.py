"""Sliding-window inference: predict a whole volume patch by patch, blending overlapping windows.

The algorithm is MONAI's ``monai.inferers.sliding_window_inference`` (constant padding, blend
modes "constant" and "gaussian"), re-implemented so that MONAI stays a test-only dependency:

- a volume smaller than the patch along an axis is zero-padded symmetrically (the extra voxel of
  an odd difference after) and the output cropped back;
- along each axis the windows start every ``int(patch * (1 - overlap))`` voxels (at least 1), the
  last one moved back to end at the volume's edge;
- each window's prediction is multiplied by an importance map (ones, or a separable Gaussian of
  standard deviation ``sigma_scale * patch`` peaking at the window centre, clamped below at
  max(its minimum, 1e-3)), summed into the output and divided by the summed map.

Pure tensor code on the volume's device and dtype; runs under the caller's grad mode (wrap it in
``torch.no_grad()`` for inference).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import reduce
from itertools import product

import torch
import torch.nn.functional as F

from fuse4seg.errors import ConfigError
from fuse4seg.models.blocks import check_choice, check_positive_float, check_positive_int

#: How overlapping windows are blended: "constant" (plain mean) or "gaussian" (centre-weighted).
BLEND_MODES: tuple[str, ...] = ("constant", "gaussian")
# Lower bound of the Gaussian importance map (MONAI's): window corners keep a non-zero weight, so
# a voxel covered only by window edges is still a weighted mean, never 0 / 0.
_MIN_WEIGHT = 1e-3


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start offsets (voxels) of the windows of length ``patch`` <= ``size`` along one axis: every
    ``max(1, int(patch * (1 - overlap)))``, the last one clipped to end at ``size``."""
    step = max(1, int(patch * (1 - overlap)))
    count = math.ceil((size - patch) / step) + 1
    return [min(i * step, size - patch) for i in range(count)]


def importance_map(patch: tuple[int, ...], mode: str = "gaussian", sigma_scale: float = 0.125,
                   dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Blending weights of one window, shape ``patch``: ones ("constant"), or the product of 1-D Gaussians
    exp(-x^2 / (2 (sigma_scale * p)^2)) over centred voxel coordinates x ("gaussian", 1 at the centre),
    clamped below at max(min, 1e-3); computed in float32 (as MONAI does), returned in ``dtype``."""
    mode = check_choice("mode", mode, BLEND_MODES)
    if mode == "constant":
        weights = torch.ones(patch, dtype=torch.float32, device=device)
    else:
        axes = []
        for i, p in enumerate(patch):
            x = torch.arange(-(p - 1) / 2.0, (p - 1) / 2.0 + 1, dtype=torch.float32, device=device)
            shape = [1] * len(patch)
            shape[i] = p
            axes.append(torch.exp(x**2 / (-2 * (p * sigma_scale) ** 2)).view(shape))
        weights = reduce(torch.mul, axes)
    return weights.clamp(min=max(float(weights.min()), _MIN_WEIGHT)).to(dtype)


def _check_overlap(overlap: object) -> float:
    """Return ``overlap`` as a float in [0, 1); ConfigError otherwise."""
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap < 1:
        raise ConfigError(f"must be a number in [0, 1), got {overlap!r}", option="overlap")
    return float(overlap)


def sliding_window(
    predict: Callable[[torch.Tensor], torch.Tensor],
    volume: torch.Tensor,
    patch: tuple[int, ...],
    overlap: float = 0.5,
    mode: str = "gaussian",
    sigma_scale: float = 0.125,
    batch_size: int = 4,
) -> torch.Tensor:
    """Predict (N, C, D, H, W) ``volume`` (or (N, C, H, W) with a 2-D ``patch``) window by window:
    ``predict`` maps (B, C, *patch) to (B, K, *patch); returns (N, K, D, H, W) blended predictions in the
    volume's dtype. ``overlap`` in [0, 1) is the fraction of a patch shared by neighbouring windows,
    ``mode`` "gaussian" or "constant" weighting, ``sigma_scale`` the Gaussian's standard deviation as a
    fraction of the patch, ``batch_size`` windows per ``predict`` call (windows of several volumes mix)."""
    if volume.dim() < 3 or volume.shape[0] == 0:
        raise ConfigError(f"must have shape (N >= 1, C, *spatial), got {tuple(volume.shape)}", option="volume")
    dims = volume.dim() - 2
    if not isinstance(patch, (tuple, list)) or len(patch) != dims:
        raise ConfigError(f"must give {dims} sizes for a volume of shape {tuple(volume.shape)}, got {patch!r}",
                          option="patch")
    patch = tuple(check_positive_int("patch", p) for p in patch)
    overlap = _check_overlap(overlap)
    mode = check_choice("mode", mode, BLEND_MODES)
    sigma_scale = check_positive_float("sigma_scale", sigma_scale)
    batch_size = check_positive_int("batch_size", batch_size)

    n, size = volume.shape[0], tuple(volume.shape[2:])
    # Symmetric zero padding where the volume is smaller than the patch; F.pad lists the last axis first.
    before = [max(p - s, 0) // 2 for p, s in zip(patch, size)]
    after = [max(p - s, 0) - b for p, s, b in zip(patch, size, before)]
    if any(before) or any(after):
        volume = F.pad(volume, [v for b, a in zip(reversed(before), reversed(after)) for v in (b, a)])
    padded = tuple(volume.shape[2:])
    # Last axis fastest, as MONAI orders its windows.
    windows = [tuple(slice(s, s + p) for s, p in zip(starts, patch))
               for starts in product(*(window_starts(s, p, overlap) for s, p in zip(padded, patch)))]
    weights = importance_map(patch, mode, sigma_scale, volume.dtype, volume.device)

    jobs = [(i, w) for i in range(n) for w in windows]  # every volume's windows, volume-major
    out: torch.Tensor | None = None
    for first in range(0, len(jobs), batch_size):
        chunk = jobs[first : first + batch_size]
        pred = predict(torch.cat([volume[(slice(i, i + 1), slice(None), *w)] for i, w in chunk]))
        if not isinstance(pred, torch.Tensor) or pred.dim() != dims + 2 or pred.shape[0] != len(chunk) \
                or tuple(pred.shape[2:]) != patch:
            got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
            raise ConfigError(f"must map ({len(chunk)}, C, *{patch}) windows to ({len(chunk)}, K, *{patch}), "
                              f"got {got}", option="predict")
        if out is None:
            out = volume.new_zeros((n, pred.shape[1], *padded))
        pred = pred * weights
        for j, (i, w) in enumerate(chunk):
            out[(i, slice(None), *w)] += pred[j]
    assert out is not None  # there is always at least one window
    count = volume.new_zeros(padded)
    for w in windows:
        count[w] += weights
    out = out / count
    return out[(slice(None), slice(None), *(slice(b, b + s) for b, s in zip(before, size)))]
