"""Training with few labels (MICS): the unlabelled train cases train the segmenter by mean-teacher consistency.

With ``--label-fraction F`` < 1 a seeded fraction F of the train cases (patients, fuse4seg.train.labels) keeps
its labels; every step also draws a batch of the other cases' slices, and the segmenter (the student) is asked
to agree with its mean teacher (an exponential moving average of its weights, momentum ``--ema-decay``) on
them: the teacher reads the segmenter's usual input (the fused image, or the chosen modalities), the student
the same input under a random distribution shift (MICS's shift of the fused features: per slice an intensity
gain a ~ U[1 - s, 1 + s], an offset b ~ N(0, (s/2)^2) and Gaussian noise of sd s/4, s = :data:`SHIFT`). The
loss is the mean squared difference of their probabilities (softmax; sigmoids with --region-based or --task
classify), weighted
by ``--consistency-weight``. The shift of slot i of step t is drawn from (seed, t, i) alone, so a resumed run and
a torchrun shard see the same draws as an uninterrupted single process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from fuse4seg.losses.segmentation import reduce_together
from fuse4seg.runkit.batches import item_seed, split_by_case
from fuse4seg.train.labels import labelled_cases

#: Strength s of the distribution shift (module doc).
SHIFT = 0.1


def distribution_shift(x: torch.Tensor, seeds: Sequence[int], strength: float = SHIFT) -> torch.Tensor:
    """(N, C, *spatial) images -> a * x + b + noise, per slice n drawn from ``seeds[n]`` (module doc)."""
    out = []
    for image, seed in zip(x, seeds):
        g = torch.Generator().manual_seed(int(seed))
        gain = 1.0 + strength * (2.0 * torch.rand((), generator=g) - 1.0)
        offset = 0.5 * strength * torch.randn((), generator=g)
        noise = 0.25 * strength * torch.randn(image.shape, generator=g)
        out.append(gain.to(x) * image + offset.to(x) + noise.to(x))
    return torch.stack(out)


def shift_seeds(seed: int, step: int, slots: range) -> list[int]:
    """The distribution-shift seeds of the given global batch slots of ``step``."""
    return [item_seed(seed, "unlabelled", step, slot) for slot in slots]


def probabilities(logits: torch.Tensor, sigmoid: bool) -> torch.Tensor:
    """(N, K, *spatial) logits -> class probabilities (softmax), or independent ones (sigmoid: regions, presence)."""
    return torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=1)


def consistency_loss(student: torch.Tensor, teacher: torch.Tensor, sigmoid: bool,
                     reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Mean squared difference of the student's and the (constant) teacher's probabilities from (N, K, *spatial)
    logits (:func:`probabilities`), over every element; ``reduce`` (a sharded batch): the mean over every shard."""
    diff = (probabilities(student.float(), sigmoid) - probabilities(teacher.float(), sigmoid).detach()) ** 2
    total, count = diff.sum(), diff.new_tensor(float(diff.numel()))
    total, count = reduce_together(reduce, [total, count])
    return total / count


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, parameter by parameter (buffers copied)."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


def label_pools(case_ids: Sequence[str], fraction: float, seed: int, holds_out: bool, val_fraction: float
                ) -> tuple[list[int], list[int], list[int]]:
    """(fit, held-out, unlabelled) item indices of a train split with one case id per item: the labelled cases
    (:func:`labelled_cases`) are split into fitting and held-out cases when the mode holds out (bi-level), the
    others are unlabelled (empty with ``fraction`` 1)."""
    ids = [str(c) for c in case_ids]
    keep = labelled_cases(ids, fraction, seed) if fraction < 1 else set(ids)
    labelled = [i for i, c in enumerate(ids) if c in keep]
    unlabelled = [i for i, c in enumerate(ids) if c not in keep]
    if not holds_out:
        return labelled, [], unlabelled
    fit, hold = split_by_case([ids[i] for i in labelled], val_fraction, seed)
    return [labelled[i] for i in fit], [labelled[i] for i in hold], unlabelled

