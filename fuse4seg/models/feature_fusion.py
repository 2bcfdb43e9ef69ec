"""Feature-level-fusion segmenter, the baseline Fuse4Seg argues against: modalities merge inside the net."""

from __future__ import annotations

import torch
from torch import nn

from fuse4seg.conventions import NUM_CLASSES
from fuse4seg.models.blocks import crop_to, pad_to_multiple, run_encoder, segmenter_plan, unet_encoder
from fuse4seg.models.unet import UNetDecoder


class FeatureFusionSegmenter(nn.Module):
    """One UNet encoder per modality, merged per scale by concat + 1x1 conv, one shared decoder.

    (N, in_channels, H, W) sources -> (N, num_classes, H, W) logits. Options: ``in_channels``
    (number of modalities, each with its own encoder; default 2 = T1ce + FLAIR, the same inputs
    the fusion networks see), ``num_classes`` (4), ``width`` (16), ``depth`` (4), ``norm``
    ("group" | "instance"). Any H, W: padded to a multiple of 2^depth inside ``forward``.
    """

    kind = "segmentation"

    def __init__(
        self,
        in_channels: int = 2,
        num_classes: int = NUM_CLASSES,
        width: int = 16,
        depth: int = 4,
        norm: str = "group",
    ) -> None:
        """Build the network; ConfigError for invalid options."""
        super().__init__()
        plan = segmenter_plan(in_channels, num_classes, width, depth, norm)
        self.in_channels, self.num_classes, self.depth = plan.in_channels, plan.num_classes, plan.depth
        self.encoders = nn.ModuleList(unet_encoder(1, plan.channels, plan.norm) for _ in range(self.in_channels))
        self.merge = nn.ModuleList(nn.Conv2d(self.in_channels * c, c, 1) for c in plan.channels)
        self.decoder = UNetDecoder(plan.channels, self.num_classes, plan.norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment (N, in_channels, H, W) multi-modal sources into (N, num_classes, H, W) logits."""
        x, size = pad_to_multiple(x, 2**self.depth)
        per_modality = [run_encoder(encoder, x[:, m : m + 1]) for m, encoder in enumerate(self.encoders)]
        merged = [merge(torch.cat([f[i] for f in per_modality], dim=1)) for i, merge in enumerate(self.merge)]
        return crop_to(self.decoder(merged[-1], merged[:-1]), size)
