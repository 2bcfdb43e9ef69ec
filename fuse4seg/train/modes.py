"""One optimisation step per training mode, on the same networks, optimisers and batches.

Bi-level (``bilevel``), as implemented here, with F_phi the fusion net and S_theta the segmenter:

    upper:  phi <- phi - opt_upper( d/dphi [ L_fuse(F_phi(x_fit), x_fit)
                                            + lambda * L_seg(S_theta_K(phi)(F_phi(x_hold)), y_hold) ] )
    lower:  theta_{k+1} = theta_k - opt_inner( d/dtheta L_seg(S_theta_k(F_phi(x_fit)), y_fit) ),
            k = 0..K-1, theta_0 = the segmenter's current weights (warm start), theta <- theta_K

x_fit / y_fit is one batch of the train split's fitting part, x_hold / y_hold one batch of its
held-out cases; the hypergradient d/dphi goes through the K inner steps by the chosen method of
fuse4seg.bilevel. The inner optimiser's state (momentum, Adam moments) is carried across outer steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from fuse4seg.losses import fusion_loss, segmentation_loss
from fuse4seg.train.config import TrainConfig
from fuse4seg.train.networks import Pipeline

Batch = dict[str, Any]
#: A loss closure over (phi, theta) parameter dicts -> scalar tensor.
LossFn = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], torch.Tensor]


class NonFiniteStep(ArithmeticError):
    """A loss or (hyper)gradient of this step is NaN/Inf; the step was not applied."""


@dataclass
class StepResult:
    """What one step reports: scalars for logging (TensorBoard tag -> value)."""

    scalars: dict[str, float] = field(default_factory=dict)


@dataclass
class Optimisers:
    """Torch optimisers of the fusion net (upper) and the segmenter (lower, unused in bilevel)."""

    upper: torch.optim.Optimizer | None
    lower: torch.optim.Optimizer | None
    inner_state: dict[str, Any] | None = None  # bilevel: inner optimiser state carried across steps


def make_optimiser(name: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """``adam`` or plain ``sgd`` (no momentum: delta = -lr * grad exactly) over ``params``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return torch.optim.Adam(params, lr=lr)


def make_optimisers(config: TrainConfig, pipeline: Pipeline) -> Optimisers:
    """The optimisers a mode needs; the bilevel segmenter is updated by the inner loop instead."""
    upper = None
    if pipeline.fusion is not None:
        upper = make_optimiser(config.upper_optimizer, list(pipeline.fusion.parameters()), config.lr_upper)
    lower = None if config.mode == "bilevel" else make_optimiser(
        config.lower_optimizer, list(pipeline.seg.parameters()), config.lr_lower
    )
    return Optimisers(upper, lower)


def _finite(*values: torch.Tensor) -> bool:
    """True when every tensor is all-finite."""
    return all(bool(torch.isfinite(v).all()) for v in values)


def _grad_norm(params: list[nn.Parameter]) -> float:
    """Euclidean norm of the concatenated .grad of ``params`` (0 when none has a gradient)."""
    grads = [p.grad.detach().flatten() for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.cat(grads))) if grads else 0.0


def _backward_step(loss: torch.Tensor, opt: torch.optim.Optimizer, what: str) -> float:
    """Backward ``loss`` and step ``opt`` unless the loss or a gradient is non-finite; returns grad norm."""
    if not _finite(loss):
        raise NonFiniteStep(f"non-finite {what} loss ({float(loss.detach())})")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in opt.param_groups for p in g["params"]]
    norm = _grad_norm(params)
    if not math.isfinite(norm):
        opt.zero_grad(set_to_none=True)
        raise NonFiniteStep(f"non-finite {what} gradient")
    opt.step()
    return norm


def _inputs(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(source (N,4,H,W), stored fused (N,1,H,W), label (N,H,W) int64) of a batch on ``device``."""
    return (batch["source"].to(device, non_blocking=True), batch["fused"].to(device, non_blocking=True),
            batch["label"].to(device, non_blocking=True).long())


def hypergrad_options(config: TrainConfig) -> dict[str, Any]:
    """Options for fuse4seg.bilevel.hypergradient from the config (only those the method reads)."""
    opts: dict[str, Any] = {"steps": config.inner_steps, "lr": config.lr_lower, "optimizer": config.inner_optimizer}
    if config.inner_optimizer == "momentum":
        opts["momentum"] = config.inner_momentum
    method = config.hypergrad
    if method == "truncated":
        opts["truncate"] = config.truncate if config.truncate is not None else 1
    elif method == "finite-difference":
        opts["eps"] = config.fd_eps
    elif method == "implicit-cg":
        opts.update(cg_iters=config.cg_iters, damping=config.damping)
    elif method == "implicit-neumann":
        opts.update(neumann_terms=config.neumann_terms, damping=config.damping)
        if config.neumann_alpha is not None:
            opts["neumann_alpha"] = config.neumann_alpha
    return opts


def bilevel_losses(pipeline: Pipeline, fit: Batch, hold: Batch, device: torch.device, record: dict[str, float]
                   ) -> tuple[LossFn, LossFn]:
    """(lower_loss, upper_loss) closures over (phi, theta) dicts for this step's batches.

    ``record`` receives the last evaluated upper-loss parts (for logging), as floats.
    """
    config = pipeline.config
    fusion, seg = pipeline.fusion, pipeline.seg
    assert fusion is not None
    x_fit, _, y_fit = _inputs(fit, device)
    x_hold, _, y_hold = _inputs(hold, device)
    s_fit, s_hold = pipeline.fusion_sources(x_fit), pipeline.fusion_sources(x_hold)

    def lower_loss(phi: dict[str, torch.Tensor], theta: dict[str, torch.Tensor]) -> torch.Tensor:
        """Segmentation loss of S_theta(F_phi(x_fit)) against y_fit (scalar)."""
        fused = functional_call(fusion, phi, (s_fit,))
        return segmentation_loss(functional_call(seg, theta, (fused,)), y_fit, config.region_based)

    def upper_loss(phi: dict[str, torch.Tensor], theta: dict[str, torch.Tensor]) -> torch.Tensor:
        """L_fuse(F_phi(x_fit), x_fit) + lambda * L_seg(S_theta(F_phi(x_hold)), y_hold) (scalar)."""
        lf, _ = fusion_loss(functional_call(fusion, phi, (s_fit,)), s_fit, config.fusion_loss_weights or None)
        ls = segmentation_loss(functional_call(seg, theta, (functional_call(fusion, phi, (s_hold,)),)), y_hold,
                               config.region_based)
        record.update({"loss/fusion": float(lf.detach()), "loss/seg_holdout": float(ls.detach())})
        return lf + config.lambda_seg * ls

    return lower_loss, upper_loss


def bilevel_step(pipeline: Pipeline, opts: Optimisers, fit: Batch, hold: Batch, device: torch.device) -> StepResult:
    """One outer step: hypergradient through K inner steps, update phi, keep the inner theta_K."""
    from fuse4seg.bilevel import NonFiniteHypergradient, hypergradient

    config = pipeline.config
    assert pipeline.fusion is not None and opts.upper is not None
    record: dict[str, float] = {}
    lower_loss, upper_loss = bilevel_losses(pipeline, fit, hold, device, record)
    phi = dict(pipeline.fusion.named_parameters())
    theta = {k: v.detach() for k, v in pipeline.seg.named_parameters()}
    options = hypergrad_options(config)
    if opts.inner_state is not None:
        options["state"] = opts.inner_state
    try:
        result = hypergradient(phi, theta, lower_loss, upper_loss, method=config.hypergrad, **options)
    except NonFiniteHypergradient as exc:
        raise NonFiniteStep(str(exc)) from None
    grads, new_theta = result[0], result[1]
    if not _finite(*new_theta.values()):
        raise NonFiniteStep("non-finite segmentation weights after the inner steps")
    upper_value = record.get("loss/fusion", math.nan) + config.lambda_seg * record.get("loss/seg_holdout", math.nan)
    if not math.isfinite(upper_value):
        raise NonFiniteStep("non-finite upper loss")
    norm = float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads.values()])))
    opts.upper.zero_grad(set_to_none=True)
    for name, p in phi.items():
        p.grad = grads[name].to(p.dtype)
    opts.upper.step()
    with torch.no_grad():
        for name, p in pipeline.seg.named_parameters():
            p.copy_(new_theta[name])
    opts.inner_state = getattr(result, "state", None)
    info = getattr(result, "info", {}) or {}
    scalars = {**record, "loss/upper": upper_value, "hypergrad/norm": norm}
    if "lower_loss" in info:
        scalars["loss/seg_inner"] = float(info["lower_loss"])
    return StepResult(scalars)


def joint_step(pipeline: Pipeline, opts: Optimisers, fit: Batch, device: torch.device) -> StepResult:
    """Both nets, one loss L_fuse + lambda * L_seg on the same batch, one backward (RMR-Fusion style)."""
    config = pipeline.config
    assert pipeline.fusion is not None and opts.upper is not None and opts.lower is not None
    x, _, y = _inputs(fit, device)
    s = pipeline.fusion_sources(x)
    fused = pipeline.fusion(s)
    lf, _ = fusion_loss(fused, s, config.fusion_loss_weights or None)
    logits = pipeline.seg(fused)
    ls = segmentation_loss(logits, y, config.region_based)
    loss = lf + config.lambda_seg * ls
    if not _finite(loss):
        raise NonFiniteStep(f"non-finite joint loss ({float(loss.detach())})")
    opts.upper.zero_grad(set_to_none=True)
    opts.lower.zero_grad(set_to_none=True)
    loss.backward()
    norm_f = _grad_norm(list(pipeline.fusion.parameters()))
    norm_s = _grad_norm(list(pipeline.seg.parameters()))
    if not (math.isfinite(norm_f) and math.isfinite(norm_s)):
        raise NonFiniteStep("non-finite joint gradient")
    opts.upper.step()
    opts.lower.step()
    scalars = {"loss/fusion": float(lf.detach()), "loss/seg": float(ls.detach()), "loss/total": float(loss.detach()),
               "grad/fusion_norm": norm_f, "grad/seg_norm": norm_s}
    return StepResult(scalars)


def two_stage_step(pipeline: Pipeline, opts: Optimisers, fit: Batch, device: torch.device, fusion_stage: bool
                   ) -> StepResult:
    """Stage 1: the fusion net on the fusion loss alone; stage 2: the segmenter on the frozen fusion."""
    config = pipeline.config
    assert pipeline.fusion is not None and opts.upper is not None and opts.lower is not None
    x, _, y = _inputs(fit, device)
    s = pipeline.fusion_sources(x)
    if fusion_stage:
        fused = pipeline.fusion(s)
        lf, _ = fusion_loss(fused, s, config.fusion_loss_weights or None)
        norm = _backward_step(lf, opts.upper, "fusion")
        return StepResult({"loss/fusion": float(lf.detach()), "grad/fusion_norm": norm, "stage": 1.0})
    with torch.no_grad():
        fused = pipeline.fusion(s)
    logits = pipeline.seg(fused)
    ls = segmentation_loss(logits, y, config.region_based)
    norm = _backward_step(ls, opts.lower, "segmentation")
    return StepResult({"loss/seg": float(ls.detach()), "grad/seg_norm": norm, "stage": 2.0})


def segmentation_step(pipeline: Pipeline, opts: Optimisers, fit: Batch, device: torch.device) -> StepResult:
    """``direct`` and ``feature-fusion``: the segmenter alone on its chosen inputs."""
    assert opts.lower is not None
    x, stored, y = _inputs(fit, device)
    logits = pipeline.seg(pipeline.seg_input(x, stored, None))
    ls = segmentation_loss(logits, y, pipeline.config.region_based)
    norm = _backward_step(ls, opts.lower, "segmentation")
    return StepResult({"loss/seg": float(ls.detach()), "grad/seg_norm": norm})
