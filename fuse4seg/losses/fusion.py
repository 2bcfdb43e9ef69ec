"""Fusion losses: each compares a fused image (N, 1, H, W) with its sources (N, C, H, W), all in [0, 1].

Every loss is a differentiable scalar (mean over batch and pixels), zero or minimal when the fused
image is what the loss asks for. :func:`fusion_loss` combines them with :data:`DEFAULT_FUSION_WEIGHTS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from fuse4seg.errors import ConfigError
from fuse4seg.losses.filters import (
    check_pair,
    forward_differences,
    gradient_magnitude,
    max_abs_select,
    split_bands,
    ssim,
)
from fuse4seg.losses.qabf import qabf_loss
from fuse4seg.losses.segmentation import Reduce, at_least_fp32, reduce_together

INTENSITY_TARGETS: tuple[str, ...] = ("max", "mix")
LOW_TARGETS: tuple[str, ...] = ("mean", "max")


def intensity_loss(
    fused: torch.Tensor, sources: torch.Tensor, target: str = "max", mix: Sequence[float] | None = None
) -> torch.Tensor:
    """Mean |fused - T|, T = element-wise max of the sources ("max") or their weighted mean ("mix").

    ``mix``: one non-negative weight per source (normalised to sum 1; default equal weights).
    """
    check_pair(fused, sources)
    if target == "max":
        reference = sources.amax(dim=1, keepdim=True)
    elif target == "mix":
        c = sources.shape[1]
        w = torch.full((c,), 1.0 / c) if mix is None else torch.as_tensor(mix, dtype=torch.float32)
        if w.shape != (c,) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ConfigError(
                f"option 'mix' must be {c} non-negative weights with a positive sum, got {mix!r}"
            )
        w = (w / w.sum()).to(dtype=sources.dtype, device=sources.device)
        reference = (sources * w.view(1, c, 1, 1)).sum(dim=1, keepdim=True)
    else:
        raise ConfigError(f"option 'target' must be one of {', '.join(INTENSITY_TARGETS)}, got {target!r}")
    return F.l1_loss(fused, reference)


def gradient_loss(fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """Mean | |grad fused| - max_c |grad source_c| |; |grad| = |Sobel x| + |Sobel y| (as in CDDFuse)."""
    check_pair(fused, sources)
    return F.l1_loss(gradient_magnitude(fused), gradient_magnitude(sources).amax(dim=1, keepdim=True))


def ssim_loss(fused: torch.Tensor, sources: torch.Tensor, **ssim_options: Any) -> torch.Tensor:
    """Mean over sources and batch of 1 - SSIM(fused, source_c), SSIM as :func:`fuse4seg.losses.filters.ssim`
    (``ssim_options``: its window, win_size, sigma, data_range, k1, k2).

    Defaults: Gaussian window sigma 1.5 (11 x 11), K1 0.01, K2 0.03, data range 1.
    """
    check_pair(fused, sources)
    return 1.0 - ssim(fused.expand_as(sources), sources, **ssim_options).mean()


def frequency_loss(
    fused: torch.Tensor, sources: torch.Tensor, sigma: float = 2.0, low: str = "mean"
) -> torch.Tensor:
    """Frequency decomposition loss: L1(low(fused), low target) + L1(high(fused), max-abs high of sources).

    Bands as in the ``fusion-freq`` network: low = Gaussian blur (std ``sigma`` px), high = image
    minus low. The low-frequency target is the mean (default: keeps the overall contrast of both
    sources) or the max of the sources' low parts; the high-frequency target takes, per pixel, the
    source detail of largest magnitude, so edges of every source survive.
    """
    check_pair(fused, sources)
    f_low, f_high = split_bands(fused, sigma)
    s_low, s_high = split_bands(sources, sigma)
    if low == "mean":
        low_target = s_low.mean(dim=1, keepdim=True)
    elif low == "max":
        low_target = s_low.amax(dim=1, keepdim=True)
    else:
        raise ConfigError(f"option 'low' must be one of {', '.join(LOW_TARGETS)}, got {low!r}")
    return F.l1_loss(f_low, low_target) + F.l1_loss(f_high, max_abs_select(s_high))


def spatial_gradient_loss(fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """Gradient-domain consistency: mean |dx_f - dx_t| + |dy_f - dy_t| (forward differences).

    The target gradient (dx_t, dy_t) is, per pixel, the whole gradient vector of the source with
    the largest gradient norm there. Unlike :func:`gradient_loss` (magnitudes only), the sign and
    direction of each edge must match, so a fused image cannot satisfy it with inverted contrast.
    """
    check_pair(fused, sources)
    fx, fy = forward_differences(fused)
    sx, sy = forward_differences(sources)
    norm = torch.sqrt(sx * sx + sy * sy)
    return F.l1_loss(fx, max_abs_select(sx, key=norm)) + F.l1_loss(fy, max_abs_select(sy, key=norm))


#: Default weights of :func:`fusion_loss`. Intensity 1 and Sobel gradient 10 are CDDFuse's
#: ``loss_in + 10 * loss_grad``; SSIM 1; frequency 1; spatial gradient 10 (forward differences are
#: several times smaller than Sobel responses). Edge terms dominate on purpose: training
#: ``fusion-cnn`` for 150 Adam steps on phantom T1ce + FLAIR slices with these weights gave higher
#: Qabf / VIF / MI (0.79 / 1.00 / 2.53) than all-ones weights (0.73 / 0.91 / 2.43), at a 0.02 lower
#: SSIM sum.
DEFAULT_FUSION_WEIGHTS: dict[str, float] = {
    "intensity": 1.0,
    "gradient": 10.0,
    "ssim": 1.0,
    "frequency": 1.0,
    "spatial_gradient": 10.0,
    # 1 - Qabf, the edge-preservation metric itself (off by default; issue 23's study weighs it against
    # segmentation): unlike the gradient terms, which the max and Laplacian rules minimise, it prefers images
    # that keep each source's edges at their own strength.
    "qabf": 0.0,
}

#: name -> loss(fused, sources) -> scalar; :func:`register_fusion_loss` adds to it (and to the weights above).
FUSION_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "intensity": intensity_loss,
    "gradient": gradient_loss,
    "ssim": ssim_loss,
    "frequency": frequency_loss,
    "spatial_gradient": spatial_gradient_loss,
    "qabf": qabf_loss,
}


#: The built-in loss names: they cannot be replaced or removed.
BUILT_IN_FUSION_LOSSES: frozenset[str] = frozenset(FUSION_LOSSES)


def _check_weight(name: str, value: object) -> float:
    """``value`` as a float; ConfigError unless it is a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
        raise ConfigError(f"fusion loss weight {name!r} must be a finite number >= 0, got {value!r}")
    return float(value)


def register_fusion_loss(name: str, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                         default_weight: float = 0.0, *, replace: bool = False) -> Callable:
    """Add the fusion loss ``fn(fused, sources) -> scalar tensor`` under ``name`` with weight ``default_weight``.

    ``fn`` takes the fused image (N, 1, H, W) and the sources (N, C, H, W) in [0, 1] (volumes arrive as their
    axial planes, as for the built-in terms) and returns a differentiable mean over the batch. Afterwards
    ``fusion_loss_weights = {name = w}`` in a TOML config (or ``TrainConfig(fusion_loss_weights={name: w})``)
    weighs it in :func:`fusion_loss`, which reports it among its components whenever its weight is > 0. With the
    default weight 0 every existing configuration computes exactly what it did before. Returns ``fn``.
    ConfigError for a built-in name, a name already registered without ``replace=True``, a non-callable ``fn``
    or a weight that is not a finite number >= 0.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"fusion loss name must be an identifier (a TOML key such as my_loss), got {name!r}")
    if not callable(fn):
        raise ConfigError(f"fusion loss {name!r} must be callable as fn(fused, sources), got {type(fn).__name__}")
    weight = _check_weight(name, default_weight)
    if name in BUILT_IN_FUSION_LOSSES:
        raise ConfigError(f"fusion loss {name!r} is built in and cannot be replaced; choose another name")
    if name in FUSION_LOSSES and not replace and FUSION_LOSSES[name] is not fn:
        raise ConfigError(f"fusion loss {name!r} is already registered (pass replace=True to replace it)")
    FUSION_LOSSES[name] = fn
    DEFAULT_FUSION_WEIGHTS[name] = weight
    return fn


def unregister_fusion_loss(name: str) -> None:
    """Remove the fusion loss ``name`` added by :func:`register_fusion_loss`; ConfigError for a built-in or
    unknown name."""
    if name in BUILT_IN_FUSION_LOSSES:
        raise ConfigError(f"fusion loss {name!r} is built in and cannot be removed")
    if FUSION_LOSSES.pop(name, None) is None:
        raise ConfigError(f"fusion loss {name!r} is not registered")
    DEFAULT_FUSION_WEIGHTS.pop(name, None)


def resolve_fusion_weights(weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """Defaults updated with ``weights``; ConfigError for unknown names or negative/non-finite weights."""
    resolved = dict(DEFAULT_FUSION_WEIGHTS)
    for name, value in (weights or {}).items():
        if name not in FUSION_LOSSES:
            raise ConfigError(
                f"unknown fusion loss {name!r} in weights: expected some of {', '.join(FUSION_LOSSES)}"
            )
        resolved[name] = _check_weight(name, value)
    return resolved


def _planes(volume: torch.Tensor) -> torch.Tensor:
    """(N, C, D, H, W) -> (N * D, C, H, W): each axial plane an image of the batch."""
    n, c, d, h, w = volume.shape
    return volume.movedim(2, 1).reshape(n * d, c, h, w)


def fusion_loss(
    fused: torch.Tensor, sources: torch.Tensor, weights: Mapping[str, float] | None = None,
    reduce: Reduce | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the fusion losses -> (total scalar, {name: unweighted component}).

    ``fused`` (N, 1, H, W) and ``sources`` (N, C, H, W); or volumes (N, 1, D, H, W) and (N, C, D, H, W), whose
    terms are the 2-D ones applied slice-wise: the D axial planes are folded into the batch, (N * D, C, H, W),
    so every component is the mean over all planes (no gradient or SSIM window across planes).

    ``weights`` overrides entries of :data:`DEFAULT_FUSION_WEIGHTS` (others keep their default);
    a weight of 0 skips that loss, which then does not appear in the components. Half-precision
    inputs (autocast) are computed in fp32. ``reduce`` (a sharded batch, see
    :data:`fuse4seg.losses.segmentation.Reduce`): each component becomes the mean over every shard,
    weighted by shard size (every component is a mean over items of equal size, so this is the mean
    over the whole batch).
    """
    fused, sources = at_least_fp32(fused), at_least_fp32(sources)
    if fused.dim() == 5 and sources.dim() == 5:
        fused, sources = _planes(fused), _planes(sources)
    check_pair(fused, sources)
    resolved = resolve_fusion_weights(weights)
    parts = {name: FUSION_LOSSES[name](fused, sources) for name, w in resolved.items() if w > 0}
    if reduce is not None and parts:
        n = fused.new_tensor(float(fused.shape[0]))
        *sums, total_n = reduce_together(reduce, [*(v * n for v in parts.values()), n])
        parts = {name: value / total_n for name, value in zip(parts, sums)}
    total = sum((resolved[name] * value for name, value in parts.items()), fused.new_zeros(()))
    return total, parts
