"""Implicit-function-theorem hypergradients: ``implicit-cg`` and ``implicit-neumann``.

The K inner steps run without any graph into ``upper``; ``w_K`` is then taken as a stationary
point of ``F(u, .)`` so that ``dw*/du = -H^-1 d2F/dw du`` with ``H = d2F/dw2`` (+ ``damping`` I),
and the hypergradient is ``d_u G - d_u <d_w F(u, w*), q>`` with ``q`` solving ``H q = d_w G``
(conjugate gradient, or a Neumann series ``q ~ alpha sum_j (I - alpha H)^j d_w G``).

Costs with K inner steps, J solver iterations (``cg_iters`` / ``neumann_terms``) and ``A`` =
activation memory of one lower-loss forward pass: K plain forward + backward passes; one forward
+ backward of ``G``; one forward + backward of ``F`` with ``create_graph`` (kept alive); J
Hessian-vector products, each one backward through that gradient graph (about 2 backward
passes); one more such backward for the mixed term. Memory O(A) (about 3A), independent of K.
The answer is exact only as far as ``w_K`` is a stationary point and the solve converges.

HVP backends (same numbers; the default was chosen by ``benchmarks/hypergrad.py``):
``"autograd"`` builds ``d_w F`` once with ``create_graph`` and reuses it for every product
(double backward); ``"func"`` recomputes it per product with ``torch.func.jvp(grad(F))``
(forward-over-reverse) and ``torch.func.vjp`` for the mixed term, holding no graph in between.
"""

from __future__ import annotations

from collections.abc import Callable

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
from fuse4seg.bilevel.solvers import Vec, conjugate_gradient, neumann_series

HVP_BACKENDS = ("autograd", "func")
DEFAULT_HVP_BACKEND = "autograd"

Linear = Callable[[Vec], Vec]


def autograd_operators(upper: Params, w: Params, lower_loss: LossFn) -> tuple[Linear, Linear]:
    """``(v -> H v, q -> d_u <d_w F, q>)`` by double backward through one retained gradient graph."""
    names = list(w)
    gw = grad(lower_loss(upper, w), w, create_graph=True)
    live = [k for k in names if gw[k].requires_grad]  # entries F does not depend on are constant 0

    def hvp(v: Vec) -> Vec:
        """Hessian-vector product d_w <d_w F, v> at (u, w*)."""
        if not live:
            return {k: torch.zeros_like(w[k]) for k in names}
        out = torch.autograd.grad([gw[k] for k in live], [w[k] for k in names], [v[k] for k in live],
                                  retain_graph=True, allow_unused=True, materialize_grads=True)
        return {k: t.detach() for k, t in zip(names, out)}

    def mixed(q: Vec) -> Vec:
        """Mixed second derivative d_u <d_w F, q> (frees the retained graph)."""
        ukeys = list(upper)
        if not live:
            return {k: torch.zeros_like(upper[k]) for k in ukeys}
        out = torch.autograd.grad([gw[k] for k in live], [upper[k] for k in ukeys], [q[k] for k in live],
                                  allow_unused=True, materialize_grads=True)
        return {k: t.detach() for k, t in zip(ukeys, out)}

    return hvp, mixed


def func_operators(upper: Params, w: Params, lower_loss: LossFn) -> tuple[Linear, Linear]:
    """``(v -> H v, q -> d_u <d_w F, q>)`` with torch.func: jvp of grad (forward-over-reverse), vjp."""
    u0 = {k: v.detach() for k, v in upper.items()}
    w0 = {k: v.detach() for k, v in w.items()}

    def grad_w(u: Params, ww: Params) -> Params:
        """d_w F(u, ww) as a pure function (for torch.func transforms)."""
        return torch.func.grad(lambda x: lower_loss(u, x))(ww)

    def hvp(v: Vec) -> Vec:
        """Hessian-vector product by forward-mode differentiation of the gradient."""
        return torch.func.jvp(lambda x: grad_w(u0, x), (w0,), (v,))[1]

    def mixed(q: Vec) -> Vec:
        """Mixed second derivative by reverse-mode differentiation of the gradient in u."""
        _, pullback = torch.func.vjp(lambda u: grad_w(u, w0), u0)
        return pullback(q)[0]

    return hvp, mixed


def _implicit(upper: Params, lower: Params, lower_loss: LossFn, upper_loss: LossFn, opts: Options,
              use_cg: bool, backend: str) -> HypergradientResult:
    """Shared body: detached inner steps, then an IFT solve with the chosen solver and backend."""
    if backend not in HVP_BACKENDS:
        raise ValueError(f"unknown HVP backend {backend!r}; choose one of {HVP_BACKENDS}")
    w, state, info = inner_loop(upper, lower, lower_loss, opts, tracked=0)
    w = {k: v.detach().requires_grad_() for k, v in w.items()}
    direct, v = direct_and_lower_grads(upper_loss, upper, w)
    v = {k: t.detach() for k, t in v.items()}
    operators = autograd_operators if backend == "autograd" else func_operators
    hvp, mixed = operators(upper, w, lower_loss)
    if use_cg:
        q, solve_info = conjugate_gradient(hvp, v, iters=opts.cg_iters, tol=opts.tol, damping=opts.damping)
    else:
        alpha = opts.lr if opts.neumann_alpha is None else opts.neumann_alpha
        q, solve_info = neumann_series(hvp, v, terms=opts.neumann_terms, alpha=alpha, damping=opts.damping,
                                       tol=opts.neumann_tol)
    indirect = mixed(q)
    info.update(solve_info)
    return finish({k: direct[k] - indirect[k] for k in upper}, w, state, info)


def implicit_cg(upper: Params, lower: Params, lower_loss: LossFn, upper_loss: LossFn, opts: Options,
                backend: str = DEFAULT_HVP_BACKEND) -> HypergradientResult:
    """IFT hypergradient (shaped like ``upper``) with ``(H + damping I) q = d_w G`` solved by
    ``cg_iters`` CG steps to relative residual ``tol`` (``.info``: iterations, residual, indefinite)."""
    return _implicit(upper, lower, lower_loss, upper_loss, opts, True, backend)


def implicit_neumann(upper: Params, lower: Params, lower_loss: LossFn, upper_loss: LossFn, opts: Options,
                     backend: str = DEFAULT_HVP_BACKEND) -> HypergradientResult:
    """IFT hypergradient (shaped like ``upper``) with ``(H + damping I)^-1`` replaced by ``neumann_terms``
    Neumann terms of step ``neumann_alpha`` (default ``lr``; units 1/curvature)."""
    return _implicit(upper, lower, lower_loss, upper_loss, opts, False, backend)
