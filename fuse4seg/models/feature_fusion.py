"""Feature-level-fusion segmenter, the baseline Fuse4Seg argues against: modalities merge inside the net."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fuse4seg.conventions import NUM_CLASSES
from fuse4seg.models.blocks import DoubleConv, check_choice, check_positive_int, crop_to, pad_to_multiple
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
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.num_classes = check_positive_int("num_classes", num_classes)
        width = check_positive_int("width", width)
        self.depth = check_positive_int("depth", depth)
        norm = check_choice("norm", norm, ("group", "instance"))
        channels = [width * 2**i for i in range(self.depth + 1)]
        self.encoders = nn.ModuleList(
            nn.ModuleList(
                DoubleConv(1 if i == 0 else channels[i - 1], channels[i], norm) for i in range(self.depth + 1)
            )
            for _ in range(self.in_channels)
        )
        self.merge = nn.ModuleList(nn.Conv2d(self.in_channels * c, c, 1) for c in channels)
        self.decoder = UNetDecoder(channels, self.num_classes, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment (N, in_channels, H, W) multi-modal sources into (N, num_classes, H, W) logits."""
        x, size = pad_to_multiple(x, 2**self.depth)
        per_modality = []
        for m, encoder in enumerate(self.encoders):
            h = x[:, m : m + 1]
            features = []
            for i, stage in enumerate(encoder):
                h = stage(h if i == 0 else F.max_pool2d(h, 2))
                features.append(h)
            per_modality.append(features)
        merged = [merge(torch.cat([f[i] for f in per_modality], dim=1)) for i, merge in enumerate(self.merge)]
        return crop_to(self.decoder(merged[-1], merged[:-1]), size)
