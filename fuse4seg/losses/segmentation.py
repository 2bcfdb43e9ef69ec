"""Segmentation losses and predictions over the canonical labels {0 bg, 1 NCR, 2 ED, 3 ET}.

Two output conventions (shapes shown 2-D; every function takes any number of spatial dims, e.g.
(N, C, D, H, W) volumes with (N, D, H, W) labels):
- label-based (default): logits (N, 4, H, W), one softmax over the four canonical labels;
  loss = cross-entropy + soft Dice over the foreground classes 1..3.
- region-based: logits (N, 3, H, W) with one sigmoid each for WT, TC, ET (the order of
  :data:`fuse4seg.conventions.REGIONS`); loss = BCE + soft Dice per region. A 4-channel network may
  also be trained region-based: its channel 0 is then ignored and channels 1..3 are WT, TC, ET.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from fuse4seg.conventions import NUM_CLASSES, REGIONS
from fuse4seg.errors import ConfigError, DataError

#: A reduction over the batch: a tensor of local sums -> the sums over every process's shard (a differentiable
#: all-reduce SUM under torchrun, see fuse4seg.distributed); None: this process holds the whole batch.
Reduce = Callable[[torch.Tensor], torch.Tensor]

#: Smoothing term of the soft Dice: (2 |P*T| + s) / (|P| + |T| + s). s = 1 pixel makes a class
#: absent from both prediction and truth score Dice ~1 (loss ~0) instead of 0/0.
DICE_SMOOTH: float = 1.0


def _check_label(logits: torch.Tensor, label: torch.Tensor) -> None:
    """ConfigError for shape mismatches, DataError for label values outside {0, 1, 2, 3}."""
    if logits.dim() < 3 or label.shape != (logits.shape[0], *logits.shape[2:]):
        raise ConfigError(
            f"label must have shape (N, *spatial) matching logits (N, C, *spatial) = {tuple(logits.shape)}, "
            f"got {tuple(label.shape)}"
        )
    if label.dtype.is_floating_point or label.dtype == torch.bool:
        raise ConfigError(f"label must be an integer tensor of canonical labels, got dtype {label.dtype}")
    if label.numel() == 0:
        return
    lo, hi = torch.stack(torch.aminmax(label)).tolist()  # one device sync per call
    if lo < 0 or hi >= NUM_CLASSES:
        raise DataError(f"label values must be canonical labels 0..{NUM_CLASSES - 1}, got range [{lo}, {hi}]")


def region_logits(logits: torch.Tensor) -> torch.Tensor:
    """WT/TC/ET logits (N, 3, *spatial) from region-based network output with 3 or 4 channels."""
    r = len(REGIONS)
    if logits.dim() < 3 or logits.shape[1] not in (r, r + 1):
        raise ConfigError(
            f"region-based logits must have shape (N, {r}, *spatial) or (N, {r + 1}, *spatial), "
            f"got {tuple(logits.shape)}"
        )
    return logits[:, -r:]


def region_targets(label: torch.Tensor) -> torch.Tensor:
    """Float WT/TC/ET masks (N, 3, *spatial) in {0, 1} from canonical labels (N, *spatial)."""
    return torch.stack(
        [torch.isin(label, torch.tensor(v, device=label.device)) for v in REGIONS.values()], dim=1
    ).to(torch.float32)


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in fp32 when it is a half-precision tensor (from autocast), as it is otherwise (fp32, fp64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def reduce_together(reduce: Reduce | None, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``tensors`` (local sums) reduced over the batch's shards in one collective; as given when ``reduce`` is None."""
    if reduce is None:
        return list(tensors)
    flat = reduce(torch.cat([t.reshape(-1) for t in tensors]))
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def _dice_sums(probs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (intersection, |P| + |T|), each (C,), summed over batch and voxels of (N, C, *spatial) inputs."""
    dims = (0, *range(2, probs.dim()))  # every axis but the channel one
    return (probs * target).sum(dims), probs.sum(dims) + target.sum(dims)


def _dice(inter: torch.Tensor, denom: torch.Tensor, smooth: float) -> torch.Tensor:
    """Soft Dice (C,) from summed intersections and denominators."""
    return (2.0 * inter + smooth) / (denom + smooth)


def soft_dice(probs: torch.Tensor, target: torch.Tensor, smooth: float = DICE_SMOOTH, reduce: Reduce | None = None
              ) -> torch.Tensor:
    """Per-channel soft Dice (C,) of probabilities vs targets (N, C, *spatial), summed over batch and voxels (over
    every shard of the batch with ``reduce``)."""
    inter, denom = reduce_together(reduce, _dice_sums(probs, target))
    return _dice(inter, denom, smooth)


def segmentation_loss(
    logits: torch.Tensor, label: torch.Tensor, region_based: bool = False, smooth: float = DICE_SMOOTH,
    reduce: Reduce | None = None,
) -> torch.Tensor:
    """Scalar loss (fp32 at least): CE + (1 - mean foreground soft Dice), or, region-based, BCE + (1 - mean region Dice).

    ``logits``: (N, 4, *spatial) (label-based) or (N, 3|4, *spatial) (region-based), any float dtype (half
    precision is computed in fp32), spatial = (H, W) or (D, H, W); ``label``: (N, *spatial) int64 canonical labels. Dice is computed over the whole batch per class
    (not per image), so classes absent from one slice do not dominate; the CE/BCE terms are means over
    pixels. ``reduce`` (see :data:`Reduce`) makes every sum global when the batch is sharded over processes.
    """
    _check_label(logits, label)
    logits = at_least_fp32(logits)  # under autocast the network may answer in bf16/fp16: the loss stays fp32
    # One process: the plain mean (bit for bit as before); sharded: a sum here, divided by the global count.
    reduction = "mean" if reduce is None else "sum"
    if region_based:
        z = region_logits(logits)
        target = region_targets(label).to(z.dtype)
        pointwise = F.binary_cross_entropy_with_logits(z, target, reduction=reduction)
        probs = torch.sigmoid(z)
    else:
        if logits.shape[1] != NUM_CLASSES:
            raise ConfigError(
                f"label-based logits must have {NUM_CLASSES} channels, got shape {tuple(logits.shape)}"
            )
        label = label.long()
        pointwise = F.cross_entropy(logits, label, reduction=reduction)
        probs = torch.softmax(logits, dim=1)[:, 1:]
        target = F.one_hot(label, NUM_CLASSES).movedim(-1, 1)[:, 1:].to(probs.dtype)
        z = logits[:, :1]  # CE averages over pixels, BCE over pixels and regions: one count per term below
    count = pointwise.new_tensor(1.0 if reduce is None else float(z.numel()))
    total, n, inter, denom = reduce_together(reduce, (pointwise, count, *_dice_sums(probs, target)))
    return total / n + 1.0 - _dice(inter, denom, smooth).mean()


def regions_to_labels(wt: torch.Tensor, tc: torch.Tensor, et: torch.Tensor) -> torch.Tensor:
    """Canonical labels (int64) from boolean WT/TC/ET masks: ET->3, else TC->1, else WT->2, else 0."""
    out = torch.zeros(wt.shape, dtype=torch.int64, device=wt.device)
    out = torch.where(wt, torch.full_like(out, 2), out)
    out = torch.where(tc, torch.full_like(out, 1), out)
    return torch.where(et, torch.full_like(out, 3), out)


def predict_labels(logits: torch.Tensor, region_based: bool = False, threshold: float = 0.5) -> torch.Tensor:
    """Canonical label map (N, *spatial) int64 from logits (N, C, *spatial): argmax, or region sigmoids > ``threshold``."""
    if region_based:
        wt, tc, et = (torch.sigmoid(region_logits(logits)) > threshold).unbind(dim=1)
        return regions_to_labels(wt, tc, et)
    if logits.dim() < 3 or logits.shape[1] != NUM_CLASSES:
        raise ConfigError(
            f"label-based logits must have shape (N, {NUM_CLASSES}, *spatial), got {tuple(logits.shape)}"
        )
    return logits.argmax(dim=1)
