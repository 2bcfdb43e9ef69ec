"""Feature-level-fusion segmenter, the baseline Fuse4Seg argues against: modalities merge inside the net."""

from __future__ import annotations

import torch
from torch import nn

from fuse4seg.conventions import NUM_CLASSES
from fuse4seg.models.blocks import LAYERS, SegmenterPlan, run_encoder, unet_encoder
from fuse4seg.models.unet import Segmenter


class FeatureFusionSegmenter(Segmenter):
    """One UNet encoder per modality, merged per scale by concat + 1x1 conv, one shared decoder.

    (N, in_channels, H, W) sources -> (N, num_classes, H, W) logits. Options: ``in_channels``
    (number of modalities, each with its own encoder; default 2 = T1ce + FLAIR, the same inputs
    the fusion networks see), ``num_classes`` (4), ``width`` (16), ``depth`` (4), ``norm``
    ("group" | "instance"). Any H, W: padded to a multiple of 2^depth inside ``forward``.
    Keyword-only ``dims`` (2; 3 for ``feature-fusion-3d`` on (N, in_channels, D, H, W) volumes).
    """

    def __init__(self, in_channels: int = 2, num_classes: int = NUM_CLASSES, width: int = 16, depth: int = 4,
                 norm: str = "group", *, dims: int = 2) -> None:
        """Build the network; ConfigError for invalid options."""
        super().__init__(in_channels, num_classes, width, depth, norm, dims)

    def build_encoder(self, plan: SegmenterPlan) -> None:
        """One 1-channel encoder per modality, then a 1x1 merge per scale."""
        self.encoders = nn.ModuleList(
            unet_encoder(1, plan.channels, plan.norm, self.dims) for _ in range(self.in_channels)
        )
        self.merge = nn.ModuleList(LAYERS[self.dims].conv(self.in_channels * c, c, 1) for c in plan.channels)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each modality's features, merged per scale."""
        per_modality = [run_encoder(encoder, x[:, m : m + 1]) for m, encoder in enumerate(self.encoders)]
        return [merge(torch.cat([f[i] for f in per_modality], dim=1)) for i, merge in enumerate(self.merge)]
