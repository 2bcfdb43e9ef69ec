"""Differentiable inner optimisers: pure transformations on dicts of tensors (optax style).

An :class:`InnerOptimizer` is a pair of pure functions ``init(params) -> state`` and
``update(grads, state, params) -> (new_params, new_state)``. Nothing is updated in place, so
when ``grads`` carry a graph (``create_graph=True``) the graph flows through every step and the
final parameters can be differentiated with respect to whatever produced the gradients. The
update rules follow ``torch.optim.SGD`` / ``torch.optim.Adam`` exactly (no weight decay,
dampening or Nesterov), which is also what ``higher``'s differentiable optimisers compute.

State is a plain dict so a caller can carry it from one outer step to the next (warm start):
``sgd``: ``{}``; ``momentum``: ``{"buf": {name: tensor}}``; ``adam``:
``{"step": int, "m": {name: tensor}, "v": {name: tensor}}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from fuse4seg.errors import ConfigError

Params = dict[str, torch.Tensor]
State = dict[str, Any]

OPTIMIZERS = ("sgd", "momentum", "adam")


class InnerOptimizer(NamedTuple):
    """A pure inner optimiser: ``init`` builds the state, ``update`` takes one step."""

    name: str
    init: Callable[[Params], State]
    update: Callable[[Params, State, Params], tuple[Params, State]]
    hyper: dict[str, Any]


def _zeros_like(params: Params) -> Params:
    """Zero tensors with the shapes, dtypes and devices of ``params`` (no graph)."""
    return {k: torch.zeros_like(v.detach()) for k, v in params.items()}


def sgd(lr: float) -> InnerOptimizer:
    """Plain gradient descent ``w <- w - lr * g``; ``lr`` in parameter units per gradient unit."""

    def init(params: Params) -> State:
        """SGD has no state."""
        return {}

    def update(grads: Params, state: State, params: Params) -> tuple[Params, State]:
        """One step; differentiable in ``grads`` and ``params``."""
        return {k: torch.add(params[k], grads[k], alpha=-lr) for k in params}, state

    return InnerOptimizer("sgd", init, update, {"lr": lr})


def momentum(lr: float, beta: float = 0.9) -> InnerOptimizer:
    """Heavy-ball SGD as ``torch.optim.SGD(momentum=beta)``: ``b <- beta b + g; w <- w - lr b``."""

    def init(params: Params) -> State:
        """Zero momentum buffers (the first step then gives ``b = g`` as in torch)."""
        return {"buf": _zeros_like(params)}

    def update(grads: Params, state: State, params: Params) -> tuple[Params, State]:
        """One step; differentiable in ``grads``, ``params`` and the buffers."""
        buf = {k: torch.add(grads[k], state["buf"][k], alpha=beta) for k in params}
        return {k: torch.add(params[k], buf[k], alpha=-lr) for k in params}, {"buf": buf}

    return InnerOptimizer("momentum", init, update, {"lr": lr, "momentum": beta})


def _safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    """sqrt(v) for v >= 0 whose derivative at v == 0 is 0 instead of inf (which would give NaN)."""
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))


def adam(lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> InnerOptimizer:
    """Adam as ``torch.optim.Adam`` (bias-corrected moments; ``eps`` added to sqrt(v_hat))."""
    beta1, beta2 = float(betas[0]), float(betas[1])

    def init(params: Params) -> State:
        """Zero first and second moments, step count 0."""
        return {"step": 0, "m": _zeros_like(params), "v": _zeros_like(params)}

    def update(grads: Params, state: State, params: Params) -> tuple[Params, State]:
        """One step; differentiable in ``grads``, ``params`` and the moments."""
        step = int(state["step"]) + 1
        bc1 = 1.0 - beta1**step
        bc2_sqrt = (1.0 - beta2**step) ** 0.5
        m = {k: beta1 * state["m"][k] + (1.0 - beta1) * grads[k] for k in params}
        v = {k: beta2 * state["v"][k] + (1.0 - beta2) * grads[k] * grads[k] for k in params}
        new = {k: params[k] - (lr / bc1) * m[k] / (_safe_sqrt(v[k]) / bc2_sqrt + eps) for k in params}
        return new, {"step": step, "m": m, "v": v}

    return InnerOptimizer("adam", init, update, {"lr": lr, "betas": (beta1, beta2), "eps": eps})


def make_optimizer(
    name: str, lr: float, momentum_: float = 0.9, betas: tuple[float, float] = (0.9, 0.999)
) -> InnerOptimizer:
    """Inner optimiser by name (``sgd`` | ``momentum`` | ``adam``); ConfigError for others."""
    if name == "sgd":
        return sgd(lr)
    if name == "momentum":
        return momentum(lr, momentum_)
    if name == "adam":
        return adam(lr, betas)
    raise ConfigError(f"unknown inner optimiser {name!r}; choose one of {', '.join(OPTIMIZERS)}",
                      option="optimizer")


def detach_state(state: State) -> State:
    """Copy of an optimiser state with every tensor detached (for carrying across outer steps)."""
    out: State = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out[key] = {k: v.detach() for k, v in value.items()}
        elif isinstance(value, torch.Tensor):
            out[key] = value.detach()
        else:
            out[key] = value
    return out


def check_state(opt: InnerOptimizer, state: State, params: Params) -> State:
    """Validate a carried-over state against ``params`` (keys and shapes); ConfigError naming the fault."""
    # init({}) gives the key layout without allocating zeros; shapes are checked against params below.
    expected = opt.init({})
    if set(state) != set(expected):
        raise ConfigError(f"expected keys {sorted(expected)} for optimizer {opt.name!r}, got {sorted(state)}",
                          option="state")
    for key, value in expected.items():
        if isinstance(value, dict):
            given = state[key]
            if not isinstance(given, dict) or set(given) != set(params):
                raise ConfigError(f"state[{key!r}] must hold one tensor per lower parameter", option="state")
            for name, tensor in given.items():
                if tuple(tensor.shape) != tuple(params[name].shape):
                    raise ConfigError(f"state[{key!r}][{name!r}] has shape {tuple(tensor.shape)}, "
                                      f"parameter has {tuple(params[name].shape)}", option="state")
    return detach_state(state)
