"""Hypergradients for bi-level problems on torch.func: unrolled, truncated, higher, first-order,
finite-difference (DARTS) and implicit (CG / Neumann), independent of imaging."""

from fuse4seg.bilevel.core import (
    OPTION_NAMES,
    PHASES,
    HypergradientResult,
    NonFiniteHypergradient,
    Options,
    parse_options,
)
from fuse4seg.bilevel.hypergradient import METHODS, check_method, hypergradient
from fuse4seg.bilevel.modules import (
    assign_grads,
    load_params,
    lower_params,
    module_hypergradient,
    module_inner_steps,
)
from fuse4seg.bilevel.optimizers import OPTIMIZERS, InnerOptimizer, adam, make_optimizer, momentum, sgd
from fuse4seg.bilevel.solvers import conjugate_gradient, neumann_series

__all__ = [
    "METHODS", "OPTIMIZERS", "OPTION_NAMES", "PHASES", "HypergradientResult", "InnerOptimizer", "NonFiniteHypergradient",
    "Options", "adam", "assign_grads", "check_method", "conjugate_gradient", "hypergradient", "load_params",
    "lower_params", "make_optimizer", "module_hypergradient", "module_inner_steps",
    "momentum", "neumann_series", "parse_options", "sgd",
]
