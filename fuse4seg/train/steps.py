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

import math
from collections.abc import Callable

import torch
from torch.profiler import record_function

from fuse4seg.bilevel import (
    OPTION_NAMES,
    NonFiniteHypergradient,
    assign_grads,
    load_params,
    module_hypergradient,
    module_inner_steps,
)
from fuse4seg.errors import ConfigError
from fuse4seg.losses import fusion_loss
from fuse4seg.runkit.batches import item_seed
from fuse4seg.text.alignment import semantic_loss
from fuse4seg.train.networks import fresh_segmenter_weights
from fuse4seg.train.step_parts import (
    Batch,
    Inputs,
    ModuleLoss,
    NonFiniteStep,
    StepResult,
    Training,
    backward_step,
    batch_inputs,
    consistency,
    finite,
    forward_precision,
    tensor_norm,
    with_consistency,
)

__all__ = ["STEPS", "NonFiniteStep", "StepResult", "bilevel_step", "joint_step", "segmentation_step",
           "two_stage_step"]


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



def lower_loss_of(t: Training, fit: Batch, record: dict[str, float]) -> ModuleLoss:
    """The lower loss of this step's fitting batch, as a function of the two networks (F, S): the segmentation loss
    of S(F(x_fit)) against y_fit, plus the unlabelled slices' consistency (its part goes to ``record``)."""
    pipeline, fit_in, reduce, unlabelled = t.pipeline, batch_inputs(t, fit), t.world.reduce, consistency(t)

    def lower_loss(fuse: Callable[..., torch.Tensor], segment: Callable[..., torch.Tensor]) -> torch.Tensor:
        """Segmentation loss of S(F(x_fit)) against y_fit (scalar), plus the unlabelled slices' consistency."""
        with forward_precision(t):
            logits = segment(pipeline.run_fusion(fuse, fit_in.seen, fit_in.text))
        loss = pipeline.task_loss(logits, fit_in.label, reduce=reduce)
        term = None if unlabelled is None else unlabelled.loss(segment, unlabelled.seg_input(fuse))
        return with_consistency(t, loss, record, term)

    return lower_loss


def bilevel_losses(t: Training, fit: Batch, hold: Batch, record: dict[str, float]) -> tuple[ModuleLoss, ModuleLoss]:
    """(lower_loss, upper_loss) of this step's batches, as functions of the two networks (F, S).

    The upper loss here is the held-out segmentation loss alone: the fusion loss does not depend on the segmenter,
    so its gradient is computed once, outside the hypergradient (:func:`fusion_loss_grads`), and added with the
    segmentation weight by the step. ``record`` receives the last evaluated held-out loss (for logging), as a float.
    """
    pipeline, hold_in, reduce = t.pipeline, batch_inputs(t, hold), t.world.reduce

    def upper_loss(fuse: Callable[..., torch.Tensor], segment: Callable[..., torch.Tensor]) -> torch.Tensor:
        """L_seg(S(F(x_hold)), y_hold) (scalar)."""
        with forward_precision(t):
            logits = segment(pipeline.run_fusion(fuse, hold_in.seen, hold_in.text))
        ls = pipeline.task_loss(logits, hold_in.label, reduce=reduce)
        record["loss/seg_holdout"] = float(ls.detach())
        return ls

    return lower_loss_of(t, fit, record), upper_loss


#: torch.profiler range of the fusion loss's gradient in the bi-level step (beside fuse4seg.bilevel.PHASES).
FUSION_PHASE = "bilevel/fusion_loss_gradient"


@record_function(FUSION_PHASE)
def fusion_loss_grads(t: Training, fit: Batch) -> tuple[float, dict[str, float], dict[str, torch.Tensor]]:
    """(the fusion net's own loss at x_fit (:func:`fusion_objective`), its parts, its gradient by trainable fusion-parameter
    name, averaged over the ranks): the direct part of the upper gradient, the part that does not go through the
    segmenter."""
    pipeline, fit_in = t.pipeline, batch_inputs(t, fit)
    params = {k: p for k, p in pipeline.fusion.named_parameters() if p.requires_grad}
    with forward_precision(t):
        fused = pipeline.run_fusion(pipeline.fusion, fit_in.seen, fit_in.text)
    lf, parts = fusion_objective(t, fused, fit_in)
    grads = torch.autograd.grad(lf, list(params.values()), allow_unused=True, materialize_grads=True)
    t.world.mean_(grads)
    return float(lf.detach()), parts, dict(zip(params, grads))


def engine_options(t: Training) -> dict:
    """The keyword options of :func:`fuse4seg.bilevel.module_hypergradient` for this run's step: the engine's
    declared options (--hypergrad's group) and the inner optimiser state carried from the last step."""
    return {name: getattr(t.config.engine, name) for name in OPTION_NAMES} | {"state": t.opts.inner_state}


#: Solver facts of the implicit methods logged by the step (fuse4seg.bilevel.solvers): Hessian-vector products, CG's
#: relative residual and whether it met negative curvature (1.0), the Neumann series' estimated relative tail.
SOLVER_SCALARS = ("hvps", "residual", "indefinite", "tail")


def bilevel_step(t: Training, fit: Batch, hold: Batch | None) -> StepResult:
    """One outer step: hypergradient through K inner steps, update phi, keep the inner theta_K.

    During the first ``t.fusion_steps`` steps (``--fusion-steps``: a warm-up) only the fusion net
    learns, from the fusion loss; during the next ``--seg-warmup`` steps only the segmenter
    (:func:`segmenter_warmup_step`). With ``--seg-fraction f`` the segmentation term's weight is set at
    every step to ``lambda = f |g_fuse| / |g_seg|`` (g_fuse: the fusion-loss gradient; g_seg: the
    hypergradient of the held-out segmentation loss), so the segmentation part of the update has
    f times the norm of the fusion part. ``hypergrad/seg_fraction`` logs that ratio either way. The update is
    g_fuse + lambda g_seg, with g_fuse computed once (:func:`fusion_loss_grads`) and g_seg by the hypergradient
    of the held-out loss alone.
    """
    if t.step < t.fusion_steps:
        return fusion_only_step(t, fit)
    if t.step < t.fusion_steps + t.config.seg_warmup:
        return segmenter_warmup_step(t, fit)
    reset = reset_index(t)
    if reset:
        reset_segmenter(t, reset)
    config, fusion, seg, opts = t.config, t.pipeline.fusion, t.pipeline.seg, t.opts
    assert fusion is not None and opts.upper is not None and hold is not None
    auto = config.seg_fraction is not None
    record: dict[str, float] = {}
    lower_loss, upper_loss = bilevel_losses(t, fit, hold, record)
    options = engine_options(t)
    nonfinite = None
    try:
        result = module_hypergradient(fusion, seg, lower_loss, upper_loss, config.method, sync=t.world.sync,
                                      **options)
    except NonFiniteHypergradient as exc:  # still averaged below, so that every rank makes the same decision
        result, nonfinite = exc.result, str(exc)
    except ConfigError as exc:  # names an engine parameter (e.g. a carried inner state that does not fit)
        raise ConfigError(f"bi-level step {t.step}: {exc}") from None
    t.world.mean_(list(result.grads.values()))  # rule 2: rank r holds N x its shard's part
    if nonfinite is not None or not finite(*result.grads.values()):
        raise NonFiniteStep(nonfinite or "non-finite hypergradient")
    if not finite(*result.lower.values()):
        raise NonFiniteStep("non-finite segmentation weights after the inner steps")
    lf, parts, g_fuse = fusion_loss_grads(t, fit)
    record.update(parts)
    norm_fuse, norm_seg = tensor_norm(g_fuse), tensor_norm(result.grads)
    if auto:
        lam = config.seg_fraction * norm_fuse / norm_seg if norm_seg > 0 else 0.0
    else:
        lam = config.lambda_seg if opts.seg_weight is None else opts.seg_weight  # adaptive under --fusion-budget
    grads = {k: g_fuse[k] + lam * g for k, g in result.grads.items()}
    upper_value = lf + lam * record.get("loss/seg_holdout", math.nan)
    if not (math.isfinite(upper_value) and math.isfinite(lam)):
        raise NonFiniteStep("non-finite upper loss")
    if not finite(*grads.values()):
        raise NonFiniteStep("non-finite fusion-loss gradient")
    opts.upper.zero_grad(set_to_none=True)
    assign_grads(fusion, grads)
    opts.upper.step()
    load_params(seg, result.lower)
    opts.inner_state = result.state
    scalars = {**record, "loss/upper": upper_value, "hypergrad/norm": tensor_norm(grads), "hypergrad/lambda_seg": lam,
               "hypergrad/seg_fraction": lam * norm_seg / norm_fuse if norm_fuse > 0 else math.nan}
    if "lower_loss" in result.info:
        scalars["loss/seg_inner"] = float(result.info["lower_loss"])
    for key in SOLVER_SCALARS:  # the implicit methods' solver work and how far it got
        if key in result.info:
            scalars[f"hypergrad/{key}"] = float(result.info[key])
    if config.fusion_budget is not None:
        ratio = fusion_ratio(t, fit, parts["loss/fusion"])
        opts.seg_weight = adapt_seg_weight(lam, ratio, config.fusion_budget)
        scalars["hypergrad/fusion_ratio"] = ratio
    return StepResult(scalars)


def reset_index(t: Training) -> int:
    """Which reset of the segmenter (``--seg-reset-every N``) this bi-level step starts with: 1, 2, ... at bi-level
    steps N, 2N, ... (counted from 0 after --fusion-steps and --seg-warmup), else 0."""
    every = t.config.seg_reset_every
    k = t.step - t.fusion_steps - t.config.seg_warmup
    return k // every if every and k > 0 and k % every == 0 else 0


def reset_segmenter(t: Training, index: int) -> None:
    """Reset ``index`` of ``--seg-reset-every``: the segmenter (and its mean teacher) take fresh initial weights,
    drawn from (seed, index) alone so that a resumed run draws the same, and the inner optimiser starts afresh."""
    weights = fresh_segmenter_weights(t.config, item_seed(t.config.seed, "segmenter_reset", index, 0))
    for net in (t.pipeline.seg, t.pipeline.teacher):
        if net is not None:
            net.load_state_dict(weights)
    t.opts.inner_state = None


def segmenter_warmup_step(t: Training, fit: Batch) -> StepResult:
    """One bi-level warm-up step (``--seg-warmup``): the K inner steps on x_fit, the fusion net frozen; the segmenter
    keeps theta_K and the inner optimiser its state, as after a bi-level step, and the fusion net does not move."""
    record: dict[str, float] = {}
    lower, state, info = module_inner_steps(t.pipeline.fusion, t.pipeline.seg, lower_loss_of(t, fit, record),
                                            sync=t.world.sync, **engine_options(t))
    if not finite(*lower.values()):
        raise NonFiniteStep("non-finite segmentation weights after the warm-up's inner steps")
    load_params(t.pipeline.seg, lower)
    t.opts.inner_state = state
    return StepResult({**record, "loss/seg_inner": float(info["lower_loss"])})


#: --fusion-budget: the log of the segmentation weight moves by this much per unit of relative violation per step,
#: so a fusion loss 10 % over budget shrinks the weight by 0.5 % a step (about 40 % over 100 steps).
BUDGET_RATE = 0.05
#: Bounds of the adaptive segmentation weight (the constraint can always be met at the low end, where the
#: fusion loss rules the update).
SEG_WEIGHT_RANGE = (1e-3, 1e4)


def adapt_seg_weight(weight: float, ratio: float, budget: float) -> float:
    """The next segmentation weight of a constrained upper level (a multiplicative dual step, as in GECO):
    weight * exp(-BUDGET_RATE * (ratio / budget - 1)), clipped to SEG_WEIGHT_RANGE; ``ratio`` = fusion loss of the
    fused image / fusion loss of the benchmark's image on the same batch (> budget: more weight on fusion)."""
    low, high = SEG_WEIGHT_RANGE
    step = -BUDGET_RATE * (ratio / budget - 1.0) if math.isfinite(ratio) else -math.inf
    return float(min(high, max(low, weight * math.exp(max(step, -50.0)))))


def fusion_ratio(t: Training, fit: Batch, fused_loss: float) -> float:
    """``fused_loss`` (the fusion loss of the fused image at x_fit) over the fusion loss of the benchmark's own fused
    image (its rule, e.g. Laplacian, as stored: clean even under --degrade-inputs) at x_fit, both against the clean
    sources: what --fusion-budget bounds (inf when the benchmark's image has zero loss and the fused image does not).
    The fused image's loss comes from the step's forward pass, at --precision."""
    device = t.device
    stored = fit["fused"].to(device, non_blocking=True).float()
    sources = t.pipeline.fusion_sources(fit["source"].to(device, non_blocking=True).float())
    with torch.no_grad():
        ref, _ = fusion_loss(stored, sources, t.config.fusion_loss_weights or None, reduce=t.world.reduce)
    ref_value = float(ref)
    if ref_value > 0:
        return fused_loss / ref_value
    return 0.0 if fused_loss <= 0 else math.inf


def joint_step(t: Training, fit: Batch, hold: Batch | None) -> StepResult:
    """Both nets, one loss L_fuse + lambda * L_seg on the same batch, one backward (RMR-Fusion style)."""
    config, pipeline, opts = t.config, t.pipeline, t.opts
    assert pipeline.fusion is not None and opts.upper is not None and opts.lower is not None
    batch = batch_inputs(t, fit)
    with forward_precision(t):
        fused = pipeline.run_fusion(pipeline.fusion, batch.seen, batch.text)
        logits = pipeline.seg(fused)
    lf, parts = fusion_objective(t, fused, batch)
    ls = pipeline.task_loss(logits, batch.label, reduce=t.world.reduce)
    unlabelled = consistency(t)
    term = None if unlabelled is None else unlabelled.loss(pipeline.seg, unlabelled.seg_input(pipeline.fusion))
    ls_all = with_consistency(t, ls, parts, term)
    loss = lf + config.lambda_seg * ls_all
    norm_f, norm_s = backward_step(t, loss, [opts.upper, opts.lower], "joint")
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
    batch = batch_inputs(t, fit)
    with forward_precision(t):
        with torch.no_grad():
            fused = pipeline.run_fusion(pipeline.fusion, batch.seen, batch.text)
        logits = pipeline.seg(fused)
    ls = pipeline.task_loss(logits, batch.label, reduce=t.world.reduce)
    scalars = {"loss/seg": float(ls.detach())}
    unlabelled = consistency(t)
    if unlabelled is not None:  # stage 2: the fusion net is frozen, so the teacher's input is the student's
        ls = with_consistency(t, ls, scalars, unlabelled.loss(pipeline.seg, unlabelled.teacher_input))
    (norm,) = backward_step(t, ls, [opts.lower], "segmentation")
    return StepResult({**scalars, "grad/seg_norm": norm, "stage": 2.0})


def fusion_only_step(t: Training, fit: Batch) -> StepResult:
    """The fusion net alone on the fusion loss (two-stage's first stage, bilevel's warm-up)."""
    batch = batch_inputs(t, fit)
    with forward_precision(t):
        fused = t.pipeline.run_fusion(t.pipeline.fusion, batch.seen, batch.text)
    lf, parts = fusion_objective(t, fused, batch)
    (norm,) = backward_step(t, lf, [t.opts.upper], "fusion")
    return StepResult({**parts, "grad/fusion_norm": norm, "stage": 1.0})


def segmentation_step(t: Training, fit: Batch, hold: Batch | None) -> StepResult:
    """``direct`` and ``feature-fusion``: the segmenter alone on its chosen inputs."""
    pipeline, opts = t.pipeline, t.opts
    assert opts.lower is not None
    batch = batch_inputs(t, fit)
    with forward_precision(t):
        logits = pipeline.seg(pipeline.seg_input(batch.seen, batch.stored, None))
    ls = pipeline.task_loss(logits, batch.label, reduce=t.world.reduce)
    scalars = {"loss/seg": float(ls.detach())}
    unlabelled = consistency(t)
    if unlabelled is not None:
        ls = with_consistency(t, ls, scalars, unlabelled.loss(pipeline.seg, unlabelled.teacher_input))
    (norm,) = backward_step(t, ls, [opts.lower], "segmentation")
    return StepResult({**scalars, "grad/seg_norm": norm})



#: The step of each kind of mode (fuse4seg.train.modes.Mode.step names one).
STEPS: dict[str, Callable[[Training, Batch, Batch | None], StepResult]] = {
    "bilevel": bilevel_step, "two-stage": two_stage_step, "joint": joint_step, "segmentation": segmentation_step,
}
