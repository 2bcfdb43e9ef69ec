"""Adapter from ``nn.Module`` pairs to :func:`hypergradient`, built on ``torch.func.functional_call``.

The losses receive the two modules as plain callables evaluated with the engine's current
parameters: ``lower_loss(upper_fn, lower_fn)`` and ``upper_loss(upper_fn, lower_fn)``, e.g. for
image-level fusion (F fusion net, S segmentation net)::

    lower_loss = lambda F, S: seg_loss(S(F(x_tr)), y_tr)
    upper_loss = lambda F, S: fusion_loss(F(x_val), x_val)[0] + lam * seg_loss(S(F(x_val)), y_val)
    grads, theta_K = module_hypergradient(fusion, seg, lower_loss, upper_loss, "unrolled", steps=5)
    assign_grads(fusion, grads); load_params(seg, theta_K)

Buffers and parameters with ``requires_grad=False`` are passed through unchanged. The lower
network must not use BatchNorm in training mode: its running statistics are buffers updated in
place at every functional call, which unrolled and implicit methods replay (higher issue #103);
use GroupNorm or InstanceNorm (ConfigError otherwise).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from fuse4seg.bilevel.core import HypergradientResult, LossFn, Params, inner_loop, parse_options
from fuse4seg.bilevel.hypergradient import hypergradient
from fuse4seg.bilevel.optimizers import State, detach_state
from fuse4seg.errors import ConfigError

ModuleFn = Callable[..., Any]
ModuleLoss = Callable[[ModuleFn, ModuleFn], torch.Tensor]
#: Applied to the lower parameters wherever a loss reads them: identity in value; e.g. averages their
#: gradients over data-parallel processes (fuse4seg.distributed.World.sync) so every inner gradient,
#: Hessian-vector product and inner update is the global one.
Sync = Callable[[Params], Params]


def trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    """The module's parameters that require grad, by qualified name (the tensors themselves)."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def constants(module: nn.Module) -> Params:
    """Buffers and frozen parameters by qualified name (passed to functional_call unchanged)."""
    frozen = {name: p for name, p in module.named_parameters() if not p.requires_grad}
    return {**frozen, **dict(module.named_buffers())}


def lower_params(module: nn.Module) -> Params:
    """Detached copies of a module's trainable parameters: a starting point for the inner steps."""
    return {name: p.detach().clone() for name, p in trainable(module).items()}


def _functional(module: nn.Module, params: Params, consts: Params) -> ModuleFn:
    """``module`` as a callable evaluated with ``params`` (plus its constants) via functional_call."""
    merged = {**consts, **params}

    def call(*args: Any, **kwargs: Any) -> Any:
        """Forward pass of the module with the bound parameters."""
        return functional_call(module, merged, args, kwargs)

    return call


def _reject_batchnorm(module: nn.Module, role: str) -> None:
    """ConfigError if ``module`` has a BatchNorm layer that would update running stats."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.training and sub.track_running_stats:
            raise ConfigError(
                f"BatchNorm layer {name or '<root>'!r} in training mode cannot be unrolled "
                "(running statistics are updated in place); use GroupNorm or InstanceNorm", option=role
            )


def module_hypergradient(
    upper_module: nn.Module, lower_module: nn.Module, lower_loss: ModuleLoss, upper_loss: ModuleLoss,
    method: str = "unrolled", lower: Params | None = None, sync: Sync | None = None, **options: Any,
) -> HypergradientResult:
    """Hypergradient for ``upper_module``'s trainable parameters (grads keyed by parameter name)
    and ``lower_module``'s parameters after the inner steps (keyed by name), starting from
    ``lower`` (default: the module's current parameters). ``sync`` (see :data:`Sync`) wraps the lower
    parameters inside both losses (None: as they are). Options as for :func:`hypergradient`."""
    _reject_batchnorm(lower_module, "lower_module")
    upper = trainable(upper_module)
    if not upper:
        raise ConfigError("has no parameters that require grad", option="upper_module")
    start = lower_params(lower_module) if lower is None else lower
    missing = sorted(set(trainable(lower_module)) - set(start))
    if missing:
        raise ConfigError(f"missing parameter(s) {', '.join(missing)} of lower_module", option="lower")
    unknown = sorted(set(start) - set(trainable(lower_module)))
    if unknown:
        raise ConfigError(f"{', '.join(unknown)} is not a trainable parameter of lower_module", option="lower")
    inner, outer = (_on_params(upper_module, lower_module, loss, sync) for loss in (lower_loss, upper_loss))
    return hypergradient(upper, start, inner, outer, method, **options)


def _on_params(upper_module: nn.Module, lower_module: nn.Module, loss: ModuleLoss, sync: Sync | None) -> LossFn:
    """``loss`` (a function of the two modules as callables) as a function of their parameter dicts (u, w), the
    modules evaluated by functional_call and the lower parameters wrapped by ``sync``."""
    uc, lc = constants(upper_module), constants(lower_module)
    view = sync or (lambda w: w)

    def on_params(u: Params, w: Params) -> torch.Tensor:
        """The loss on functional views of both modules."""
        return loss(_functional(upper_module, u, uc), _functional(lower_module, view(w), lc))

    return on_params


def module_inner_steps(
    upper_module: nn.Module, lower_module: nn.Module, lower_loss: ModuleLoss, sync: Sync | None = None,
    **options: Any,
) -> tuple[Params, State, dict[str, Any]]:
    """The K inner steps alone, without a hypergradient: (``lower_module``'s parameters after them, detached, by
    name; the inner optimiser's state; ``{"lower_loss": loss at the last step's start}``). The upper module runs
    without graph. Options as for :func:`hypergradient` (the inner loop's are read, ``state`` warm-starts it)."""
    _reject_batchnorm(lower_module, "lower_module")
    opts = parse_options(options)
    upper = {k: p.detach() for k, p in trainable(upper_module).items()}
    w, state, info = inner_loop(upper, lower_params(lower_module), _on_params(upper_module, lower_module, lower_loss,
                                                                              sync), opts, tracked=0)
    return {k: v.detach() for k, v in w.items()}, detach_state(state), info


def assign_grads(module: nn.Module, grads: Params, accumulate: bool = False) -> None:
    """Write ``grads`` (by parameter name) into ``.grad`` (added to existing when ``accumulate``)."""
    params = dict(module.named_parameters())
    unknown = sorted(set(grads) - set(params))
    if unknown:
        raise ConfigError(f"no parameter named {', '.join(unknown)} in the module", option="grads")
    for name, g in grads.items():
        p = params[name]
        g = g.detach().to(dtype=p.dtype, device=p.device)
        if accumulate and p.grad is not None:
            p.grad.add_(g)
        else:
            p.grad = g.clone()


def load_params(module: nn.Module, params: Params) -> None:
    """Copy ``params`` (by name, same shapes) into the module's parameters in place, without grad."""
    own = dict(module.named_parameters())
    for name, value in params.items():
        if name not in own:
            raise ConfigError(f"no parameter named {name!r} in the module", option="params")
        if own[name].shape != value.shape:
            raise ConfigError(f"{name!r} has shape {tuple(value.shape)}, module has {tuple(own[name].shape)}",
                              option="params")
    with torch.no_grad():
        for name, value in params.items():
            own[name].copy_(value)
