"""UNet segmenter: (N, in_channels, H, W) image -> (N, num_classes, H, W) logits, any H and W; with
``dims=3`` (``unet-3d``) (N, in_channels, D, H, W) volume -> (N, num_classes, D, H, W) logits."""

from __future__ import annotations

import abc

import torch
from torch import nn

from fuse4seg.conventions import NUM_CLASSES
from fuse4seg.models.blocks import (
    LAYERS,
    DoubleConv,
    SegmenterPlan,
    check_dims,
    check_input,
    crop_to,
    pad_to_multiple,
    run_encoder,
    segmenter_plan,
    unet_encoder,
)


class UNetDecoder(nn.Module):
    """UNet decoder: bottleneck + skips (finest first) -> (N, num_classes, *S) logits."""

    def __init__(self, channels: list[int], num_classes: int, norm: str, dims: int = 2) -> None:
        """``channels[i]`` is the width at scale i (0 = full resolution, last = bottleneck)."""
        super().__init__()
        depth = len(channels) - 1
        layers = LAYERS[dims]
        self.up = nn.ModuleList(
            layers.conv_transpose(channels[i + 1], channels[i], 2, stride=2) for i in reversed(range(depth))
        )
        self.stages = nn.ModuleList(
            DoubleConv(2 * channels[i], channels[i], norm, dims=dims) for i in reversed(range(depth))
        )
        self.out = layers.conv(channels[0], num_classes, 1)

    def forward(self, bottleneck: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Upsample the (N, c_D, *S/2^D) bottleneck through the skips (finest first) to logits."""
        x = bottleneck
        for up, stage, skip in zip(self.up, self.stages, reversed(skips)):
            x = stage(torch.cat([up(x), skip], dim=1))
        return self.out(x)


class Segmenter(nn.Module, abc.ABC):
    """What the UNet-style segmenters share: their options, checked into a channel plan; the decoder; and
    padding inputs to a multiple of 2^depth (logits cropped back). A subclass builds its encoder in
    :meth:`build_encoder` (before the decoder, so parameters are created, and drawn, in that order) and
    returns per-scale features (finest first, bottleneck last) from :meth:`encode`. ``dims`` (2 or 3)
    is the number of spatial axes; subclasses build their layers with ``self.dims``."""

    kind = "segmentation"

    def __init__(self, in_channels: int, num_classes: int, width: int, depth: int, norm: str,
                 dims: int = 2) -> None:
        """Check the options (ConfigError), build the encoder, then the decoder."""
        super().__init__()
        self.dims = check_dims(dims)
        plan = segmenter_plan(in_channels, num_classes, width, depth, norm)
        self.in_channels, self.num_classes, self.depth = plan.in_channels, plan.num_classes, plan.depth
        self.build_encoder(plan)
        self.decoder = UNetDecoder(plan.channels, self.num_classes, plan.norm, self.dims)

    @abc.abstractmethod
    def build_encoder(self, plan: SegmenterPlan) -> None:
        """Create the encoder's modules for ``plan``."""

    @abc.abstractmethod
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features of padded (N, in_channels, *S) ``x`` at every scale, finest first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment (N, in_channels, *S) images or volumes into (N, num_classes, *S) logits."""
        check_input(x, self.dims, self.in_channels)
        x, size = pad_to_multiple(x, 2**self.depth)
        features = self.encode(x)
        return crop_to(self.decoder(features[-1], features[:-1]), size)


class UNet(Segmenter):
    """UNet with GroupNorm or InstanceNorm (never BatchNorm): image -> (N, num_classes, H, W) logits.

    Options: ``in_channels`` (1: one fused image), ``num_classes`` (4 canonical labels; 3 for
    region-based WT/TC/ET training), ``width`` (16 feature maps at full resolution, doubled at
    each scale), ``depth`` (4 downsamplings), ``norm`` ("group" | "instance"). Inputs whose H or W
    is not a multiple of 2^depth are zero-padded inside ``forward`` and the logits cropped back.
    With ``norm="instance"`` the padded size must exceed 2^depth so the bottleneck keeps more than
    one pixel to normalise over (torch refuses instance statistics of a single pixel). Keyword-only
    ``dims`` (2; 3 for ``unet-3d``: 3x3x3 convs, 2x2x2 pooling and up-convolutions, D, H and W each
    padded to a multiple of 2^depth).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = NUM_CLASSES, width: int = 16, depth: int = 4,
                 norm: str = "group", *, dims: int = 2) -> None:
        """Build the network; ConfigError for invalid options."""
        super().__init__(in_channels, num_classes, width, depth, norm, dims)

    def build_encoder(self, plan: SegmenterPlan) -> None:
        """One encoder over all input channels."""
        self.encoder = unet_encoder(self.in_channels, plan.channels, plan.norm, self.dims)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's features at every scale."""
        return run_encoder(self.encoder, x)
