"""The entry point: ``hypergradient(upper, lower, lower_loss, upper_loss, method=..., **options)``.

A method is a function of (upper, lower, losses, options); solving (the inner optimiser, the
linear solver) is kept apart from differentiating (unrolling, implicit function theorem, finite
differences). Cost per call, with K = ``steps``, T = ``truncate``, J = ``cg_iters`` or
``neumann_terms``, "pass" = one forward + backward of the lower loss, A = its activation memory
(every method adds one forward + backward of the upper loss):

==================  ==============================================  ================
method              passes                                          memory
==================  ==============================================  ================
unrolled, higher    K with create_graph + one backward through all  O(K A)
                    K steps (about 2 passes each)
checkpointed        unrolled + K - K/S plain (S segments)           O(K/S A)
truncated           K - T plain + T as unrolled                     O(T A)
first-order         K plain                                         O(A)
finite-difference   K plain + 2 (gradients at w -+ eps v)           O(A)
implicit-cg/-neum.  K plain + 1 with create_graph + (J + 1)         O(A), about 3A
                    Hessian-vector products (about 2 passes each)
==================  ==============================================  ================

Measured on a UNet at 128 x 128 in ``benchmarks/hypergrad.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fuse4seg.bilevel.approximate import finite_difference, first_order
from fuse4seg.bilevel.checkpointed import checkpointed
from fuse4seg.bilevel.core import HypergradientResult, LossFn, Options, Params, as_upper, parse_options
from fuse4seg.bilevel.implicit import implicit_cg, implicit_neumann
from fuse4seg.bilevel.unrolled import higher_unrolled, truncated, unrolled
from fuse4seg.errors import ConfigError
from fuse4seg.second_order import second_order_passes

_REGISTRY: dict[str, Callable[..., HypergradientResult]] = {
    "unrolled": unrolled,
    "higher": higher_unrolled,
    "checkpointed": checkpointed,
    "truncated": truncated,
    "first-order": first_order,
    "finite-difference": finite_difference,
    "implicit-cg": implicit_cg,
    "implicit-neumann": implicit_neumann,
}

METHODS: tuple[str, ...] = tuple(_REGISTRY)


def check_method(method: str, opts: Options) -> None:
    """ConfigError naming the parameter when ``method`` is unknown or ``opts`` (checked by parse_options) do
    not suit it: ``finite-difference`` differentiates one (momentum-)SGD step."""
    if method not in _REGISTRY:
        raise ConfigError(f"unknown hypergradient method {method!r}; choose one of {', '.join(METHODS)}",
                          option="method")
    if method == "finite-difference":
        if opts.optimizer not in ("sgd", "momentum"):
            raise ConfigError(f"finite-difference differentiates a (momentum-)SGD step; got {opts.optimizer!r}",
                              option="optimizer")
        if opts.steps < 1:
            raise ConfigError("finite-difference needs at least one inner step", option="steps")


def hypergradient(
    upper: Params, lower: Params, lower_loss: LossFn, upper_loss: LossFn, method: str = "unrolled",
    **options: Any,
) -> HypergradientResult:
    """Hypergradient of ``upper_loss(upper, w_K)`` w.r.t. ``upper``, where ``w_K`` is ``lower``
    after ``steps`` inner steps of ``optimizer`` on ``lower_loss(upper, w)``.

    ``upper``/``lower``: dicts name -> tensor (any device/dtype; ``lower`` is not modified);
    ``lower_loss(upper, lower)``, ``upper_loss(upper, lower)``: scalar tensors.
    ``method``: one of METHODS. Options (all optional): ``steps`` (K, default 1), ``lr`` (0.1),
    ``optimizer`` (``sgd`` | ``momentum`` | ``adam``), ``momentum`` (0.9), ``betas``
    ((0.9, 0.999)), ``truncate`` (T, default 1), ``eps`` (finite-difference step before DARTS
    scaling, 0.01), ``cg_iters`` (10), ``tol`` (relative CG residual, 1e-10), ``damping`` (ridge
    added to the Hessian, 0), ``neumann_terms`` (10), ``neumann_alpha`` (default ``lr``),
    ``state`` (inner optimiser state from an earlier result's ``.state``, for warm starts).
    Returns ``(grads, new_lower)`` (a :class:`HypergradientResult` with ``.state`` and ``.info``);
    the direct term ``d upper_loss / d upper`` is included by every method. Raises ConfigError
    for an unknown method/option or bad value, NonFiniteHypergradient on NaN/Inf.
    """
    opts = parse_options(options)
    check_method(method, opts)
    with second_order_passes():  # layers that can skip unrequested second-order work do so (fuse4seg.second_order)
        return _REGISTRY[method](as_upper(upper), lower, lower_loss, upper_loss, opts)
