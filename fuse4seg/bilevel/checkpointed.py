"""``checkpointed``: the exact unrolled hypergradient with far less memory than ``unrolled``'s O(K).

The K inner steps are cut into S segments (``checkpoint_segments``; by default planned, below).
The forward pass runs segments 1..S-1 without graph, keeping only each segment's starting point
(lower parameters and inner optimiser state: its *boundary*); the last segment runs with graph.
One backward of ``G(u, w_K)`` through the last segment gives the direct term, the last segment's
share of ``d/du`` and the adjoint of its boundary. Then, in reverse over the segments, segment s
is recomputed from its boundary with graph and the incoming adjoint is back-propagated through
it: that adds segment s's share of ``d/du`` and gives the adjoint at its start (Griewank's
checkpointing for reverse mode, here on whole inner steps). The result equals ``unrolled`` up to
the order of floating-point sums (1e-8 in float64 is tested).

Costs with K inner steps, S segments, L = ceil(K / S) the longest segment, ``a`` the memory one
tracked step keeps for the backward pass and ``b`` one boundary: ``unrolled``'s passes plus
K - L_S plain forward + backward passes (the recomputed segments' first, graph-free run), which
hardly depends on S; peak memory about L a + S b. So the default S is not sqrt(K) but the S that
minimises L a + S b, with ``a`` measured on the first inner step (the bytes autograd saves, each
storage once) and ``b`` the boundary's bytes: for image networks a is tens of times b and the plan
keeps one step's graph at a time (S = K) up to K in the tens. S = 1 is ``unrolled``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fuse4seg.bilevel.core import (
    HypergradientResult,
    LossFn,
    Options,
    Params,
    as_lower,
    finish,
    grad,
    initial_state,
)
from fuse4seg.bilevel.optimizers import InnerOptimizer, State


def segment_count(opts: Options) -> int | None:
    """S: ``checkpoint_segments``, at most K (0 when K = 0, 1 when K = 1); None when it is to be planned."""
    k = opts.steps
    if k <= 1:
        return k
    return None if opts.checkpoint_segments is None else min(int(opts.checkpoint_segments), k)


def plan_segments(steps: int, step_bytes: float, boundary_bytes: float) -> int:
    """S in 1..K minimising the peak-memory estimate ceil(K / S) * step_bytes + S * boundary_bytes (the larger S
    on a tie: no slower, since the recomputed steps hardly depend on S)."""
    return min(range(1, steps + 1), key=lambda s: (math.ceil(steps / s) * step_bytes + s * boundary_bytes, -s))


def _nbytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the tensors' elements."""
    return sum(t.numel() * t.element_size() for t in tensors)


def _measured_step(opt: InnerOptimizer, upper: Params, w: Params, state: State,
                   lower_loss: LossFn) -> tuple[Params, State, int]:
    """One inner step with graph, counting the bytes autograd saves for it (each storage once): what one tracked
    step of a segment keeps; returns the step's result as fresh leaves and that count."""
    seen: set[int] = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        """Count a saved tensor's storage the first time it is seen; keep the tensor as it is."""
        nonlocal total
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        w1, s1, _ = _tracked_run(opt, upper, w, state, lower_loss, 1)
    w1, s1 = _leaves(w1, s1)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # every process must plan the same segments: their collectives run once per inner step
        agreed = torch.tensor([float(total)], device=next(iter(w1.values())).device)
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
        total = int(agreed.item())
    return w1, s1, total


def segment_lengths(steps: int, segments: int) -> list[int]:
    """Steps per segment, as equal as possible (the longer ones first), summing to ``steps``."""
    if segments == 0:
        return []
    q, r = divmod(steps, segments)
    return [q + 1] * r + [q] * (segments - r)


def _state_tensors(state: State) -> dict[tuple[str, str], torch.Tensor]:
    """The tensors of an optimiser state, keyed (slot, name) (``step`` and other scalars left out)."""
    return {(slot, k): v for slot, value in state.items() if isinstance(value, dict) for k, v in value.items()}


def _with_tensors(state: State, tensors: dict[tuple[str, str], torch.Tensor]) -> State:
    """``state`` with its tensors replaced by ``tensors`` (same keys)."""
    out: State = {}
    for slot, value in state.items():
        out[slot] = {k: tensors[(slot, k)] for k in value} if isinstance(value, dict) else value
    return out


def _detached_run(opt: InnerOptimizer, upper: Params, w: Params, state: State, lower_loss: LossFn,
                  steps: int) -> tuple[Params, State]:
    """``steps`` inner steps without graph into ``upper`` (as ``inner_loop``'s detached steps)."""
    frozen = {k: v.detach() for k, v in upper.items()}
    for _ in range(steps):
        g = grad(lower_loss(frozen, w), w)
        with torch.no_grad():
            w, state = opt.update(g, state, w)
        w = {k: v.requires_grad_() for k, v in w.items()}
    return w, state


def _tracked_run(opt: InnerOptimizer, upper: Params, w: Params, state: State, lower_loss: LossFn,
                 steps: int) -> tuple[Params, State, torch.Tensor]:
    """``steps`` differentiable inner steps (graph kept); returns the loss at the last step's start too."""
    last = torch.full((), float("nan"))
    for _ in range(steps):
        loss = lower_loss(upper, w)
        g = grad(loss, w, create_graph=True)
        w, state = opt.update(g, state, w)
        last = loss.detach()
    return w, state, last


def _leaves(w: Params, state: State) -> tuple[Params, State]:
    """A boundary as fresh grad-requiring leaves (lower parameters and state tensors)."""
    w = {k: v.detach().requires_grad_() for k, v in w.items()}
    tensors = {key: v.detach().requires_grad_() for key, v in _state_tensors(state).items()}
    return w, _with_tensors(state, tensors)


def _backprop(outputs: list[torch.Tensor], adjoints: list[torch.Tensor | None], upper: Params, w: Params,
              state: State, need_start: bool) -> tuple[Params, list[torch.Tensor] | None]:
    """Vector-Jacobian product of ``outputs`` with ``adjoints`` into ``upper`` and, when ``need_start``,
    into the boundary leaves ``w`` and ``state`` (returned as one list in the order of ``boundary_list``)."""
    pairs = [(o, a) for o, a in zip(outputs, adjoints) if a is not None and o.requires_grad]
    ukeys = list(upper)
    starts = boundary_list(w, state) if need_start else []
    inputs = [upper[k] for k in ukeys] + starts
    if not pairs:
        zeros = [torch.zeros_like(t) for t in inputs]
        return dict(zip(ukeys, zeros[:len(ukeys)])), (zeros[len(ukeys):] if need_start else None)
    out = torch.autograd.grad([o for o, _ in pairs], inputs, [a for _, a in pairs], allow_unused=True,
                              materialize_grads=True)
    return dict(zip(ukeys, out[:len(ukeys)])), (list(out[len(ukeys):]) if need_start else None)


def boundary_list(w: Params, state: State) -> list[torch.Tensor]:
    """A boundary's tensors in a fixed order: the lower parameters, then the state tensors."""
    return list(w.values()) + list(_state_tensors(state).values())


def checkpointed(
    upper: Params, lower: Params, lower_loss: LossFn, upper_loss: LossFn, opts: Options
) -> HypergradientResult:
    """Exact gradient of ``G(u, w_K(u))`` through all K inner steps (as ``unrolled``), keeping only the
    S segment boundaries in the forward pass and recomputing each segment in the backward pass."""
    opt = opts.inner_optimizer()
    w = as_lower(lower)
    state = initial_state(opt, opts, w)
    segments = segment_count(opts)
    info: dict[str, Any] = {}
    start = (w, state)
    done = 0  # steps of the first segment already taken
    if segments is None:  # plan S from one measured step (it is also the first segment's first step)
        w, state, step_bytes = _measured_step(opt, upper, w, state, lower_loss)
        boundary_bytes = _nbytes(boundary_list(w, state))
        segments = plan_segments(opts.steps, step_bytes, boundary_bytes)
        info.update(step_bytes=step_bytes, boundary_bytes=boundary_bytes)
        done = 1
        if segments == 1:  # the one segment is tracked from the start
            (w, state), done = start, 0
    lengths = segment_lengths(opts.steps, segments)
    boundaries: list[tuple[Params, State]] = []
    for length in lengths[:-1]:
        boundaries.append(start if not boundaries else (w, state))
        w, state = _detached_run(opt, upper, w, state, lower_loss, length - done)
        done = 0
    del start
    # The last segment runs with graph straight away (S = 1: exactly unrolled).
    w0, s0 = _leaves(w, state)
    w_k, state_k, last = _tracked_run(opt, upper, w0, s0, lower_loss, lengths[-1] if lengths else 0)
    need = bool(boundaries)
    ukeys = list(upper)
    ends = list(w_k.values())
    starts = boundary_list(w0, s0) if need else []
    g = grad(upper_loss(upper, w_k), {**{("u", k): upper[k] for k in ukeys},
                                       **{("b", i): t for i, t in enumerate(starts)}})
    total = {k: g[("u", k)] for k in ukeys}
    adjoint = [g[("b", i)] for i in range(len(starts))]
    del ends, w0, s0
    for index in range(len(boundaries) - 1, -1, -1):
        w_start, s_start = _leaves(*boundaries[index])
        w_end, s_end, _ = _tracked_run(opt, upper, w_start, s_start, lower_loss, lengths[index])
        part, adjoint = _backprop(boundary_list(w_end, s_end), adjoint, upper, w_start, s_start, index > 0)
        total = {k: total[k] + part[k] for k in ukeys}
        boundaries[index] = ({}, {})  # free the boundary once used
    info.update(lower_loss=float(last), segments=len(lengths), segment_steps=max(lengths) if lengths else 0)
    return finish(total, w_k, state_k, info)
