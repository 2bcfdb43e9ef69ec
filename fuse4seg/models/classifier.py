"""Slice-level multi-label tumour classification (MICS-style): is WT / TC / ET present in the image?

:class:`MultimodalClassifier` follows MICS's fine-tuning design on BraTS inputs: one encoder per modality (the
same 1-channel UNet encoders as :class:`fuse4seg.models.feature_fusion.FeatureFusionSegmenter`, attribute
``encoders``, so a ``fuse4seg pretrain`` encoder loads into ``encoders[i]`` the same way), then a multimodal
fusion encoder over the concatenated bottlenecks, global average pooling and a linear head giving one logit per
region. :func:`presence_targets` turns canonical label maps into the matching (N, 3) targets.
"""

from __future__ import annotations

import torch
from torch import nn

from fuse4seg.conventions import LABELS, REGIONS
from fuse4seg.errors import DataError
from fuse4seg.models.blocks import (
    DoubleConv,
    check_dims,
    check_input,
    pad_to_multiple,
    run_encoder,
    segmenter_plan,
    unet_encoder,
)


class MultimodalClassifier(nn.Module):
    """Per-modality UNet encoders + a fusion encoder -> multi-label logits.

    (N, in_channels, H, W) sources (or (N, in_channels, D, H, W) with ``dims=3``) -> (N, num_classes) logits
    (apply a sigmoid per class; class order WT, TC, ET by default, as :func:`presence_targets`). Options as
    ``FeatureFusionSegmenter``: ``in_channels`` (modalities, each with its own encoder; 2 = T1ce + FLAIR),
    ``num_classes`` (3), ``width`` (16 maps at full resolution, doubled per scale), ``depth`` (4 poolings),
    ``norm`` ("group" | "instance"; never BatchNorm, so train() == eval() and ``functional_call`` is exact).
    Any spatial size: zero-padded at the far end to a multiple of 2^depth (every bottleneck cell then still
    overlaps the image, so the global pool never averages pure padding). With ``norm="instance"`` the padded
    size must exceed 2^depth (instance statistics need more than one bottleneck pixel).
    """

    kind = "classification"

    def __init__(self, in_channels: int = 2, num_classes: int = len(REGIONS), width: int = 16, depth: int = 4,
                 norm: str = "group", *, dims: int = 2) -> None:
        """Check the options (ConfigError naming the bad one), then build encoders, fusion encoder and head."""
        super().__init__()
        self.dims = check_dims(dims)
        plan = segmenter_plan(in_channels, num_classes, width, depth, norm)
        self.in_channels, self.num_classes, self.depth = plan.in_channels, plan.num_classes, plan.depth
        bottleneck = plan.channels[-1]
        self.encoders = nn.ModuleList(
            unet_encoder(1, plan.channels, plan.norm, self.dims) for _ in range(self.in_channels)
        )
        # The fusion encoder sees all modalities' bottlenecks at once; it maps them back to one bottleneck width.
        self.fusion = DoubleConv(self.in_channels * bottleneck, bottleneck, plan.norm, dims=self.dims)
        self.head = nn.Linear(bottleneck, self.num_classes)

    @property
    def embedding_dim(self) -> int:
        """Length of the pooled fused feature vector that :meth:`embed` returns (width * 2^depth)."""
        return self.head.in_features

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, *S) sources -> (N, embedding_dim) globally average-pooled fused features."""
        check_input(x, self.dims, self.in_channels)
        x, _ = pad_to_multiple(x, 2**self.depth)
        bottlenecks = [run_encoder(encoder, x[:, m : m + 1])[-1] for m, encoder in enumerate(self.encoders)]
        fused = self.fusion(torch.cat(bottlenecks, dim=1))
        return fused.flatten(start_dim=2).mean(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, *S) sources -> (N, num_classes) presence logits."""
        return self.head(self.embed(x))


def presence_targets(label: torch.Tensor) -> torch.Tensor:
    """(N, *spatial) canonical labels {0 bg, 1 NCR, 2 ED, 3 ET} -> (N, 3) float {0, 1}: WT (any of 1, 2, 3),
    TC (1 or 3), ET (3) present anywhere in each item; DataError for non-integer labels or values outside 0..3."""
    if label.dim() < 2:
        raise DataError(f"labels must be (N, *spatial), got shape {tuple(label.shape)}")
    if label.is_floating_point() or label.is_complex() or label.dtype == torch.bool:
        raise DataError(f"labels have dtype {label.dtype}; expected integers in {sorted(LABELS)}")
    flat = label.reshape(label.shape[0], -1)
    if flat.numel() and (int(flat.min()) < min(LABELS) or int(flat.max()) > max(LABELS)):
        raise DataError(f"labels hold values outside the canonical labels {sorted(LABELS)}")
    # Which labels occur in each item (N, 4), then each region is present when any of its labels is.
    occurs = torch.stack([(flat == value).any(dim=1) for value in sorted(LABELS)], dim=1)
    regions = [occurs[:, list(values)].any(dim=1) for values in REGIONS.values()]
    return torch.stack(regions, dim=1).float()
