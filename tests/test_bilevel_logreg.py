"""Logistic regression with per-feature weight decay (hyper-parameter optimisation, 25 features):
every method against the exact implicit hypergradient from the dense Hessian; and the DARTS
finite difference converging to one-step unrolling on a problem where it is not exact."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch

from fuse4seg.bilevel import hypergradient

DT = torch.float64
D = 25
Loss = Callable[[dict, dict], torch.Tensor]


def _data(seed: int) -> tuple[torch.Tensor, ...]:
    """Training and validation sets from a sparse linear logit model, labels in {-1, +1}."""
    g = torch.Generator().manual_seed(seed)
    w_true = torch.randn(D, generator=g, dtype=DT) * (torch.rand(D, generator=g, dtype=DT) < 0.4)
    X, Xv = torch.randn(120, D, generator=g, dtype=DT), torch.randn(120, D, generator=g, dtype=DT)
    y = torch.where(torch.rand(120, generator=g, dtype=DT) < torch.sigmoid(X @ w_true), 1.0, -1.0).to(DT)
    yv = torch.where(torch.rand(120, generator=g, dtype=DT) < torch.sigmoid(Xv @ w_true), 1.0, -1.0).to(DT)
    return X, y, Xv, yv


def _losses(seed: int = 0) -> tuple:
    """lower: logistic loss + 0.5 sum exp(u_j) w_j^2; upper: validation loss + 1e-3 ||u||^2."""
    X, y, Xv, yv = _data(seed)

    def lower_loss(u: dict, w: dict) -> torch.Tensor:
        """Training logistic loss with per-feature L2 penalty exp(u_j)."""
        return torch.nn.functional.softplus(-y * (X @ w["w"])).mean() + 0.5 * (torch.exp(u["u"]) * w["w"] ** 2).sum()

    def upper_loss(u: dict, w: dict) -> torch.Tensor:
        """Validation logistic loss plus a small direct hyper-prior on u."""
        return torch.nn.functional.softplus(-yv * (Xv @ w["w"])).mean() + 1e-3 * (u["u"] ** 2).sum()

    u0 = torch.log(torch.full((D,), 0.05, dtype=DT)) + 0.5 * torch.randn(D, generator=torch.Generator().manual_seed(9),
                                                                            dtype=DT)
    return lower_loss, upper_loss, u0


def _exact(lower_loss: Loss, upper_loss: Loss, u0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w*, exact hypergradient) by Newton's method and the dense joint Hessian of F in (w, u)."""
    u = {"u": u0}
    w = torch.zeros(D, dtype=DT)
    for _ in range(30):
        grad = torch.autograd.functional.jacobian(lambda z: lower_loss(u, {"w": z}), w)
        hess = torch.autograd.functional.hessian(lambda z: lower_loss(u, {"w": z}), w)
        w = w - torch.linalg.solve(hess, grad)
    joint = torch.autograd.functional.hessian(lambda z: lower_loss({"u": z[D:]}, {"w": z[:D]}), torch.cat([w, u0]))
    h_ww, h_uw = joint[:D, :D], joint[D:, :D]
    g_w, g_u = torch.autograd.functional.jacobian(lambda a, b: upper_loss({"u": b}, {"w": a}), (w, u0))
    return w, g_u - h_uw @ torch.linalg.solve(h_ww, g_w)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two vectors."""
    return float(a @ b / (a.norm() * b.norm()))


@pytest.fixture(scope="module")
def problem() -> dict:
    """The losses, starting hyper-parameters and the exact answer (computed once)."""
    lower_loss, upper_loss, u0 = _losses()
    w_star, exact = _exact(lower_loss, upper_loss, u0)
    return {"lower_loss": lower_loss, "upper_loss": upper_loss, "u0": u0, "w_star": w_star, "exact": exact}


@pytest.mark.parametrize("method,options", [
    ("unrolled", {"steps": 400, "lr": 1.0}),
    ("implicit-cg", {"steps": 400, "lr": 1.0, "cg_iters": 30}),
    ("implicit-neumann", {"steps": 400, "lr": 1.0, "neumann_terms": 400, "neumann_tol": 0.0}),
])
def test_methods_reach_exact_hypergradient(problem: dict, method: str, options: dict) -> None:
    """With enough inner steps (from w = 0) each method is within cosine 0.99 of the exact answer."""
    u = {"u": problem["u0"].clone().requires_grad_()}
    g, w = hypergradient(u, {"w": torch.zeros(D, dtype=DT)}, problem["lower_loss"], problem["upper_loss"], method,
                         **options)
    assert torch.allclose(w["w"], problem["w_star"], atol=1e-8)
    assert _cos(g["u"], problem["exact"]) >= 0.99


def test_first_order_misses_indirect_term(problem: dict) -> None:
    """first-order returns exactly the direct term 2e-3 u, far from the exact hypergradient."""
    u = {"u": problem["u0"].clone().requires_grad_()}
    g, _ = hypergradient(u, {"w": torch.zeros(D, dtype=DT)}, problem["lower_loss"], problem["upper_loss"],
                         "first-order", steps=400, lr=1.0)
    assert torch.allclose(g["u"], 2e-3 * problem["u0"], rtol=1e-12)
    assert _cos(g["u"], problem["exact"]) < 0.8
    assert float((g["u"] - problem["exact"]).norm()) > 0.5 * float(problem["exact"].norm())


def test_finite_difference_converges_to_one_step_unrolled() -> None:
    """DARTS finite differences approach unrolled (K = 1) as eps shrinks; here d_u F is not
    quadratic in w (features scaled by exp(s)), so the central difference has O(eps^2) error."""
    X, y, Xv, yv = _data(3)

    def lower_loss(u: dict, w: dict) -> torch.Tensor:
        """Training logistic loss on features scaled by exp(s), plus 0.05 ||w||^2."""
        return torch.nn.functional.softplus(-y * ((X * torch.exp(u["s"])) @ w["w"])).mean() + 0.05 * (w["w"] ** 2).sum()

    def upper_loss(u: dict, w: dict) -> torch.Tensor:
        """Validation logistic loss on the scaled features (depends on s directly as well)."""
        return torch.nn.functional.softplus(-yv * ((Xv * torch.exp(u["s"])) @ w["w"])).mean()

    u = {"s": torch.zeros(D, dtype=DT, requires_grad=True)}
    w0 = {"w": torch.randn(D, generator=torch.Generator().manual_seed(4), dtype=DT)}
    ref, _ = hypergradient(u, w0, lower_loss, upper_loss, "unrolled", steps=1, lr=0.5)
    errors = []
    for eps in (3.0, 1.0, 0.3, 0.1, 0.03, 0.01):
        g, _ = hypergradient(u, w0, lower_loss, upper_loss, "finite-difference", steps=1, lr=0.5, eps=eps)
        errors.append(float((g["s"] - ref["s"]).norm() / ref["s"].norm()))
    assert all(b < a for a, b in itertools.pairwise(errors))
    assert errors[0] > 1e-4 and errors[-1] < 1e-6


def test_finite_difference_scales_eps_by_the_validation_gradient_norm() -> None:
    """DARTS step eps' = eps / ||v||, v = d_w G(u, w_1): .info["eps"] equals it (v by plain
    autograd here), the result equals the central difference written out with eps' to 1e-10, and
    with ||v|| ~ 50 the unscaled step eps would give a > 100x larger error against unrolled K = 1."""
    X, y, Xv, yv = _data(5)

    def lower_loss(u: dict, w: dict) -> torch.Tensor:
        """Training logistic loss on features scaled by exp(s), plus 0.05 ||w||^2."""
        return torch.nn.functional.softplus(-y * ((X * torch.exp(u["s"])) @ w["w"])).mean() + 0.05 * (w["w"] ** 2).sum()

    def upper_loss(u: dict, w: dict) -> torch.Tensor:
        """Validation logistic loss on the scaled features, weighted by 100 (so ||v|| >> 1)."""
        return 100.0 * torch.nn.functional.softplus(-yv * ((Xv * torch.exp(u["s"])) @ w["w"])).mean()

    lr, eps = 0.5, 0.05
    s = torch.zeros(D, dtype=DT, requires_grad=True)
    w0 = torch.randn(D, generator=torch.Generator().manual_seed(6), dtype=DT)
    w_leaf = w0.clone().requires_grad_()
    (g0,) = torch.autograd.grad(lower_loss({"s": s.detach()}, {"w": w_leaf}), w_leaf)
    w1 = (w0 - lr * g0).requires_grad_()
    direct, v = torch.autograd.grad(upper_loss({"s": s}, {"w": w1}), (s, w1))
    assert float(v.norm()) > 40.0

    def central(step: float) -> torch.Tensor:
        """d_u G - lr [d_u F(u, w0 + step v) - d_u F(u, w0 - step v)] / (2 step)."""
        (plus,) = torch.autograd.grad(lower_loss({"s": s}, {"w": w0 + step * v}), s)
        (minus,) = torch.autograd.grad(lower_loss({"s": s}, {"w": w0 - step * v}), s)
        return direct - lr * (plus - minus) / (2.0 * step)

    res = hypergradient({"s": s}, {"w": w0}, lower_loss, upper_loss, "finite-difference", steps=1, lr=lr, eps=eps)
    ref, _ = hypergradient({"s": s}, {"w": w0}, lower_loss, upper_loss, "unrolled", steps=1, lr=lr)
    scaled, unscaled = central(eps / float(v.norm())), central(eps)
    assert res.info["eps"] == pytest.approx(eps / float(v.norm()), rel=1e-12)
    assert torch.allclose(res[0]["s"], scaled, rtol=1e-10, atol=0.0)
    err_scaled = float((scaled - ref["s"]).norm() / ref["s"].norm())
    err_unscaled = float((unscaled - ref["s"]).norm() / ref["s"].norm())
    assert err_scaled < 1e-4 and err_unscaled > 100.0 * err_scaled
