"""Shared pieces of the hypergradient methods: options, result type, inner loop, finiteness check.

Notation used by every method: ``u`` = upper parameters, ``w`` = lower parameters,
``F(u, w)`` = ``lower_loss``, ``G(u, w)`` = ``upper_loss``; the K inner steps map ``w_0`` to
``w_K``; the hypergradient is ``dG(u, w_K(u))/du = d_u G + (dw_K/du)^T d_w G``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

from fuse4seg.bilevel.optimizers import InnerOptimizer, State, check_state, detach_state, make_optimizer
from fuse4seg.errors import ConfigError

if TYPE_CHECKING:
    from typing import Self

Params = dict[str, torch.Tensor]
LossFn = Callable[[Params, Params], torch.Tensor]


class NonFiniteHypergradient(ArithmeticError):
    """The hypergradient has NaN/Inf entries; ``.names`` lists the upper keys, ``.result`` is the
    full :class:`HypergradientResult` (so a caller may still keep the new lower parameters)."""

    def __init__(self, names: list[str], result: HypergradientResult) -> None:
        """Keep the offending upper keys and the full result; the message lists the keys."""
        super().__init__(f"non-finite hypergradient for upper parameter(s): {', '.join(names)}")
        self.names = names
        self.result = result


class HypergradientResult(tuple):
    """``(upper_grads, new_lower)``; also ``.state`` (inner optimiser state after the steps, for
    warm starts) and ``.info`` (diagnostics: final inner loss, solver iterations/residual)."""

    state: State
    info: dict[str, Any]

    def __new__(cls, grads: Params, lower: Params, state: State, info: dict[str, Any]) -> Self:
        """Build the pair and attach state and info."""
        self = super().__new__(cls, (grads, lower))
        self.state = state
        self.info = info
        return self

    @property
    def grads(self) -> Params:
        """Hypergradient per upper key (same shapes, dtypes and devices as the upper tensors)."""
        return self[0]

    @property
    def lower(self) -> Params:
        """Lower parameters after the K inner steps (detached)."""
        return self[1]


@dataclass(frozen=True)
class Options:
    """Every option `hypergradient` accepts; names are part of the public API."""

    steps: int = 1
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    truncate: int = 1
    eps: float = 0.01
    cg_iters: int = 10
    tol: float = 1e-10
    damping: float = 0.0
    neumann_terms: int = 10
    neumann_alpha: float | None = None
    state: State | None = None

    def inner_optimizer(self) -> InnerOptimizer:
        """The differentiable inner optimiser these options describe."""
        return make_optimizer(self.optimizer, self.lr, self.momentum, self.betas)


OPTION_NAMES = tuple(f.name for f in fields(Options))


def _number(name: str, value: Any, integer: bool, low: float, low_open: bool = False) -> Any:
    """Validate one numeric option (finite, >= or > low); ConfigError naming it otherwise."""
    kind = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise ConfigError(f"{name}: expected a finite {'integer' if integer else 'number'}, got {value!r}")
    if value < low or (low_open and value == low):
        raise ConfigError(f"{name}: must be {'>' if low_open else '>='} {low}, got {value!r}")
    return int(value) if integer else float(value)


def parse_options(options: dict[str, Any]) -> Options:
    """Check option names and values; ConfigError naming the first bad one."""
    for name in options:
        if name not in OPTION_NAMES:
            raise ConfigError(f"{name}: unknown hypergradient option; known options: {', '.join(OPTION_NAMES)}")
    o = dict(options)
    for name in ("steps", "truncate", "cg_iters", "neumann_terms"):
        if name in o:
            o[name] = _number(name, o[name], True, 1 if name == "truncate" else 0)
    for name in ("lr", "eps"):
        if name in o:
            o[name] = _number(name, o[name], False, 0.0, low_open=True)
    for name in ("tol", "damping"):
        if name in o:
            o[name] = _number(name, o[name], False, 0.0)
    if o.get("neumann_alpha") is not None:
        o["neumann_alpha"] = _number("neumann_alpha", o["neumann_alpha"], False, 0.0, low_open=True)
    if "momentum" in o:
        o["momentum"] = _number("momentum", o["momentum"], False, 0.0)
        if o["momentum"] >= 1.0:
            raise ConfigError(f"momentum: must be in [0, 1), got {o['momentum']!r}")
    if "betas" in o:
        betas = o["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ConfigError(f"betas: expected two numbers in [0, 1), got {betas!r}")
        o["betas"] = tuple(_number("betas", b, False, 0.0) for b in betas)
        if max(o["betas"]) >= 1.0:
            raise ConfigError(f"betas: each must be in [0, 1), got {betas!r}")
    if o.get("state") is not None and not isinstance(o["state"], dict):
        raise ConfigError(f"state: expected the dict an earlier call returned as .state, got {type(o['state']).__name__}")
    opts = Options(**o)
    opts.inner_optimizer()  # rejects an unknown optimizer name now, not mid-computation
    return opts


def as_upper(upper: Params) -> Params:
    """Upper tensors as given when they require grad; others as grad-requiring detached aliases."""
    if not isinstance(upper, dict) or not upper:
        raise ConfigError("upper: expected a non-empty dict name -> tensor")
    return {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in upper.items()}


def as_lower(lower: Params) -> Params:
    """Fresh leaves holding the lower starting point (never modifies or differentiates the caller's)."""
    if not isinstance(lower, dict) or not lower:
        raise ConfigError("lower: expected a non-empty dict name -> tensor")
    return {k: v.detach().requires_grad_() for k, v in lower.items()}


def grad(output: torch.Tensor, inputs: Params, create_graph: bool = False, retain_graph: bool | None = None) -> Params:
    """d output / d inputs as a dict (zeros where ``output`` does not depend on an input)."""
    names = list(inputs)
    if not output.requires_grad:  # e.g. an upper loss that does not use the upper tensors directly
        return {k: torch.zeros_like(inputs[k]) for k in names}
    grads = torch.autograd.grad(
        output, [inputs[k] for k in names], create_graph=create_graph, retain_graph=retain_graph,
        allow_unused=True, materialize_grads=True,
    )
    return dict(zip(names, grads))


def initial_state(opt: InnerOptimizer, opts: Options, w: Params) -> State:
    """Inner optimiser state for ``w``: fresh from ``opt.init`` or the carried ``opts.state``,
    validated (keys and shapes) against ``w``."""
    return opt.init(w) if opts.state is None else check_state(opt, opts.state, w)


def direct_and_lower_grads(upper_loss: LossFn, upper: Params, w: Params) -> tuple[Params, Params]:
    """One backward of ``G(u, w)``: ``(d_u G, d_w G)``, each a dict shaped like ``upper`` / ``w``
    (``d_w G`` is the ``v`` of the implicit and finite-difference methods)."""
    both = {**{("u", k): v for k, v in upper.items()}, **{("w", k): v for k, v in w.items()}}
    g = grad(upper_loss(upper, w), both)
    return {k: g[("u", k)] for k in upper}, {k: g[("w", k)] for k in w}


def inner_loop(
    upper: Params, lower: Params, lower_loss: LossFn, opts: Options, tracked: int
) -> tuple[Params, State, dict[str, Any]]:
    """Run ``opts.steps`` inner steps from ``lower``; the last ``tracked`` of them keep their graph
    (so ``w_K`` is differentiable in ``upper``), the earlier ones run detached from ``upper``.
    Returns ``(w_K, optimiser state, {"lower_loss": loss at the last step's start})``."""
    opt = opts.inner_optimizer()
    w = as_lower(lower)
    state = initial_state(opt, opts, w)
    frozen = {k: v.detach() for k, v in upper.items()}
    last = torch.full((), float("nan"))
    for step in range(opts.steps):
        if step < opts.steps - tracked:
            # Detached step: the upper network runs without graph, the update without autograd.
            loss = lower_loss(frozen, w)
            g = grad(loss, w)
            with torch.no_grad():
                w, state = opt.update(g, state, w)
            w = {k: v.requires_grad_() for k, v in w.items()}
        else:
            loss = lower_loss(upper, w)
            g = grad(loss, w, create_graph=True)
            w, state = opt.update(g, state, w)
        last = loss.detach()
    return w, state, {"lower_loss": float(last)}


def finish(grads: Params, lower: Params, state: State, info: dict[str, Any]) -> HypergradientResult:
    """Package a result (detached) and raise NonFiniteHypergradient if any gradient is NaN/Inf."""
    grads = {k: v.detach() for k, v in grads.items()}
    result = HypergradientResult(grads, {k: v.detach() for k, v in lower.items()}, detach_state(state), info)
    finite = torch.stack([torch.isfinite(v).all() for v in grads.values()])
    if not bool(finite.all()):
        names = [k for k, ok in zip(grads, finite.tolist()) if not ok]
        raise NonFiniteHypergradient(names, result)
    return result
