"""Ridge regression with the penalty as hyper-parameter: closed forms (DESIGN.md section 2)."""

from __future__ import annotations

import pytest
import torch

from fuse4seg.bilevel import hypergradient

DT = torch.float64


def _problem(seed: int = 0, n: int = 40, m: int = 30, d: int = 6) -> dict:
    """Training/validation data, losses and closed-form pieces for lam = 0.3."""
    g = torch.Generator().manual_seed(seed)
    X, Xv = torch.randn(n, d, generator=g, dtype=DT), torch.randn(m, d, generator=g, dtype=DT)
    w_true = torch.randn(d, generator=g, dtype=DT)
    y = X @ w_true + 0.3 * torch.randn(n, generator=g, dtype=DT)
    yv = Xv @ w_true + 0.3 * torch.randn(m, generator=g, dtype=DT)
    lam = 0.3
    A = X.T @ X / n + lam * torch.eye(d, dtype=DT)
    b = X.T @ y / n

    def lower_loss(u: dict, w: dict) -> torch.Tensor:
        """0.5 mean squared training error + 0.5 lam ||w||^2."""
        return 0.5 * ((X @ w["w"] - y) ** 2).mean() + 0.5 * u["lam"] * (w["w"] ** 2).sum()

    def upper_loss(u: dict, w: dict) -> torch.Tensor:
        """0.5 mean squared validation error (no direct dependence on lam)."""
        return 0.5 * ((Xv @ w["w"] - yv) ** 2).mean()

    def val_grad(w: torch.Tensor) -> torch.Tensor:
        """d upper_loss / dw at w."""
        return Xv.T @ (Xv @ w - yv) / m

    return {"A": A, "b": b, "lam": lam, "d": d, "lower_loss": lower_loss, "upper_loss": upper_loss,
            "val_grad": val_grad}


def _upper(p: dict) -> dict:
    """The hyper-parameter as a grad-requiring float64 tensor."""
    return {"lam": torch.tensor(p["lam"], dtype=DT, requires_grad=True)}


def _closed_form(p: dict) -> tuple[torch.Tensor, float]:
    """w* and dL_val/dlam = -grad L_val(w*)^T A^-1 w*."""
    w_star = torch.linalg.solve(p["A"], p["b"])
    return w_star, float(-p["val_grad"](w_star) @ torch.linalg.solve(p["A"], w_star))


def _recurrence(p: dict, w0: torch.Tensor, a: float, steps: int) -> float:
    """Exact K-step GD hypergradient: dw_{k+1} = (I - aA) dw_k - a w_k, dw_0 = 0."""
    w, dw = w0.clone(), torch.zeros_like(w0)
    eye = torch.eye(p["d"], dtype=DT)
    for _ in range(steps):
        dw = (eye - a * p["A"]) @ dw - a * w
        w = w - a * (p["A"] @ w - p["b"])
    return float(p["val_grad"](w) @ dw)


@pytest.mark.parametrize("method,options", [
    ("implicit-cg", {"cg_iters": 50, "tol": 1e-14}),
    ("implicit-neumann", {"neumann_terms": 400, "neumann_alpha": 0.5}),
])
def test_implicit_matches_closed_form_at_solution(method: str, options: dict) -> None:
    """Starting at w* (inner problem solved), IFT methods give the closed form to 1e-6 relative."""
    p = _problem()
    w_star, exact = _closed_form(p)
    g, w = hypergradient(_upper(p), {"w": w_star.clone()}, p["lower_loss"], p["upper_loss"], method,
                         steps=1, lr=0.1, **options)
    assert float(g["lam"]) == pytest.approx(exact, rel=1e-6)
    assert torch.allclose(w["w"], w_star, atol=1e-12)


def test_implicit_cg_after_many_inner_steps() -> None:
    """From w = 0, enough GD steps solve the inner problem; implicit-cg then matches to 1e-6."""
    p = _problem(seed=1)
    _, exact = _closed_form(p)
    g, _ = hypergradient(_upper(p), {"w": torch.zeros(p["d"], dtype=DT)}, p["lower_loss"], p["upper_loss"],
                         "implicit-cg", steps=2000, lr=0.5, cg_iters=50, tol=1e-14)
    assert float(g["lam"]) == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_unrolled_matches_recurrence(steps: int) -> None:
    """Unrolled K-step GD equals the exact derivative recurrence to 1e-8 relative."""
    p = _problem(seed=2)
    w0 = torch.randn(p["d"], generator=torch.Generator().manual_seed(5), dtype=DT)
    exact = _recurrence(p, w0, 0.2, steps)
    g, _ = hypergradient(_upper(p), {"w": w0}, p["lower_loss"], p["upper_loss"], "unrolled", steps=steps, lr=0.2)
    assert float(g["lam"]) == pytest.approx(exact, rel=1e-8)


def test_truncated_with_all_steps_equals_unrolled_and_fewer_differs() -> None:
    """truncate = K reproduces unrolled; truncate = 1 < K is a different (biased) answer."""
    p = _problem(seed=3)
    w0 = {"w": torch.zeros(p["d"], dtype=DT)}
    full, _ = hypergradient(_upper(p), w0, p["lower_loss"], p["upper_loss"], "unrolled", steps=6, lr=0.2)
    same, _ = hypergradient(_upper(p), w0, p["lower_loss"], p["upper_loss"], "truncated", steps=6, lr=0.2,
                            truncate=6)
    short, _ = hypergradient(_upper(p), w0, p["lower_loss"], p["upper_loss"], "truncated", steps=6, lr=0.2,
                             truncate=1)
    assert float(same["lam"]) == pytest.approx(float(full["lam"]), rel=1e-12)
    assert abs(float(short["lam"]) - float(full["lam"])) > 1e-3 * abs(float(full["lam"]))


def test_finite_difference_is_exact_one_step_for_quadratic_inner_loss() -> None:
    """d_u F is quadratic in w here, so the central difference is exact at any eps (K = 1)."""
    p = _problem(seed=4)
    w0 = {"w": torch.randn(p["d"], generator=torch.Generator().manual_seed(6), dtype=DT)}
    exact = _recurrence(p, w0["w"], 0.2, 1)
    for eps in (1.0, 1e-2, 1e-4):
        g, _ = hypergradient(_upper(p), w0, p["lower_loss"], p["upper_loss"], "finite-difference",
                             steps=1, lr=0.2, eps=eps)
        assert float(g["lam"]) == pytest.approx(exact, rel=1e-8)
