"""The loss of ``--task classify``: binary cross-entropy of slice-level WT/TC/ET presence logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fuse4seg.losses.segmentation import Reduce, at_least_fp32, reduce_together
from fuse4seg.models.classifier import presence_targets


def presence_loss(logits: torch.Tensor, label: torch.Tensor, reduce: Reduce | None = None) -> torch.Tensor:
    """Mean binary cross-entropy of (N, 3) presence logits against the WT/TC/ET presence of (N, *spatial) canonical
    labels (:func:`presence_targets`); ``reduce`` (a sharded batch): the mean over every shard."""
    target = presence_targets(label).to(logits.device)
    bce = F.binary_cross_entropy_with_logits(at_least_fp32(logits), target, reduction="sum")
    total, count = reduce_together(reduce, [bce, bce.new_tensor(float(target.numel()))])
    return total / count
