"""Cheap approximate hypergradients: ``first-order`` and ``finite-difference`` (DARTS).

Costs with K inner steps and ``A`` = activation memory of one lower-loss forward pass:
- ``first-order``: K forward + backward passes without graph into ``upper``, then one forward +
  backward of the upper loss; memory O(A). Returns only the direct term ``d_u G(u, w_K)``: the
  dependence of ``w_K`` on ``u`` is ignored (zero when ``G`` does not use ``u`` directly).
- ``finite-difference``: the same K steps, one forward + backward of ``G`` (for ``d_u G`` and
  ``v = d_w G``), and two more forward + backward passes of the lower loss at
  ``w_{K-1} +- eps' v`` with ``eps' = eps / ||v||`` (DARTS, Liu et al. 2019, eq. 8);
  memory O(A). It differentiates the last inner step exactly up to O(eps'^2):
  ``d_u G - lr * [d_u F(u, w+) - d_u F(u, w-)] / (2 eps')``, i.e. ``truncated`` with T = 1.
  The central difference converges to the Hessian-vector product only for smooth losses: with
  piecewise-linear layers (ReLU/LeakyReLU, max-pooling) units crossing a kink inside +-eps' add
  an O(1) error whatever eps is (benchmarks/hypergrad.py shows it on the project's UNet).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from fuse4seg.bilevel.core import (
    HypergradientResult,
    LossFn,
    Options,
    Params,
    direct_and_lower_grads,
    finish,
    grad,
    inner_loop,
)


def first_order(
    upper: Params, lower: Params, lower_loss: LossFn, upper_loss: LossFn, opts: Options
) -> HypergradientResult:
    """Direct term only: ``d_u G(u, w_K)`` with ``w_K`` held fixed (grads shaped like ``upper``)."""
    w, state, info = inner_loop(upper, lower, lower_loss, opts, tracked=0)
    fixed = {k: v.detach() for k, v in w.items()}
    return finish(grad(upper_loss(upper, fixed), upper), w, state, info)


def finite_difference(
    upper: Params, lower: Params, lower_loss: LossFn, upper_loss: LossFn, opts: Options
) -> HypergradientResult:
    """DARTS approximation through the last inner step (sgd or momentum: see ``check_method``); grads shaped
    like ``upper``, ``.info["eps"]`` = the scaled step eps / ||v|| in units of ``w``."""
    before = replace(opts, steps=opts.steps - 1)
    w_prev, state, _ = inner_loop(upper, lower, lower_loss, before, tracked=0)
    last = replace(opts, steps=1, state=state)
    w, state, info = inner_loop(upper, w_prev, lower_loss, last, tracked=0)
    direct, v = direct_and_lower_grads(upper_loss, upper, w)
    norm = torch.sqrt(sum(torch.sum(t * t) for t in v.values()))
    if float(norm) == 0.0:
        info["eps"] = 0.0
        return finish(direct, w, state, info)
    eps = opts.eps / norm
    with torch.no_grad():
        plus = {k: w_prev[k].detach() + eps * v[k] for k in w_prev}
        minus = {k: w_prev[k].detach() - eps * v[k] for k in w_prev}
    g_plus = grad(lower_loss(upper, plus), upper)
    g_minus = grad(lower_loss(upper, minus), upper)
    grads = {k: direct[k] - opts.lr * (g_plus[k] - g_minus[k]) / (2.0 * eps) for k in upper}
    info["eps"] = float(eps)
    return finish(grads, w, state, info)
