"""Shared pieces of the hypergradient methods: options, result type, inner loop, finiteness check.

Notation used by every method: ``u`` = upper parameters, ``w`` = lower parameters,
``F(u, w)`` = ``lower_loss``, ``G(u, w)`` = ``upper_loss``; the K inner steps map ``w_0`` to
``w_K``; the hypergradient is ``dG(u, w_K(u))/du = d_u G + (dw_K/du)^T d_w G``.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
from torch.profiler import record_function

from fuse4seg.bilevel.optimizers import (
    OPTIMIZERS,
    InnerOptimizer,
    State,
    check_state,
    detach_state,
    make_optimizer,
)
from fuse4seg.errors import ConfigError
from fuse4seg.options import Check, above, at_least, in_range, one_of, option

if TYPE_CHECKING:
    from typing import Self

Params = dict[str, torch.Tensor]
#: torch.profiler ranges of the reverse-mode methods' passes (benchmarks/train.py reports their share of a step): the
#: K inner steps (those tracked record their backward's graph), the upper loss's forward, and its backward, which
#: for tracked steps runs through the inner backward passes (the second-order part).
PHASES = {"inner": "bilevel/inner_steps", "upper_forward": "bilevel/upper_forward",
          "upper_backward": "bilevel/upper_backward"}
LossFn = Callable[[Params, Params], torch.Tensor]
#: Most iterations of one hypergradient call's loops (inner steps, CG iterations, Neumann terms): the
#: reference problems converge within 2000; unrolled steps keep every step's graph, so a mistyped
#: count would run out of memory or time rather than converge.
MAX_ITERATIONS: int = 10_000


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


#: Checks of the engine's numbers (None refused): > 0, >= 0, in [0, 1).
_POSITIVE: Check = in_range(0, low_open=True, optional=False)
_NON_NEGATIVE: Check = in_range(0, optional=False)
_FRACTION: Check = in_range(0, 1, high_open=True, optional=False)


def _betas(value: Any) -> str | None:
    """Check: two numbers in [0, 1)."""
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or any(_FRACTION(b) for b in value)):
        return f"expected two numbers in [0, 1), got {value!r}"
    return None


def _parse_betas(value: Any) -> tuple[float, float]:
    """"b1,b2" (command line) or a pair of numbers -> a tuple of two floats; ConfigError otherwise."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        b1, b2 = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"expected two numbers such as 0.9,0.999, got {value!r}") from None
    return b1, b2


def _state(value: Any) -> str | None:
    """Check: None or a state dict from an earlier result."""
    if value is None or isinstance(value, dict):
        return None
    return f"expected the dict an earlier call returned as .state, got {type(value).__name__}"


@dataclass(frozen=True)
class Options:
    """Every option `hypergradient` accepts; names are part of the public API.

    Each field declares, in its ``metadata``: ``help``; ``check`` (value -> problem or None, run by
    :func:`parse_options`); ``methods`` / ``optimizers``: the methods or inner optimisers that read
    it (absent: all); ``flag``: its name on a command line where the field name alone is ambiguous
    there (e.g. ``steps`` is ``--inner-steps``); ``runtime``: a value passed between calls, not a
    setting (``state``).
    """

    steps: int = option(1, f"K inner steps per hypergradient (0 to {MAX_ITERATIONS}).", check=in_range(0, MAX_ITERATIONS, integer=True),
                        flag="--inner-steps")
    lr: float = option(0.1, "Learning rate of the lower level: the inner steps' (in fuse4seg train, the "
                       "segmentation network's, in every mode).",
                       check=_POSITIVE, flag="--lr-lower")
    optimizer: str = option("sgd", f"Inner optimiser: {', '.join(OPTIMIZERS)} (fuse4seg train: adam, or sgd "
                            "with finite-difference).", check=one_of(OPTIMIZERS),
                            flag="--inner-optimizer")
    momentum: float = option(0.9, "Inner momentum in [0, 1).", check=_FRACTION, flag="--inner-momentum",
                             optimizers=("momentum",))
    betas: tuple[float, float] = option((0.9, 0.999), "Inner Adam moment decays, two numbers in [0, 1) (b1,b2).",
                                        check=_betas, parse=_parse_betas, flag="--inner-betas", optimizers=("adam",))
    truncate: int = option(1, "T last inner steps differentiated (T <= K).", check=at_least(1, integer=True), methods=("truncated",))
    eps: float = option(0.01, "Finite-difference eps (before DARTS scaling by 1 / norm(v)).",
                        check=_POSITIVE, flag="--fd-eps", methods=("finite-difference",))
    cg_iters: int = option(10, f"Conjugate-gradient iterations (1 to {MAX_ITERATIONS}).",
                           check=in_range(1, MAX_ITERATIONS, integer=True), methods=("implicit-cg",))
    tol: float = option(1e-10, "Conjugate-gradient relative residual at which it stops early.", check=_NON_NEGATIVE,
                        flag="--cg-tol", methods=("implicit-cg",))
    damping: float = option(0.0, "Ridge added to the inner Hessian.", check=_NON_NEGATIVE,
                            methods=("implicit-cg", "implicit-neumann"))
    neumann_terms: int = option(10, f"Neumann series terms (1 to {MAX_ITERATIONS}).", check=in_range(1, MAX_ITERATIONS, integer=True),
                                methods=("implicit-neumann",))
    neumann_alpha: float | None = option(None, "Neumann step size (default: the inner learning rate).",
                                         check=above(0), methods=("implicit-neumann",))
    checkpoint_segments: int | None = option(None, f"Segments S of the K inner steps whose boundaries checkpointed keeps "
                                             f"(1 to {MAX_ITERATIONS}, at most K used; default: the S of least estimated peak memory, "
                                             "from the measured memory of one inner step and of one boundary).",
                                             check=in_range(1, MAX_ITERATIONS, integer=True), methods=("checkpointed",))
    # Issue 26 asked for a stopping rule "as CG has". The first one (a term at most tol x the sum) stopped series
    # that had not begun to converge: when the terms do not shrink, term / sum still falls as the sum grows. The
    # geometric-tail estimate never cuts such a series (on the training step's problem its estimated rest stays tens
    # of times the sum: benchmarks/results/train_solvers.json), and on a converging one its estimate matched the true
    # error (tests/test_bilevel_optimizers.py).
    neumann_tol: float = option(0.01, "Neumann series stops once the estimated rest of the series (the geometric "
                                "tail of its last two terms) is at most this times the running sum (0: always "
                                "neumann_terms terms).", check=_NON_NEGATIVE, methods=("implicit-neumann",))
    # option() gives a None default as is (no default_factory); RUF009 only sees a call.
    state: State | None = option(None, "Inner optimiser state from an earlier result's .state (warm start).",  # noqa: RUF009
                                 check=_state, runtime=True)

    def inner_optimizer(self) -> InnerOptimizer:
        """The differentiable inner optimiser these options describe."""
        return make_optimizer(self.optimizer, self.lr, self.momentum, self.betas)


OPTION_NAMES = tuple(f.name for f in fields(Options))
_TYPES = typing.get_type_hints(Options)


def parse_options(options: dict[str, Any]) -> Options:
    """Check option names and values (each field's declared ``check``); ConfigError naming the first bad one."""
    for name in options:
        if name not in OPTION_NAMES:
            raise ConfigError(f"unknown hypergradient option; known options: {', '.join(OPTION_NAMES)}",
                              option=name)
    o = dict(options)
    for f in fields(Options):
        if f.name in o:
            # None means "not given" for an option whose type admits it (its default then applies)
            none_ok = o[f.name] is None and type(None) in typing.get_args(_TYPES[f.name])
            problem = None if none_ok else f.metadata["check"](o[f.name])
            if problem:
                raise ConfigError(problem, option=f.name)
            if _TYPES[f.name] in (float, float | None) and o[f.name] is not None:
                o[f.name] = float(o[f.name])
    if "betas" in o:
        o["betas"] = tuple(float(b) for b in o["betas"])
    opts = Options(**o)
    if opts.steps >= 1 and opts.truncate > opts.steps:  # T of the last K steps (with K = 0 there is nothing to cut)
        raise ConfigError(f"must be <= K, the number of inner steps ({opts.steps}), got {opts.truncate}",
                          option="truncate")
    return opts


def as_upper(upper: Params) -> Params:
    """Upper tensors as given when they require grad; others as grad-requiring detached aliases."""
    if not isinstance(upper, dict) or not upper:
        raise ConfigError("expected a non-empty dict name -> tensor", option="upper")
    return {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in upper.items()}


def as_lower(lower: Params) -> Params:
    """Fresh leaves holding the lower starting point (never modifies or differentiates the caller's)."""
    if not isinstance(lower, dict) or not lower:
        raise ConfigError("expected a non-empty dict name -> tensor", option="lower")
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


@record_function(PHASES["inner"])
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


def upper_gradient(upper_loss: LossFn, upper: Params, w: Params) -> Params:
    """d G(u, w) / d u, back through everything ``w`` depends on (the tracked inner steps): the reverse-mode methods'
    last pass, forward and backward each under its profiler range (:data:`PHASES`)."""
    with record_function(PHASES["upper_forward"]):
        value = upper_loss(upper, w)
    with record_function(PHASES["upper_backward"]):
        return grad(value, upper)


def finish(grads: Params, lower: Params, state: State, info: dict[str, Any]) -> HypergradientResult:
    """Package a result (detached) and raise NonFiniteHypergradient if any gradient is NaN/Inf."""
    grads = {k: v.detach() for k, v in grads.items()}
    result = HypergradientResult(grads, {k: v.detach() for k, v in lower.items()}, detach_state(state), info)
    finite = torch.stack([torch.isfinite(v).all() for v in grads.values()])
    if not bool(finite.all()):
        names = [k for k, ok in zip(grads, finite.tolist()) if not ok]
        raise NonFiniteHypergradient(names, result)
    return result
