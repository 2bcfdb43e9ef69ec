"""What the training steps share: batch inputs on the device, forward precision, backward-and-step, the consistency term.

The steps themselves (one per kind of mode) are in fuse4seg.train.steps; the optimisers they step in
fuse4seg.train.optimisers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from fuse4seg.distributed import World
from fuse4seg.text.encoders import TextTokens
from fuse4seg.train.config import PRECISIONS
from fuse4seg.train.optimisers import Optimisers
from fuse4seg.train.semi import consistency_loss, distribution_shift, shift_seeds

if TYPE_CHECKING:
    from fuse4seg.train.config import TrainConfig
    from fuse4seg.train.networks import Pipeline

Batch = dict[str, Any]
#: A loss of the two networks, given as callables (fusion F, segmenter S) -> scalar tensor.
ModuleLoss = Callable[[Callable[..., torch.Tensor], Callable[..., torch.Tensor]], torch.Tensor]
#: --precision: the autocast dtype of the forward passes (None: plain fp32).
PRECISION_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
assert set(PRECISION_DTYPES) == set(PRECISIONS), "every declared --precision needs its autocast dtype"


class NonFiniteStep(ArithmeticError):
    """A loss or (hyper)gradient of this step is NaN/Inf; the step was not applied."""


@dataclass
class StepResult:
    """What one step reports: scalars for logging (TensorBoard tag -> value)."""

    scalars: dict[str, float] = field(default_factory=dict)



class Training(Protocol):
    """What a step reads and updates (the Trainer)."""

    config: TrainConfig
    pipeline: Pipeline
    opts: Optimisers
    device: torch.device
    step: int
    fusion_steps: int
    world: World
    unlabelled: Batch | None  # this step's batch of unlabelled slices (--label-fraction < 1), else None


def finite(*values: torch.Tensor) -> bool:
    """True when every tensor is all-finite."""
    return all(bool(torch.isfinite(v).all()) for v in values)


def tensor_norm(tensors: list[torch.Tensor] | dict[str, torch.Tensor]) -> float:
    """Euclidean norm of the tensors (a list or a dict's values), concatenated; 0 for none."""
    flat = [t.detach().flatten() for t in (tensors.values() if isinstance(tensors, dict) else tensors)]
    return float(torch.linalg.vector_norm(torch.cat(flat))) if flat else 0.0


def _grad_norm(params: list[nn.Parameter]) -> float:
    """Euclidean norm of the concatenated .grad of ``params`` (0 when none has a gradient)."""
    return tensor_norm([p.grad for p in params if p.grad is not None])


@contextlib.contextmanager
def forward_precision(t: Training) -> Iterator[None]:
    """Autocast at --precision around forward passes (nothing for fp32); losses are computed in fp32 after."""
    dtype = PRECISION_DTYPES[t.config.precision]
    with torch.autocast(t.device.type, dtype=dtype, enabled=dtype is not None):
        yield


def backward_step(t: Training, loss: torch.Tensor, optimisers: list[torch.optim.Optimizer], what: str
                   ) -> list[float]:
    """Backward the (global) ``loss``, average the gradients over the ranks and step every optimiser (through
    the fp16 loss scaler when there is one), unless the loss or a gradient is non-finite; returns each
    optimiser's gradient norm."""
    if not finite(loss):
        raise NonFiniteStep(f"non-finite {what} loss ({float(loss.detach())})")
    scaler = t.opts.scaler
    for opt in optimisers:
        opt.zero_grad(set_to_none=True)
    (loss if scaler is None else scaler.scale(loss)).backward()
    groups = [[p for g in opt.param_groups for p in g["params"]] for opt in optimisers]
    t.world.mean_grads_([p for params in groups for p in params])
    if scaler is not None:
        for opt in optimisers:
            scaler.unscale_(opt)
    norms = [_grad_norm(params) for params in groups]
    if not all(math.isfinite(n) for n in norms):
        for opt in optimisers:
            opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.update()  # an fp16 overflow lowers the loss scale for the next step
        raise NonFiniteStep(f"non-finite {what} gradient")
    for opt in optimisers:
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
    if scaler is not None:
        scaler.update()
    return norms


@dataclass
class Inputs:
    """A batch on the device: what the networks see and what the losses aim at."""

    seen: torch.Tensor  # (N, 4, *spatial) sources as the networks see them (degraded with --degrade-inputs)
    stored: torch.Tensor  # (N, 1, *spatial) the benchmark's fused image as the networks see it
    clean: torch.Tensor  # (N, 4, *spatial) clean sources: the fusion loss's target
    label: torch.Tensor  # (N, *spatial) int64; spatial = (H, W), or (D, H, W) patches with --dims 3
    text: TextTokens | None = None  # the slices' encoded texts, when the run reads text


def batch_inputs(t: Training, batch: Batch) -> Inputs:
    """:class:`Inputs` of a batch (``input``/``input_fused`` when the loader degraded it, else the clean ones),
    with its texts encoded when the run reads text."""
    device = t.device

    def on(key: str, default: str) -> torch.Tensor:
        """batch[key] (or batch[default]) on the device."""
        return batch.get(key, batch[default]).to(device, non_blocking=True)

    return Inputs(on("input", "source"), on("input_fused", "fused"), on("source", "source"),
                  batch["label"].to(device, non_blocking=True).long(), t.pipeline.encode_text(batch.get("text"), device))



class Consistency:
    """The mean-teacher term of one step (fuse4seg.train.semi): the teacher's logits on the unlabelled batch's
    segmenter input, computed once (constant), and the student's loss against them for any segmenter/fusion
    (the modules, or their functional forms in a bi-level step). ``teacher_input`` (no gradient) is also the
    student's input where no gradient reaches the fusion net (two-stage's second stage, direct training)."""

    def __init__(self, t: Training) -> None:
        """Encode the unlabelled batch and run the teacher (no gradient)."""
        self.t, self.inputs = t, batch_inputs(t, t.unlabelled)
        lo, hi = t.world.shard(t.config.batch_size)
        self.seeds = shift_seeds(t.config.seed, t.step, range(lo, hi))
        with torch.no_grad(), forward_precision(t):
            self.teacher_input = self.seg_input(t.pipeline.fusion)
            self.target = t.pipeline.teacher(self.teacher_input)

    def seg_input(self, fuse: Callable[..., torch.Tensor] | None) -> torch.Tensor:
        """The segmenter's input for the unlabelled batch (at --precision, as the teacher's): ``fuse``'s fused image,
        else the chosen channels."""
        pipeline, u = self.t.pipeline, self.inputs
        with forward_precision(self.t):
            if pipeline.fusion is not None:
                return pipeline.run_fusion(fuse, u.seen, u.text)
            return pipeline.seg_input(u.seen, u.stored, None)

    def loss(self, segment: Callable[..., torch.Tensor], seg_input: torch.Tensor) -> torch.Tensor:
        """Consistency loss of ``segment`` on the shifted ``seg_input`` (:meth:`seg_input`) against the teacher."""
        with forward_precision(self.t):
            logits = segment(distribution_shift(seg_input, self.seeds))
        return consistency_loss(logits, self.target, self.t.pipeline.sigmoid_outputs, reduce=self.t.world.reduce)


def consistency(t: Training) -> Consistency | None:
    """This step's :class:`Consistency`, or None without unlabelled slices."""
    return Consistency(t) if t.unlabelled is not None and t.pipeline.teacher is not None else None


def with_consistency(t: Training, loss: torch.Tensor, scalars: dict[str, float],
                      term: torch.Tensor | None) -> torch.Tensor:
    """``loss`` + --consistency-weight * ``term`` (logged as loss/consistency), or ``loss`` without a term."""
    if term is None:
        return loss
    scalars["loss/consistency"] = float(term.detach())
    return loss + t.config.consistency_weight * term
