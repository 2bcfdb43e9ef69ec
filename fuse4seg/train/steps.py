"""One optimisation step per training mode, on the same networks (the registry is fuse4seg.train.modes).

Bi-level (``bilevel``), as implemented here, with F_phi the fusion net and S_theta the segmenter:

    upper:  phi <- phi - opt_upper( d/dphi [ L_fuse(F_phi(x_fit), x_fit)
                                            + lambda * L_seg(S_theta_K(phi)(F_phi(x_hold)), y_hold) ] )
    lower:  theta_{k+1} = theta_k - opt_inner( d/dtheta L_seg(S_theta_k(F_phi(x_fit)), y_fit) ),
            k = 0..K-1, theta_0 = the segmenter's current weights (warm start), theta <- theta_K

x_fit / y_fit is one batch of the train split's fitting part, x_hold / y_hold one batch of its
held-out cases; the hypergradient d/dphi goes through the K inner steps by the chosen method of
fuse4seg.bilevel (``module_hypergradient``). The inner optimiser's state (momentum, Adam moments)
is carried across outer steps.

Under torchrun every step sees its rank's shard of the global batch; the losses are global (their sums go
through ``t.world.reduce``), the gradients are averaged over the ranks before any step, and the bi-level
segmenter's parameters enter both losses through ``t.world.sync`` (fuse4seg.distributed), so an N-process
step equals the single-process step on the whole batch. ``--precision`` runs every forward pass under
autocast (parameters, losses and (hyper)gradients stay fp32); fp16 scales the single-level losses with a
GradScaler (``Optimisers.scaler``). With ``--dims 3`` the same steps run on (N, C, D, H, W) patches (the losses
take any number of spatial dims).

"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from fuse4seg.bilevel import (
    OPTION_NAMES,
    NonFiniteHypergradient,
    assign_grads,
    load_params,
    module_hypergradient,
)
from fuse4seg.distributed import World
from fuse4seg.errors import ConfigError
from fuse4seg.losses import fusion_loss
from fuse4seg.text.alignment import semantic_loss
from fuse4seg.text.encoders import TextTokens
from fuse4seg.train.modes import MODES
from fuse4seg.train.semi import consistency_loss, distribution_shift, shift_seeds

if TYPE_CHECKING:
    from fuse4seg.train.config import TrainConfig
    from fuse4seg.train.networks import Pipeline

Batch = dict[str, Any]
#: A loss of the two networks, given as callables (fusion F, segmenter S) -> scalar tensor.
ModuleLoss = Callable[[Callable[..., torch.Tensor], Callable[..., torch.Tensor]], torch.Tensor]
#: --precision: the autocast dtype of the forward passes (None: plain fp32).
PRECISION_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteStep(ArithmeticError):
    """A loss or (hyper)gradient of this step is NaN/Inf; the step was not applied."""


@dataclass
class StepResult:
    """What one step reports: scalars for logging (TensorBoard tag -> value)."""

    scalars: dict[str, float] = field(default_factory=dict)


@dataclass
class Optimisers:
    """Torch optimisers of the fusion net (upper) and the segmenter (lower), as the mode needs them."""

    upper: torch.optim.Optimizer | None
    lower: torch.optim.Optimizer | None
    inner_state: dict[str, Any] | None = None  # bilevel: inner optimiser state carried across steps
    scaler: torch.amp.GradScaler | None = None  # --precision fp16 (single-level modes): the loss scale


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


def _finite(*values: torch.Tensor) -> bool:
    """True when every tensor is all-finite."""
    return all(bool(torch.isfinite(v).all()) for v in values)


def _norm(tensors: list[torch.Tensor] | dict[str, torch.Tensor]) -> float:
    """Euclidean norm of the tensors (a list or a dict's values), concatenated; 0 for none."""
    flat = [t.detach().flatten() for t in (tensors.values() if isinstance(tensors, dict) else tensors)]
    return float(torch.linalg.vector_norm(torch.cat(flat))) if flat else 0.0


def _grad_norm(params: list[nn.Parameter]) -> float:
    """Euclidean norm of the concatenated .grad of ``params`` (0 when none has a gradient)."""
    return _norm([p.grad for p in params if p.grad is not None])


@contextlib.contextmanager
def forward_precision(t: Training) -> Iterator[None]:
    """Autocast at --precision around forward passes (nothing for fp32); losses are computed in fp32 after."""
    dtype = PRECISION_DTYPES[t.config.precision]
    with torch.autocast(t.device.type, dtype=dtype, enabled=dtype is not None):
        yield


def _backward_step(t: Training, loss: torch.Tensor, optimisers: list[torch.optim.Optimizer], what: str
                   ) -> list[float]:
    """Backward the (global) ``loss``, average the gradients over the ranks and step every optimiser (through
    the fp16 loss scaler when there is one), unless the loss or a gradient is non-finite; returns each
    optimiser's gradient norm."""
    if not _finite(loss):
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


def _inputs(t: Training, batch: Batch) -> Inputs:
    """:class:`Inputs` of a batch (``input``/``input_fused`` when the loader degraded it, else the clean ones),
    with its texts encoded when the run reads text."""
    device = t.device

    def on(key: str, default: str) -> torch.Tensor:
        """batch[key] (or batch[default]) on the device."""
        return batch.get(key, batch[default]).to(device, non_blocking=True)

    return Inputs(on("input", "source"), on("input_fused", "fused"), on("source", "source"),
                  batch["label"].to(device, non_blocking=True).long(), t.pipeline.encode_text(batch.get("text"), device))


def fusion_objective(t: Training, fused: torch.Tensor, inputs: Inputs) -> tuple[torch.Tensor, dict[str, float]]:
    """The fusion net's own loss: L_fuse(fused, clean sources) + --semantic-weight * L_semantic(fused, text) (the
    second term only when weighted), and its parts for logging."""
    pipeline, config = t.pipeline, t.config
    lf, _ = fusion_loss(fused, pipeline.fusion_sources(inputs.clean), config.fusion_loss_weights or None,
                        reduce=t.world.reduce)
    parts = {"loss/fusion": float(lf.detach())}
    if config.semantic_weight > 0:
        assert pipeline.alignment is not None and inputs.text is not None
        sem = semantic_loss(pipeline.alignment, fused, inputs.text, reduce=t.world.reduce)
        parts["loss/semantic"] = float(sem.detach())
        lf = lf + config.semantic_weight * sem
    return lf, parts


class Consistency:
    """The mean-teacher term of one step (fuse4seg.train.semi): the teacher's logits on the unlabelled batch's
    segmenter input, computed once (constant), and the student's loss against them for any segmenter/fusion
    (the modules, or their functional forms in a bi-level step). ``teacher_input`` (no gradient) is also the
    student's input where no gradient reaches the fusion net (two-stage's second stage, direct training)."""

    def __init__(self, t: Training) -> None:
        """Encode the unlabelled batch and run the teacher (no gradient)."""
        self.t, self.inputs = t, _inputs(t, t.unlabelled)
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


def _with_consistency(t: Training, loss: torch.Tensor, scalars: dict[str, float],
                      term: torch.Tensor | None) -> torch.Tensor:
    """``loss`` + --consistency-weight * ``term`` (logged as loss/consistency), or ``loss`` without a term."""
    if term is None:
        return loss
    scalars["loss/consistency"] = float(term.detach())
    return loss + t.config.consistency_weight * term


def bilevel_losses(t: Training, fit: Batch, hold: Batch, record: dict[str, float], lambda_seg: float | None
                   ) -> tuple[ModuleLoss, ModuleLoss]:
    """(lower_loss, upper_loss) of this step's batches, as functions of the two networks (F, S).

    ``lambda_seg`` None: the upper loss is the held-out segmentation loss alone (the caller balances
    its hypergradient against the fusion-loss gradient). ``record`` receives the last evaluated
    upper-loss parts (for logging), as floats.
    """
    pipeline = t.pipeline
    fit_in, hold_in = _inputs(t, fit), _inputs(t, hold)
    y_fit, y_hold = fit_in.label, hold_in.label
    reduce = t.world.reduce
    unlabelled = consistency(t)

    def lower_loss(fuse: Callable[..., torch.Tensor], segment: Callable[..., torch.Tensor]) -> torch.Tensor:
        """Segmentation loss of S(F(x_fit)) against y_fit (scalar), plus the unlabelled slices' consistency."""
        with forward_precision(t):
            logits = segment(pipeline.run_fusion(fuse, fit_in.seen, fit_in.text))
        loss = pipeline.task_loss(logits, y_fit, reduce=reduce)
        term = None if unlabelled is None else unlabelled.loss(segment, unlabelled.seg_input(fuse))
        return _with_consistency(t, loss, record, term)

    def upper_loss(fuse: Callable[..., torch.Tensor], segment: Callable[..., torch.Tensor]) -> torch.Tensor:
        """L_fuse(F(x_fit), clean x_fit) + lambda * L_seg(S(F(x_hold)), y_hold), or the second term alone (scalar)."""
        with forward_precision(t):
            logits = segment(pipeline.run_fusion(fuse, hold_in.seen, hold_in.text))
            fused = None if lambda_seg is None else pipeline.run_fusion(fuse, fit_in.seen, fit_in.text)
        ls = pipeline.task_loss(logits, y_hold, reduce=reduce)
        if lambda_seg is None:
            record["loss/seg_holdout"] = float(ls.detach())
            return ls
        lf, parts = fusion_objective(t, fused, fit_in)
        record.update({**parts, "loss/seg_holdout": float(ls.detach())})
        return lf + lambda_seg * ls

    return lower_loss, upper_loss


def fusion_loss_grads(t: Training, fit: Batch) -> tuple[float, dict[str, float], dict[str, torch.Tensor]]:
    """(the fusion net's own loss at x_fit (:func:`fusion_objective`), its parts, its gradient by trainable fusion-parameter
    name, averaged over the ranks): the direct part of the upper gradient, the part that does not go through the
    segmenter."""
    pipeline, fit_in = t.pipeline, _inputs(t, fit)
    params = {k: p for k, p in pipeline.fusion.named_parameters() if p.requires_grad}
    with forward_precision(t):
        fused = pipeline.run_fusion(pipeline.fusion, fit_in.seen, fit_in.text)
    lf, parts = fusion_objective(t, fused, fit_in)
    grads = torch.autograd.grad(lf, list(params.values()), allow_unused=True, materialize_grads=True)
    t.world.mean_(grads)
    return float(lf.detach()), parts, dict(zip(params, grads))


def bilevel_step(t: Training, fit: Batch, hold: Batch | None) -> StepResult:
    """One outer step: hypergradient through K inner steps, update phi, keep the inner theta_K.

    During the first ``t.fusion_steps`` steps (``--fusion-steps``: a warm-up) only the fusion net
    learns, from the fusion loss. With ``--seg-fraction f`` the segmentation term's weight is set at
    every step to ``lambda = f |g_fuse| / |g_seg|`` (g_fuse: the fusion-loss gradient; g_seg: the
    hypergradient of the held-out segmentation loss), so the segmentation part of the update has
    f times the norm of the fusion part. ``hypergrad/seg_fraction`` logs that ratio either way (with
    a fixed lambda it costs one more backward through the small fusion net).
    """
    if t.step < t.fusion_steps:
        return fusion_only_step(t, fit)
    config, fusion, seg, opts = t.config, t.pipeline.fusion, t.pipeline.seg, t.opts
    assert fusion is not None and opts.upper is not None and hold is not None
    auto = config.seg_fraction is not None
    record: dict[str, float] = {}
    lower_loss, upper_loss = bilevel_losses(t, fit, hold, record, None if auto else config.lambda_seg)
    options = {name: getattr(config.hypergrad, name) for name in OPTION_NAMES} | {"state": opts.inner_state}
    nonfinite = None
    try:
        result = module_hypergradient(fusion, seg, lower_loss, upper_loss, config.method, sync=t.world.sync,
                                      **options)
    except NonFiniteHypergradient as exc:  # still averaged below, so that every rank makes the same decision
        result, nonfinite = exc.result, str(exc)
    except ConfigError as exc:  # names an engine parameter (e.g. a carried inner state that does not fit)
        raise ConfigError(f"bi-level step {t.step}: {exc}") from None
    t.world.mean_(list(result.grads.values()))  # rule 2: rank r holds N x its shard's part
    if nonfinite is not None or not _finite(*result.grads.values()):
        raise NonFiniteStep(nonfinite or "non-finite hypergradient")
    if not _finite(*result.lower.values()):
        raise NonFiniteStep("non-finite segmentation weights after the inner steps")
    lf, parts, g_fuse = fusion_loss_grads(t, fit)
    norm_fuse = _norm(g_fuse)
    if auto:
        norm_seg = _norm(result.grads)
        lam = config.seg_fraction * norm_fuse / norm_seg if norm_seg > 0 else 0.0
        grads = {k: g_fuse[k] + lam * g for k, g in result.grads.items()}
        record.update(parts)
    else:
        lam, grads = config.lambda_seg, result.grads
        norm_seg = _norm({k: g - g_fuse[k] for k, g in grads.items()}) / lam if lam > 0 else 0.0
    upper_value = lf + lam * record.get("loss/seg_holdout", math.nan)
    if not (math.isfinite(upper_value) and math.isfinite(lam)):
        raise NonFiniteStep("non-finite upper loss")
    if not _finite(*grads.values()):
        raise NonFiniteStep("non-finite fusion-loss gradient")
    opts.upper.zero_grad(set_to_none=True)
    assign_grads(fusion, grads)
    opts.upper.step()
    load_params(seg, result.lower)
    opts.inner_state = result.state
    scalars = {**record, "loss/upper": upper_value, "hypergrad/norm": _norm(grads), "hypergrad/lambda_seg": lam,
               "hypergrad/seg_fraction": lam * norm_seg / norm_fuse if norm_fuse > 0 else math.nan}
    if "lower_loss" in result.info:
        scalars["loss/seg_inner"] = float(result.info["lower_loss"])
    return StepResult(scalars)


def joint_step(t: Training, fit: Batch, hold: Batch | None) -> StepResult:
    """Both nets, one loss L_fuse + lambda * L_seg on the same batch, one backward (RMR-Fusion style)."""
    config, pipeline, opts = t.config, t.pipeline, t.opts
    assert pipeline.fusion is not None and opts.upper is not None and opts.lower is not None
    batch = _inputs(t, fit)
    with forward_precision(t):
        fused = pipeline.run_fusion(pipeline.fusion, batch.seen, batch.text)
        logits = pipeline.seg(fused)
    lf, parts = fusion_objective(t, fused, batch)
    ls = pipeline.task_loss(logits, batch.label, reduce=t.world.reduce)
    unlabelled = consistency(t)
    term = None if unlabelled is None else unlabelled.loss(pipeline.seg, unlabelled.seg_input(pipeline.fusion))
    ls_all = _with_consistency(t, ls, parts, term)
    loss = lf + config.lambda_seg * ls_all
    norm_f, norm_s = _backward_step(t, loss, [opts.upper, opts.lower], "joint")
    scalars = {**parts, "loss/seg": float(ls.detach()), "loss/total": float(loss.detach()),
               "grad/fusion_norm": norm_f, "grad/seg_norm": norm_s}
    return StepResult(scalars)


def two_stage_step(t: Training, fit: Batch, hold: Batch | None) -> StepResult:
    """Stage 1 (the first ``t.fusion_steps`` steps): the fusion net on the fusion loss alone; stage 2: the
    segmenter on the frozen fusion."""
    pipeline, opts = t.pipeline, t.opts
    assert pipeline.fusion is not None and opts.upper is not None and opts.lower is not None
    if t.step < t.fusion_steps:
        return fusion_only_step(t, fit)
    batch = _inputs(t, fit)
    with forward_precision(t):
        with torch.no_grad():
            fused = pipeline.run_fusion(pipeline.fusion, batch.seen, batch.text)
        logits = pipeline.seg(fused)
    ls = pipeline.task_loss(logits, batch.label, reduce=t.world.reduce)
    scalars = {"loss/seg": float(ls.detach())}
    unlabelled = consistency(t)
    if unlabelled is not None:  # stage 2: the fusion net is frozen, so the teacher's input is the student's
        ls = _with_consistency(t, ls, scalars, unlabelled.loss(pipeline.seg, unlabelled.teacher_input))
    (norm,) = _backward_step(t, ls, [opts.lower], "segmentation")
    return StepResult({**scalars, "grad/seg_norm": norm, "stage": 2.0})


def fusion_only_step(t: Training, fit: Batch) -> StepResult:
    """The fusion net alone on the fusion loss (two-stage's first stage, bilevel's warm-up)."""
    batch = _inputs(t, fit)
    with forward_precision(t):
        fused = t.pipeline.run_fusion(t.pipeline.fusion, batch.seen, batch.text)
    lf, parts = fusion_objective(t, fused, batch)
    (norm,) = _backward_step(t, lf, [t.opts.upper], "fusion")
    return StepResult({**parts, "grad/fusion_norm": norm, "stage": 1.0})


def segmentation_step(t: Training, fit: Batch, hold: Batch | None) -> StepResult:
    """``direct`` and ``feature-fusion``: the segmenter alone on its chosen inputs."""
    pipeline, opts = t.pipeline, t.opts
    assert opts.lower is not None
    batch = _inputs(t, fit)
    with forward_precision(t):
        logits = pipeline.seg(pipeline.seg_input(batch.seen, batch.stored, None))
    ls = pipeline.task_loss(logits, batch.label, reduce=t.world.reduce)
    scalars = {"loss/seg": float(ls.detach())}
    unlabelled = consistency(t)
    if unlabelled is not None:
        ls = _with_consistency(t, ls, scalars, unlabelled.loss(pipeline.seg, unlabelled.teacher_input))
    (norm,) = _backward_step(t, ls, [opts.lower], "segmentation")
    return StepResult({**scalars, "grad/seg_norm": norm})


# ---- optimisers and the step table -------------------------------------------------------------


def make_optimiser(name: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """``adam`` or plain ``sgd`` (no momentum: delta = -lr * grad exactly) over ``params``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return torch.optim.Adam(params, lr=lr)


def make_optimisers(config: TrainConfig, pipeline: Pipeline) -> Optimisers:
    """The optimisers ``config``'s mode declares: upper over the fusion net, lower over the segmenter
    (the bi-level segmenter is trained by the inner steps instead, at the same learning rate), and the
    loss scaler of --precision fp16 (on the networks' device)."""
    wanted = MODES[config.mode].optimisers
    upper = lower = scaler = None
    if "upper" in wanted:
        upper = make_optimiser(config.upper_optimizer, list(pipeline.fusion.parameters()), config.lr_upper)
    if "lower" in wanted:
        lower = make_optimiser(config.lower_optimizer, list(pipeline.seg.parameters()), config.hypergrad.lr)
    if config.precision == "fp16":  # fp16 gradients underflow without loss scaling; bf16 has fp32's range
        scaler = torch.amp.GradScaler(next(pipeline.seg.parameters()).device.type)
    return Optimisers(upper, lower, scaler=scaler)


#: The step of each kind of mode (fuse4seg.train.modes.Mode.step names one).
STEPS: dict[str, Callable[[Training, Batch, Batch | None], StepResult]] = {
    "bilevel": bilevel_step, "two-stage": two_stage_step, "joint": joint_step, "segmentation": segmentation_step,
}
