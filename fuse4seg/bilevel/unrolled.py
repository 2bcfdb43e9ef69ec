"""Reverse-mode hypergradients through the inner optimisation: ``unrolled``, ``truncated``,
``higher`` (the same computation run by the ``higher`` library, as a reference backend).

Costs with K inner steps and ``A`` = activation memory of one lower-loss forward pass:
- ``unrolled``: K forward + K backward passes with ``create_graph`` (each backward also records
  its own graph), then one backward through the whole tape (about 2K backward-sized passes);
  memory O(K * A) plus K copies of the lower parameters (and optimiser state).
- ``truncated``: K - T plain forward/backward passes without graph, then T as in ``unrolled``;
  memory O(T * A). Exact for the truncated procedure, biased for the full one.
- ``higher``: same arithmetic and cost as ``unrolled`` (plus higher's module patching).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fuse4seg.bilevel.core import (
    HypergradientResult,
    LossFn,
    Options,
    Params,
    finish,
    initial_state,
    inner_loop,
    upper_gradient,
)
from fuse4seg.bilevel.optimizers import State


def unrolled(
    upper: Params, lower: Params, lower_loss: LossFn, upper_loss: LossFn, opts: Options
) -> HypergradientResult:
    """Exact gradient of ``G(u, w_K(u))`` through all K differentiable inner steps (shaped like ``upper``)."""
    w, state, info = inner_loop(upper, lower, lower_loss, opts, tracked=opts.steps)
    return finish(upper_gradient(upper_loss, upper, w), w, state, info)


def truncated(
    upper: Params, lower: Params, lower_loss: LossFn, upper_loss: LossFn, opts: Options
) -> HypergradientResult:
    """Back-propagate through the last ``truncate`` (T) of the K steps only (T = K: ``unrolled``);
    steps 1..K-T and the optimiser state they produce are treated as constants in ``upper``."""
    w, state, info = inner_loop(upper, lower, lower_loss, opts, tracked=opts.truncate)
    info["truncate"] = opts.truncate
    return finish(upper_gradient(upper_loss, upper, w), w, state, info)


class _Holder(nn.Module):
    """An nn.Module whose parameters are copies of the lower tensors (higher patches modules)."""

    def __init__(self, lower: Params) -> None:
        """Register one parameter per lower tensor, in the dict's order."""
        super().__init__()
        for i, value in enumerate(lower.values()):
            self.register_parameter(f"p{i}", nn.Parameter(value.detach().clone()))


def _torch_optimizer(holder: _Holder, opts: Options, state: State) -> torch.optim.Optimizer:
    """The torch optimiser higher wraps, with our (possibly warm-started) state preloaded."""
    params = list(holder.parameters())
    if opts.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=opts.lr, betas=opts.betas, eps=1e-8)
        for p, name in zip(params, state["m"]):
            opt.state[p] = {"step": int(state["step"]), "exp_avg": state["m"][name].clone(),
                            "exp_avg_sq": state["v"][name].clone()}
        return opt
    if opts.optimizer == "momentum":
        opt = torch.optim.SGD(params, lr=opts.lr, momentum=opts.momentum)
        for p, name in zip(params, state["buf"]):
            opt.state[p] = {"momentum_buffer": state["buf"][name].clone()}
        return opt
    return torch.optim.SGD(params, lr=opts.lr)


def _state_from_higher(diffopt: Any, names: list[str], opts: Options) -> State:
    """Our state dict from higher's per-parameter optimiser state."""
    per_param = [diffopt.state[0][i] for i in range(len(names))]
    if opts.optimizer == "adam":
        return {"step": int(per_param[0]["step"]), "m": {n: s["exp_avg"] for n, s in zip(names, per_param)},
                "v": {n: s["exp_avg_sq"] for n, s in zip(names, per_param)}}
    if opts.optimizer == "momentum":
        return {"buf": {n: s["momentum_buffer"] for n, s in zip(names, per_param)}}
    return {}


def higher_unrolled(
    upper: Params, lower: Params, lower_loss: LossFn, upper_loss: LossFn, opts: Options
) -> HypergradientResult:
    """``unrolled`` run through ``higher.innerloop_ctx`` and higher's differentiable optimisers.
    (higher's Adam adds eps to sqrt(v) before bias correction, so Adam differs by O(eps))."""
    import higher  # deferred: only this backend needs it

    names = list(lower)
    holder = _Holder(lower)
    opt = opts.inner_optimizer()
    init_w = {k: v.detach() for k, v in lower.items()}
    state = initial_state(opt, opts, init_w)
    torch_opt = _torch_optimizer(holder, opts, state)
    last = torch.full((), float("nan"))
    with higher.innerloop_ctx(holder, torch_opt, copy_initial_weights=True, track_higher_grads=True) as (
        fmodel, diffopt,
    ):
        for _ in range(opts.steps):
            loss = lower_loss(upper, dict(zip(names, fmodel.fast_params)))
            diffopt.step(loss)
            last = loss.detach()
        w = dict(zip(names, fmodel.fast_params))
        grads = upper_gradient(upper_loss, upper, w)
        new_state = _state_from_higher(diffopt, names, opts) if opts.steps else state
    return finish(grads, w, new_state, {"lower_loss": float(last)})
