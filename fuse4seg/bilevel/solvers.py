"""Linear solvers for ``(H + damping I) x = b`` on dict-of-tensor vectors, given only ``v -> H v``.

``H`` is never formed: ``hvp`` is a callable returning the Hessian-vector product as a dict with
the same keys and shapes as its argument. Both solvers run without building an autograd graph
through their own iterations (the HVPs themselves may use double backward internally).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Vec = dict[str, torch.Tensor]
HVP = Callable[[Vec], Vec]


def vdot(a: Vec, b: Vec) -> torch.Tensor:
    """Inner product sum_k <a[k], b[k]> as a 0-d tensor (on the tensors' device, their dtype)."""
    return torch.stack([torch.sum(a[k] * b[k]) for k in a]).sum()


def axpy(alpha: torch.Tensor | float, x: Vec, y: Vec) -> Vec:
    """``alpha * x + y`` key by key."""
    return {k: alpha * x[k] + y[k] for k in y}


def _relative(rr: torch.Tensor, b_norm: torch.Tensor) -> float:
    """Relative residual sqrt(rr) / ||b|| as a float (0 when b = 0), safe in any dtype."""
    norm = float(b_norm)
    return float(torch.sqrt(rr)) / norm if norm > 0.0 else 0.0


def damped(hvp: HVP, damping: float) -> HVP:
    """The operator ``v -> H v + damping * v`` (Tikhonov ridge; makes H positive definite)."""
    if damping == 0.0:
        return hvp

    def matvec(v: Vec) -> Vec:
        """Damped Hessian-vector product."""
        hv = hvp(v)
        return {k: hv[k] + damping * v[k] for k in v}

    return matvec


def conjugate_gradient(
    hvp: HVP, b: Vec, iters: int = 10, tol: float = 1e-10, damping: float = 0.0
) -> tuple[Vec, dict[str, float]]:
    """Solve ``(H + damping I) x = b`` by CG (H symmetric positive definite); stop at ``iters``
    iterations or relative residual ``||r|| <= tol ||b||``. Cost: one HVP per iteration.
    Returns ``(x, {"iterations", "hvps", "residual", "indefinite"})``: relative residual of the last
    iterate; ``indefinite`` is True when CG stopped early on non-positive curvature."""
    matvec = damped(hvp, damping)
    with torch.no_grad():
        b = {k: v.detach() for k, v in b.items()}
        b_norm = torch.sqrt(vdot(b, b))
        x = {k: torch.zeros_like(v) for k, v in b.items()}
        r = dict(b)
        p = dict(r)
        rr = vdot(r, r)
    done, indefinite, hvps = 0, False, 0
    threshold = float(tol) * float(b_norm)
    if float(torch.sqrt(rr)) <= threshold:
        return x, {"iterations": 0, "hvps": 0, "residual": _relative(rr, b_norm),
                   "indefinite": False}
    for done in range(1, iters + 1):
        ap = matvec(p)
        hvps = done
        with torch.no_grad():
            ap = {k: v.detach() for k, v in ap.items()}
            curvature = vdot(p, ap)
            if float(curvature) <= 0.0:
                # H + damping I is not positive definite along p: a CG step would move uphill, so
                # keep the last iterate and report it (raise `damping` to make the system PD).
                indefinite = True
                hvps = done
                break
            alpha = rr / curvature
            x = axpy(alpha, p, x)
            r = axpy(-alpha, ap, r)
            rr_new = vdot(r, r)
            if float(torch.sqrt(rr_new)) <= threshold:
                rr = rr_new
                break
            p = axpy(rr_new / rr, p, r)
            rr = rr_new
    residual = _relative(rr, b_norm)
    return x, {"iterations": done, "hvps": hvps, "residual": residual, "indefinite": indefinite}


def neumann_series(
    hvp: HVP, b: Vec, terms: int = 10, alpha: float = 0.01, damping: float = 0.0, tol: float = 0.0
) -> tuple[Vec, dict[str, float]]:
    """Approximate ``(H + damping I)^-1 b`` by ``alpha * sum_{j=0..J} (I - alpha (H + damping I))^j b``
    (converges when ``alpha * lambda_max < 2`` and H + damping I is positive definite; ``alpha`` is
    an inner step size, units 1/curvature), J = ``terms``, or fewer: it stops once the estimated rest of the series
    is at most ``tol`` times the running sum. The estimate is the geometric tail |t_j| r / (1 - r), r = |t_j| /
    |t_(j-1)| the ratio of the last two terms (exact when b is an eigenvector; infinite while the terms do not
    shrink, so a series that has not begun to converge is never cut). ``tol`` 0: always ``terms``. Cost: one HVP
    per term. Returns ``(x, {"terms", "hvps", "tail"})``: terms added, HVPs, the last estimate / the sum's norm
    (inf when it was not estimated)."""
    matvec = damped(hvp, damping)
    with torch.no_grad():
        v = {k: t.detach() for k, t in b.items()}
        total = dict(v)
        previous = float(torch.sqrt(vdot(v, v)))
    done, tail = 0, math.inf
    for done in range(1, terms + 1):
        hv = matvec(v)
        with torch.no_grad():
            v = {k: v[k] - alpha * hv[k].detach() for k in v}
            total = {k: total[k] + v[k] for k in v}
            if tol > 0.0:
                norm, total_norm = float(torch.sqrt(vdot(v, v))), float(torch.sqrt(vdot(total, total)))
                rate = norm / previous if previous > 0.0 else 0.0
                rest = norm * rate / (1.0 - rate) if rate < 1.0 else math.inf
                tail = rest / total_norm if total_norm > 0.0 else (0.0 if rest == 0.0 else math.inf)
                previous = norm
                if tail <= tol:
                    break
    with torch.no_grad():
        x = {k: alpha * t for k, t in total.items()}
    return x, {"terms": done, "hvps": done, "tail": tail}
