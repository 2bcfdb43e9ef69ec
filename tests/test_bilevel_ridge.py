"""Ridge regression with the penalty as hyper-parameter: closed forms: A = X^T X / n + lam I,
w* = A^-1 X^T y / n, dL_val/dlam = -grad L_val(w*)^T A^-1 w*; for K-step gradient descent
dw_{k+1}/dlam = (I - a A) dw_k/dlam - a w_k, dw_0/dlam = 0."""

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
    ("implicit-neumann", {"neumann_terms": 400, "neumann_alpha": 0.5, "neumann_tol": 0.0}),
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


def _truncated_recurrence(p: dict, w0: torch.Tensor, a: float, steps: int, tracked: int, beta: float = 0.0) -> float:
    """Hypergradient of K (momentum-)GD steps differentiated through the last ``tracked`` only:
    ``w`` and the buffer run K - T steps with dw = db = 0, then db <- beta db + A dw + w,
    dw <- dw - a db (d/dlam of g = A w - b is A dw + w); plain GD is beta = 0."""
    w, buf = w0.clone(), torch.zeros_like(w0)
    dw, dbuf = torch.zeros_like(w0), torch.zeros_like(w0)
    for k in range(steps):
        if k >= steps - tracked:
            dbuf = beta * dbuf + p["A"] @ dw + w
            dw = dw - a * dbuf
        buf = beta * buf + (p["A"] @ w - p["b"])
        w = w - a * buf
    return float(p["val_grad"](w) @ dw)


@pytest.mark.parametrize("optimizer,beta", [("sgd", 0.0), ("momentum", 0.7)])
@pytest.mark.parametrize("truncate", [2, 4])
def test_truncated_matches_recurrence_through_last_steps(optimizer: str, beta: float, truncate: int) -> None:
    """1 < T < K: truncated equals the exact recurrence started (dw = 0) at step K - T, to 1e-8,
    and differs from both unrolled and the recurrence through the first T steps."""
    p = _problem(seed=7)
    w0 = torch.randn(p["d"], generator=torch.Generator().manual_seed(8), dtype=DT)
    kw = {"steps": 6, "lr": 0.2, "optimizer": optimizer, "momentum": beta}
    exact = _truncated_recurrence(p, w0, 0.2, 6, truncate, beta)
    g, w = hypergradient(_upper(p), {"w": w0}, p["lower_loss"], p["upper_loss"], "truncated", truncate=truncate, **kw)
    full, _ = hypergradient(_upper(p), {"w": w0}, p["lower_loss"], p["upper_loss"], "unrolled", **kw)
    assert float(g["lam"]) == pytest.approx(exact, rel=1e-8)
    assert abs(exact - float(full["lam"])) > 1e-3 * abs(exact)
    assert abs(exact - _truncated_recurrence(p, w0, 0.2, 6, 6, beta)) > 1e-3 * abs(exact)
    assert torch.allclose(w["w"], hypergradient(_upper(p), {"w": w0}, p["lower_loss"], p["upper_loss"],
                                                "first-order", **kw)[1]["w"], rtol=1e-13)


def test_finite_difference_with_momentum_differentiates_the_last_step() -> None:
    """Momentum, K = 4: finite-difference equals the T = 1 recurrence (buffer taken as constant) to
    1e-8 (exact: the inner loss is quadratic), and its new w and buffer equal those of 4 steps."""
    p = _problem(seed=9)
    w0 = torch.randn(p["d"], generator=torch.Generator().manual_seed(10), dtype=DT)
    kw = {"steps": 4, "lr": 0.2, "optimizer": "momentum", "momentum": 0.7}
    res = hypergradient(_upper(p), {"w": w0}, p["lower_loss"], p["upper_loss"], "finite-difference", **kw)
    ref = hypergradient(_upper(p), {"w": w0}, p["lower_loss"], p["upper_loss"], "first-order", **kw)
    assert float(res[0]["lam"]) == pytest.approx(_truncated_recurrence(p, w0, 0.2, 4, 1, 0.7), rel=1e-8)
    assert torch.allclose(res[1]["w"], ref[1]["w"], rtol=1e-13)
    assert torch.allclose(res.state["buf"]["w"], ref.state["buf"]["w"], rtol=1e-13)


def _neumann_dense(H: torch.Tensor, v: torch.Tensor, alpha: float, terms: int) -> torch.Tensor:
    """alpha * sum_{j=0..terms} (I - alpha H)^j v with dense matrices."""
    step = torch.eye(H.shape[0], dtype=DT) - alpha * H
    term, total = v.clone(), v.clone()
    for _ in range(terms):
        term = step @ term
        total = total + term
    return alpha * total


@pytest.mark.parametrize("method", ["implicit-cg", "implicit-neumann"])
@pytest.mark.parametrize("damping", [0.0, 0.4])
def test_implicit_solves_the_damped_system_at_w_k(method: str, damping: float) -> None:
    """Away from w* (K = 2 steps from a random start) the IFT formula is evaluated at w_K:
    d/dlam = -w_K^T q with q = (A + damping I)^-1 grad G(w_K) (CG) or its 6-term Neumann sum with
    step neumann_alpha = 0.3 != lr (dense, float64, to 1e-10)."""
    p = _problem(seed=11)
    w0 = torch.randn(p["d"], generator=torch.Generator().manual_seed(12), dtype=DT)
    w_k = w0.clone()
    for _ in range(2):
        w_k = w_k - 0.1 * (p["A"] @ w_k - p["b"])
    H, v = p["A"] + damping * torch.eye(p["d"], dtype=DT), p["val_grad"](w_k)
    if method == "implicit-cg":
        q = torch.linalg.solve(H, v)
        opts = {"cg_iters": 50, "tol": 1e-14}
    else:
        q = _neumann_dense(H, v, 0.3, 6)
        opts = {"neumann_terms": 6, "neumann_alpha": 0.3, "neumann_tol": 0.0}
    g, w = hypergradient(_upper(p), {"w": w0}, p["lower_loss"], p["upper_loss"], method, steps=2, lr=0.1,
                         damping=damping, **opts)
    assert torch.allclose(w["w"], w_k, rtol=1e-13)
    assert float(g["lam"]) == pytest.approx(float(-w_k @ q), rel=1e-10)


@pytest.mark.parametrize("method", ["unrolled", "truncated"])
def test_reverse_methods_open_their_profiler_ranges_once_each(method: str) -> None:
    """Under torch.profiler, the reverse-mode methods open each range of PHASES exactly once per call (what
    benchmarks/train.py reads), and the result is the K-step recurrence's value still."""
    from torch.profiler import profile

    from fuse4seg.bilevel import PHASES

    p = _problem()
    w0 = torch.zeros(p["d"], dtype=DT)
    with profile() as prof:
        res = hypergradient(_upper(p), {"w": w0}, p["lower_loss"], p["upper_loss"], method, steps=3, lr=0.1,
                            truncate=3)
    counts = {e.key: e.count for e in prof.key_averages()}
    assert {counts.get(name) for name in PHASES.values()} == {1}
    assert float(res.grads["lam"]) == pytest.approx(_recurrence(p, w0, 0.1, 3), rel=1e-10)
