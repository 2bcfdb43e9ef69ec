"""Building blocks shared by the networks: normalisation choice, conv blocks, pad-and-crop, blur.

Every block takes ``dims`` (2: (N, C, H, W) images, 3: (N, C, D, H, W) volumes) and picks the
2-D or 3-D torch layer from :data:`LAYERS`, so a 3-D network is its 2-D class built with
``dims=3``; the shape-generic helpers (padding, cropping, pooling, blur) read the number of
spatial axes from their input. Nothing here keeps running statistics (no BatchNorm), so every
block behaves the same in ``train()`` and ``eval()`` and under ``torch.func.functional_call``
with substituted parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fuse4seg.errors import ConfigError
from fuse4seg.models.convolution import LeanConv2d, LeanConv3d

NORMS: tuple[str, ...] = ("group", "instance", "none")
DIMS: tuple[int, ...] = (2, 3)


class Layers(NamedTuple):
    """The torch layer classes and max-pool function for one number of spatial dimensions."""

    conv: type[nn.Module]
    conv_transpose: type[nn.Module]
    instance_norm: type[nn.Module]
    max_pool: Callable[..., torch.Tensor]


#: spatial dimensions -> the layers a network of that many dimensions is built from (the convolutions are torch's
#: with a differentiated backward that skips an unrequested term: fuse4seg.models.convolution).
LAYERS: dict[int, Layers] = {
    2: Layers(LeanConv2d, nn.ConvTranspose2d, nn.InstanceNorm2d, F.max_pool2d),
    3: Layers(LeanConv3d, nn.ConvTranspose3d, nn.InstanceNorm3d, F.max_pool3d),
}


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` as an int >= ``minimum``; ConfigError naming the option otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"option {name!r} must be an integer >= {minimum}, got {value!r}")
    return value


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``; ConfigError naming the option otherwise."""
    if value not in choices:
        raise ConfigError(f"option {name!r} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def check_positive_float(name: str, value: object) -> float:
    """Return ``value`` as a finite float > 0; ConfigError naming the option otherwise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"option {name!r} must be a positive number, got {value!r}")
    return float(value)


def check_dims(dims: object) -> int:
    """Return ``dims`` if it is 2 or 3 (spatial dimensions); ConfigError otherwise."""
    if isinstance(dims, bool) or dims not in DIMS:
        raise ConfigError(f"option 'dims' must be one of {', '.join(map(str, DIMS))}, got {dims!r}")
    return int(dims)


def check_input(x: torch.Tensor, dims: int, channels: int) -> None:
    """ConfigError unless ``x`` is (N, channels, H, W) for dims 2 or (N, channels, D, H, W) for dims 3.

    Why: a 4-D batch given to a 3-D network would otherwise be read by Conv3d as one unbatched volume.
    """
    if x.dim() != dims + 2 or x.shape[1] != channels:
        axes = "H, W" if dims == 2 else "D, H, W"
        raise ConfigError(f"{dims}-D network expects input (N, {channels}, {axes}), got shape {tuple(x.shape)}")


def make_norm(kind: str, channels: int, groups: int = 8, dims: int = 2) -> nn.Module:
    """Normalisation layer over ``channels`` feature maps: GroupNorm, InstanceNorm (affine) or identity.

    GroupNorm uses gcd(groups, channels) groups so any width is valid; ``dims`` picks InstanceNorm2d/3d.
    """
    if kind == "group":
        return nn.GroupNorm(math.gcd(groups, channels), channels)
    if kind == "instance":
        # track_running_stats=False (the default): statistics come from the current image only.
        return LAYERS[dims].instance_norm(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"option 'norm' must be one of {', '.join(NORMS)}, got {kind!r}")


class ConvNormAct(nn.Sequential):
    """3x3 (x3) conv -> norm -> LeakyReLU(0.1); (N, in, *S) -> (N, out, *S) with ``dims`` spatial axes S."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "group", groups: int = 8,
                 dims: int = 2) -> None:
        """Build the block; the conv has a bias only when no normalisation follows it."""
        super().__init__(
            LAYERS[dims].conv(in_channels, out_channels, 3, padding=1, bias=norm == "none"),
            make_norm(norm, out_channels, groups, dims),
            nn.LeakyReLU(0.1),
        )


class DoubleConv(nn.Sequential):
    """Two ConvNormAct blocks, the UNet stage; (N, in, *S) -> (N, out, *S)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "group", groups: int = 8,
                 dims: int = 2) -> None:
        """Build the two blocks."""
        super().__init__(
            ConvNormAct(in_channels, out_channels, norm, groups, dims),
            ConvNormAct(out_channels, out_channels, norm, groups, dims),
        )


class SegmenterPlan(NamedTuple):
    """Validated options shared by the UNet-style segmenters; ``channels[i]`` = width * 2**i is the
    feature count at scale i (0 = full resolution, ``depth`` = bottleneck)."""

    in_channels: int
    num_classes: int
    depth: int
    norm: str
    channels: list[int]


def segmenter_plan(in_channels: object, num_classes: object, width: object, depth: object,
                   norm: object) -> SegmenterPlan:
    """Check the segmenter options (ConfigError naming the bad one) and derive the channel plan."""
    in_channels = check_positive_int("in_channels", in_channels)
    num_classes = check_positive_int("num_classes", num_classes)
    width = check_positive_int("width", width)
    depth = check_positive_int("depth", depth)
    norm = check_choice("norm", norm, ("group", "instance"))
    return SegmenterPlan(in_channels, num_classes, depth, norm, [width * 2**i for i in range(depth + 1)])


def unet_encoder(in_channels: int, channels: list[int], norm: str, dims: int = 2) -> nn.ModuleList:
    """UNet encoder stages: DoubleConv per scale, in_channels -> channels[0] -> ... -> channels[-1]."""
    return nn.ModuleList(
        DoubleConv(in_channels if i == 0 else channels[i - 1], c, norm, dims=dims) for i, c in enumerate(channels)
    )


def run_encoder(encoder: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
    """Features of (N, C, *S) ``x`` at every scale (2x max-pool between stages), finest first;
    every spatial size must divide 2**(len(encoder) - 1)."""
    max_pool = LAYERS[x.dim() - 2].max_pool
    features = []
    for i, stage in enumerate(encoder):
        x = stage(x if i == 0 else max_pool(x, 2))
        features.append(x)
    return features


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Zero-pad (N, C, *S) at the far end of every spatial axis so each size divides ``multiple``;
    returns (padded, S).

    Zero is the skull-stripped background value, so the padding looks like more background.
    """
    size = tuple(x.shape[2:])
    pads = [(-s) % multiple for s in size]
    if any(pads):
        # F.pad lists (before, after) pairs from the last axis backwards.
        x = F.pad(x, [p for pad in reversed(pads) for p in (0, pad)])
    return x, size


def crop_to(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Crop (N, C, *S') back to the leading corner of spatial size ``size`` (one entry per spatial axis)."""
    return x[(..., *(slice(0, s) for s in size))]


def gaussian_kernel1d(sigma: float, truncate: float = 3.0) -> torch.Tensor:
    """Normalised 1-D Gaussian taps of radius ceil(truncate * sigma) (float32, sums to 1)."""
    radius = max(1, math.ceil(truncate * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, kernel1d: torch.Tensor) -> torch.Tensor:
    """Separable per-channel Gaussian blur of (N, C, H, W) or (N, C, D, H, W) with replicate borders, one
    1-D pass per spatial axis from the last (W) to the first; same shape out."""
    c, dims = x.shape[1], x.dim() - 2
    r = kernel1d.numel() // 2
    k = kernel1d.to(dtype=x.dtype, device=x.device)
    conv = F.conv2d if dims == 2 else F.conv3d
    for axis in reversed(range(dims)):
        shape = [1] * dims
        shape[axis] = -1
        pad = [0] * (2 * dims)
        pad[2 * (dims - 1 - axis) : 2 * (dims - axis)] = [r, r]
        # replicate (not reflect) padding is valid for any image size, even smaller than the kernel.
        x = conv(F.pad(x, pad, mode="replicate"), k.view(1, 1, *shape).expand(c, 1, *shape), groups=c)
    return x


def split_bands(
    x: torch.Tensor, sigma: float = 2.0, kernel1d: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) parts of (N, C, *S): Gaussian blur of standard deviation ``sigma`` px and the rest
    (low + high == x); ``kernel1d`` (a cached ``gaussian_kernel1d(sigma)``) replaces ``sigma`` when given."""
    low = gaussian_blur(x, gaussian_kernel1d(sigma) if kernel1d is None else kernel1d)
    return low, x - low


def max_abs_select(values: torch.Tensor, key: torch.Tensor | None = None) -> torch.Tensor:
    """Per pixel, the entry of (N, C, *S) ``values`` whose |key| is largest (key: values; the first on a tie, as
    argmax) -> (N, 1, *S)."""
    # One comparison per channel instead of argmax + gather: on CPU argmax over the channel dimension is far slower
    # than these elementwise passes, and the fusion loss calls this three times per step.
    mag = (values if key is None else key).abs()
    best_mag, best = mag[:, :1], values[:, :1]
    for c in range(1, values.shape[1]):
        take = mag[:, c : c + 1] > best_mag
        best_mag = torch.where(take, mag[:, c : c + 1], best_mag)
        best = torch.where(take, values[:, c : c + 1], best)
    return best


def logit(p: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Inverse sigmoid of probabilities/intensities in [0, 1], clamped to [eps, 1 - eps] first."""
    p = p.clamp(eps, 1.0 - eps)
    return torch.log(p) - torch.log1p(-p)
