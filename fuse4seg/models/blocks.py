"""Building blocks shared by the networks: normalisation choice, conv blocks, pad-and-crop, blur.

Nothing here keeps running statistics (no BatchNorm), so every block behaves the same in
``train()`` and ``eval()`` and under ``torch.func.functional_call`` with substituted parameters.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fuse4seg.errors import ConfigError

NORMS: tuple[str, ...] = ("group", "instance", "none")


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


def make_norm(kind: str, channels: int, groups: int = 8) -> nn.Module:
    """Normalisation layer over ``channels`` feature maps: GroupNorm, InstanceNorm (affine) or identity.

    GroupNorm uses gcd(groups, channels) groups so any width is valid.
    """
    if kind == "group":
        return nn.GroupNorm(math.gcd(groups, channels), channels)
    if kind == "instance":
        # track_running_stats=False (the default): statistics come from the current image only.
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"option 'norm' must be one of {', '.join(NORMS)}, got {kind!r}")


class ConvNormAct(nn.Sequential):
    """3x3 conv -> norm -> LeakyReLU(0.1); (N, in, H, W) -> (N, out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "group", groups: int = 8) -> None:
        """Build the block; the conv has a bias only when no normalisation follows it."""
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=norm == "none"),
            make_norm(norm, out_channels, groups),
            nn.LeakyReLU(0.1),
        )


class DoubleConv(nn.Sequential):
    """Two ConvNormAct blocks, the UNet stage; (N, in, H, W) -> (N, out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "group", groups: int = 8) -> None:
        """Build the two blocks."""
        super().__init__(
            ConvNormAct(in_channels, out_channels, norm, groups),
            ConvNormAct(out_channels, out_channels, norm, groups),
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


def unet_encoder(in_channels: int, channels: list[int], norm: str) -> nn.ModuleList:
    """UNet encoder stages: DoubleConv per scale, in_channels -> channels[0] -> ... -> channels[-1]."""
    return nn.ModuleList(
        DoubleConv(in_channels if i == 0 else channels[i - 1], c, norm) for i, c in enumerate(channels)
    )


def run_encoder(encoder: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
    """Features of (N, C, H, W) ``x`` at every scale (2x max-pool between stages), finest first;
    H and W must divide 2**(len(encoder) - 1)."""
    features = []
    for i, stage in enumerate(encoder):
        x = stage(x if i == 0 else F.max_pool2d(x, 2))
        features.append(x)
    return features


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad (N, C, H, W) at the bottom/right so H and W divide ``multiple``; returns (padded, (H, W)).

    Zero is the skull-stripped background value, so the padding looks like more background.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x, (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop (N, C, H', W') back to the top-left (H, W) = ``size``."""
    return x[..., : size[0], : size[1]]


def gaussian_kernel1d(sigma: float, truncate: float = 3.0) -> torch.Tensor:
    """Normalised 1-D Gaussian taps of radius ceil(truncate * sigma) (float32, sums to 1)."""
    radius = max(1, math.ceil(truncate * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, kernel1d: torch.Tensor) -> torch.Tensor:
    """Separable per-channel Gaussian blur of (N, C, H, W) with replicate borders; same shape out."""
    c = x.shape[1]
    r = kernel1d.numel() // 2
    k = kernel1d.to(dtype=x.dtype, device=x.device)
    kx = k.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    ky = k.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    # replicate (not reflect) padding is valid for any image size, even smaller than the kernel.
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), kx, groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), ky, groups=c)


def split_bands(
    x: torch.Tensor, sigma: float = 2.0, kernel1d: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) parts of (N, C, H, W): Gaussian blur of standard deviation ``sigma`` px and the rest
    (low + high == x); ``kernel1d`` (a cached ``gaussian_kernel1d(sigma)``) replaces ``sigma`` when given."""
    low = gaussian_blur(x, gaussian_kernel1d(sigma) if kernel1d is None else kernel1d)
    return low, x - low


def max_abs_select(values: torch.Tensor, key: torch.Tensor | None = None) -> torch.Tensor:
    """Per pixel, the entry of (N, C, H, W) ``values`` whose |key| is largest (key: values) -> (N, 1, H, W)."""
    idx = (values if key is None else key).abs().argmax(dim=1, keepdim=True)
    return torch.gather(values, 1, idx)


def logit(p: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Inverse sigmoid of probabilities/intensities in [0, 1], clamped to [eps, 1 - eps] first."""
    p = p.clamp(eps, 1.0 - eps)
    return torch.log(p) - torch.log1p(-p)
