"""2-D UNet segmenter: (N, in_channels, H, W) image -> (N, num_classes, H, W) logits, any H and W."""

from __future__ import annotations

import abc

import torch
from torch import nn

from fuse4seg.conventions import NUM_CLASSES
from fuse4seg.models.blocks import (
    DoubleConv,
    SegmenterPlan,
    crop_to,
    pad_to_multiple,
    run_encoder,
    segmenter_plan,
    unet_encoder,
)


class UNetDecoder(nn.Module):
    """UNet decoder: bottleneck + skips (finest first) -> (N, num_classes, H, W) logits."""

    def __init__(self, channels: list[int], num_classes: int, norm: str) -> None:
        """``channels[i]`` is the width at scale i (0 = full resolution, last = bottleneck)."""
        super().__init__()
        depth = len(channels) - 1
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(channels[i + 1], channels[i], 2, stride=2) for i in reversed(range(depth))
        )
        self.stages = nn.ModuleList(
            DoubleConv(2 * channels[i], channels[i], norm) for i in reversed(range(depth))
        )
        self.out = nn.Conv2d(channels[0], num_classes, 1)

    def forward(self, bottleneck: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Upsample the (N, c_D, H/2^D, W/2^D) bottleneck through the skips (finest first) to logits."""
        x = bottleneck
        for up, stage, skip in zip(self.up, self.stages, reversed(skips)):
            x = stage(torch.cat([up(x), skip], dim=1))
        return self.out(x)


class Segmenter(nn.Module, abc.ABC):
    """What the UNet-style segmenters share: their options, checked into a channel plan; the decoder; and
    padding inputs to a multiple of 2^depth (logits cropped back). A subclass builds its encoder in
    :meth:`build_encoder` (before the decoder, so parameters are created, and drawn, in that order) and
    returns per-scale features (finest first, bottleneck last) from :meth:`encode`."""

    kind = "segmentation"

    def __init__(self, in_channels: int, num_classes: int, width: int, depth: int, norm: str) -> None:
        """Check the options (ConfigError), build the encoder, then the decoder."""
        super().__init__()
        plan = segmenter_plan(in_channels, num_classes, width, depth, norm)
        self.in_channels, self.num_classes, self.depth = plan.in_channels, plan.num_classes, plan.depth
        self.build_encoder(plan)
        self.decoder = UNetDecoder(plan.channels, self.num_classes, plan.norm)

    @abc.abstractmethod
    def build_encoder(self, plan: SegmenterPlan) -> None:
        """Create the encoder's modules for ``plan``."""

    @abc.abstractmethod
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features of padded (N, in_channels, H, W) ``x`` at every scale, finest first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment (N, in_channels, H, W) images into (N, num_classes, H, W) logits."""
        x, size = pad_to_multiple(x, 2**self.depth)
        features = self.encode(x)
        return crop_to(self.decoder(features[-1], features[:-1]), size)


class UNet(Segmenter):
    """2-D UNet with GroupNorm or InstanceNorm (never BatchNorm): image -> (N, num_classes, H, W) logits.

    Options: ``in_channels`` (1: one fused image), ``num_classes`` (4 canonical labels; 3 for
    region-based WT/TC/ET training), ``width`` (16 feature maps at full resolution, doubled at
    each scale), ``depth`` (4 downsamplings), ``norm`` ("group" | "instance"). Inputs whose H or W
    is not a multiple of 2^depth are zero-padded inside ``forward`` and the logits cropped back.
    With ``norm="instance"`` the padded size must exceed 2^depth so the bottleneck keeps more than
    one pixel to normalise over (torch refuses instance statistics of a single pixel).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = NUM_CLASSES, width: int = 16, depth: int = 4,
                 norm: str = "group") -> None:
        """Build the network; ConfigError for invalid options."""
        super().__init__(in_channels, num_classes, width, depth, norm)

    def build_encoder(self, plan: SegmenterPlan) -> None:
        """One encoder over all input channels."""
        self.encoder = unet_encoder(self.in_channels, plan.channels, plan.norm)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's features at every scale."""
        return run_encoder(self.encoder, x)
