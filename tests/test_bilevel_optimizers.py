"""Differentiable inner optimisers and linear solvers against torch.optim, hand-written autograd
loops and dense linear algebra."""

from __future__ import annotations

import pytest
import torch

from fuse4seg.bilevel import METHODS, adam, conjugate_gradient, hypergradient, momentum, neumann_series, sgd

DT = torch.float64


def _problem() -> tuple:
    """A small non-quadratic bi-level problem: u scales the features of a logistic model."""
    g = torch.Generator().manual_seed(0)
    X, Xv = torch.randn(30, 4, generator=g, dtype=DT), torch.randn(30, 4, generator=g, dtype=DT)
    y, yv = torch.randn(30, generator=g, dtype=DT).sign(), torch.randn(30, generator=g, dtype=DT).sign()

    def lower_loss(u: dict, w: dict) -> torch.Tensor:
        """Logistic loss on features scaled by u, plus 0.05 ||w||^2."""
        return torch.nn.functional.softplus(-y * ((X * u["u"]) @ w["w"])).mean() + 0.05 * (w["w"] ** 2).sum()

    def upper_loss(u: dict, w: dict) -> torch.Tensor:
        """Validation logistic loss on the scaled features."""
        return torch.nn.functional.softplus(-yv * ((Xv * u["u"]) @ w["w"])).mean()

    u0 = torch.linspace(0.5, 1.5, 4, dtype=DT)
    w0 = torch.randn(4, generator=g, dtype=DT)
    return lower_loss, upper_loss, u0, w0


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_trajectory_matches_torch_optim(name: str) -> None:
    """Forward values of our pure optimisers equal torch.optim.SGD / Adam step for step."""
    lower_loss, _, u0, w0 = _problem()
    ours = {"sgd": sgd(0.3), "momentum": momentum(0.3, 0.8), "adam": adam(0.05, (0.8, 0.95))}[name]
    param = torch.nn.Parameter(w0.clone())
    ref = {"sgd": lambda p: torch.optim.SGD(p, lr=0.3), "momentum": lambda p: torch.optim.SGD(p, lr=0.3, momentum=0.8),
           "adam": lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.95))}[name]([param])
    w = {"w": w0.clone()}
    state = ours.init(w)
    for _ in range(6):
        ref.zero_grad()
        lower_loss({"u": u0}, {"w": param}).backward()
        ref.step()
        wg = {"w": w["w"].clone().requires_grad_()}
        g = dict(zip(wg, torch.autograd.grad(lower_loss({"u": u0}, wg), list(wg.values()))))
        w, state = ours.update(g, state, {"w": w["w"]})
        assert torch.allclose(w["w"], param.detach(), rtol=1e-12, atol=1e-14)


def _hand_unrolled(name: str, steps: int, lr: float) -> torch.Tensor:
    """Hypergradient by plain autograd through a hand-written momentum or Adam loop."""
    lower_loss, upper_loss, u0, w0 = _problem()
    u = u0.clone().requires_grad_()
    w = w0.clone().requires_grad_()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    for t in range(1, steps + 1):
        (g,) = torch.autograd.grad(lower_loss({"u": u}, {"w": w}), w, create_graph=True)
        if name == "momentum":
            m = 0.8 * m + g
            w = w - lr * m
        else:
            m = 0.8 * m + 0.2 * g
            v = 0.95 * v + 0.05 * g * g
            w = w - lr * (m / (1 - 0.8**t)) / (torch.sqrt(v / (1 - 0.95**t)) + 1e-8)
    (hg,) = torch.autograd.grad(upper_loss({"u": u}, {"w": w}), u)
    return hg


@pytest.mark.parametrize("name,lr", [("momentum", 0.3), ("adam", 0.05)])
def test_unrolled_momentum_and_adam_match_hand_written_loop(name: str, lr: float) -> None:
    """Unrolled hypergradients through momentum and Adam equal autograd through a plain loop."""
    lower_loss, upper_loss, u0, w0 = _problem()
    expected = _hand_unrolled(name, 5, lr)
    g, _ = hypergradient({"u": u0.clone().requires_grad_()}, {"w": w0}, lower_loss, upper_loss, "unrolled",
                         steps=5, lr=lr, optimizer=name, momentum=0.8, betas=(0.8, 0.95))
    assert torch.allclose(g["u"], expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_warm_start_state_continues_the_run(name: str) -> None:
    """Two calls of 3 steps carrying .state end where one call of 6 steps ends."""
    lower_loss, upper_loss, u0, w0 = _problem()
    u = {"u": u0.clone().requires_grad_()}
    kw = {"lr": 0.05, "optimizer": name}
    first = hypergradient(u, {"w": w0}, lower_loss, upper_loss, "first-order", steps=3, **kw)
    second = hypergradient(u, first[1], lower_loss, upper_loss, "first-order", steps=3, state=first.state, **kw)
    whole = hypergradient(u, {"w": w0}, lower_loss, upper_loss, "first-order", steps=6, **kw)
    cold = hypergradient(u, first[1], lower_loss, upper_loss, "first-order", steps=3, **kw)
    assert torch.allclose(second[1]["w"], whole[1]["w"], rtol=1e-12)
    assert not torch.allclose(cold[1]["w"], whole[1]["w"], rtol=1e-6)


def test_higher_backend_accepts_and_returns_warm_state() -> None:
    """The higher backend continues from a carried momentum state like the unrolled engine."""
    lower_loss, upper_loss, u0, w0 = _problem()
    u = {"u": u0.clone().requires_grad_()}
    start = hypergradient(u, {"w": w0}, lower_loss, upper_loss, "first-order", steps=2, lr=0.2, optimizer="momentum")
    ours = hypergradient(u, start[1], lower_loss, upper_loss, "unrolled", steps=3, lr=0.2, optimizer="momentum",
                         state=start.state)
    ref = hypergradient(u, start[1], lower_loss, upper_loss, "higher", steps=3, lr=0.2, optimizer="momentum",
                        state=start.state)
    assert torch.allclose(ours[0]["u"], ref[0]["u"], rtol=1e-10)
    assert torch.allclose(ours.state["buf"]["w"], ref.state["buf"]["w"], rtol=1e-10)


def _spd(n: int = 12) -> torch.Tensor:
    """A random symmetric positive definite matrix with condition number about 100."""
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(1), dtype=DT))
    return q @ torch.diag(torch.logspace(-2, 0, n, dtype=DT)) @ q.T


def test_conjugate_gradient_solves_damped_system() -> None:
    """CG on dict vectors solves (H + damping I) x = b to tolerance, as torch.linalg.solve."""
    H = _spd()
    b = {"a": torch.arange(8, dtype=DT), "b": torch.ones(2, 2, dtype=DT)}

    def hvp(v: dict) -> dict:
        """H applied to the concatenated vector, split back into the dict."""
        out = H @ torch.cat([v["a"], v["b"].reshape(-1)])
        return {"a": out[:8], "b": out[8:].reshape(2, 2)}

    flat_b = torch.cat([b["a"], b["b"].reshape(-1)])
    for damping in (0.0, 0.5):
        x, info = conjugate_gradient(hvp, b, iters=100, tol=1e-12, damping=damping)
        expected = torch.linalg.solve(H + damping * torch.eye(12, dtype=DT), flat_b)
        assert torch.allclose(torch.cat([x["a"], x["b"].reshape(-1)]), expected, rtol=1e-9)
        assert info["residual"] <= 1e-12 and info["iterations"] <= 100


def test_neumann_series_converges_to_inverse() -> None:
    """The Neumann series with alpha < 2 / lambda_max approaches H^-1 b; few terms do not."""
    H = _spd() + 0.2 * torch.eye(12, dtype=DT)
    b = {"x": torch.linspace(-1, 1, 12, dtype=DT)}
    expected = torch.linalg.solve(H, b["x"])
    x, _ = neumann_series(lambda v: {"x": H @ v["x"]}, b, terms=600, alpha=1.0)
    few, _ = neumann_series(lambda v: {"x": H @ v["x"]}, b, terms=2, alpha=1.0)
    assert torch.allclose(x["x"], expected, rtol=1e-8)
    assert not torch.allclose(few["x"], expected, rtol=1e-2)


def test_conjugate_gradient_flags_indefinite_system() -> None:
    """On H = diag(1, -3) CG meets non-positive curvature and says so instead of stepping uphill;
    damping 4 makes the same system positive definite and CG solves it."""
    H = torch.diag(torch.tensor([1.0, -3.0], dtype=DT))
    b = {"x": torch.tensor([1.0, 1.0], dtype=DT)}
    _, info = conjugate_gradient(lambda v: {"x": H @ v["x"]}, b, iters=10)
    assert info["indefinite"]
    x, info = conjugate_gradient(lambda v: {"x": H @ v["x"]}, b, iters=10, damping=4.0)
    assert not info["indefinite"]
    assert torch.allclose(x["x"], torch.tensor([1.0 / 5.0, 1.0], dtype=DT))


def _hand_momentum(u0: torch.Tensor, w: torch.Tensor, buf: torch.Tensor, steps: int, lr: float,
                   tracked: bool) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor | None]:
    """``steps`` heavy-ball steps (beta 0.8) from (w, buf) by plain autograd; returns
    (w, buf, lower loss at the last step's start, d upper_loss/du through them if ``tracked``)."""
    lower_loss, upper_loss, _, _ = _problem()
    u = u0.clone().requires_grad_(tracked)
    w = w.clone().requires_grad_()
    for _ in range(steps):
        loss = lower_loss({"u": u}, {"w": w})
        (g,) = torch.autograd.grad(loss, w, create_graph=tracked)
        buf = 0.8 * buf + g
        w = w - lr * buf
        if not tracked:
            w, buf = w.detach().requires_grad_(), buf.detach()
    hg = torch.autograd.grad(upper_loss({"u": u}, {"w": w}), u)[0] if tracked else None
    return w.detach(), buf.detach(), float(loss.detach()), hg


@pytest.mark.parametrize("method", METHODS)
def test_every_method_continues_a_warm_momentum_state(method: str) -> None:
    """Given (w_2, buf_2) from 2 hand-written momentum steps, 3 more steps of every method end at
    the hand-written (w_5, buf_5) and report the lower loss at w_4; unrolled and higher also give
    the gradient through those 3 steps with buf_2 held constant."""
    lower_loss, upper_loss, u0, w0 = _problem()
    w2, buf2, _, _ = _hand_momentum(u0, w0, torch.zeros_like(w0), 2, 0.2, tracked=False)
    w5, buf5, loss4, hg = _hand_momentum(u0, w2, buf2, 3, 0.2, tracked=True)
    res = hypergradient({"u": u0.clone().requires_grad_()}, {"w": w2}, lower_loss, upper_loss, method, steps=3,
                        lr=0.2, optimizer="momentum", momentum=0.8, truncate=3, state={"buf": {"w": buf2}})
    assert torch.allclose(res[1]["w"], w5, rtol=1e-12, atol=1e-15)
    assert torch.allclose(res.state["buf"]["w"], buf5, rtol=1e-12, atol=1e-15)
    assert res.info["lower_loss"] == pytest.approx(loss4, rel=1e-12)
    if method in ("unrolled", "higher", "truncated"):
        assert torch.allclose(res[0]["u"], hg, rtol=1e-10, atol=1e-15)


def test_conjugate_gradient_stops_at_tolerance_and_reports_true_residual() -> None:
    """A loose tol stops CG early; the reported relative residual is ||b - (H + d I) x|| / ||b||
    recomputed densely, at most tol, and the tight solve needs more iterations."""
    H, damping = _spd(), 0.01
    b = {"x": torch.linspace(-1, 1, 12, dtype=DT)}
    hvp = lambda v: {"x": H @ v["x"]}
    _, tight = conjugate_gradient(hvp, b, iters=200, tol=1e-12, damping=damping)
    x, loose = conjugate_gradient(hvp, b, iters=200, tol=1e-2, damping=damping)
    true = float((b["x"] - (H + damping * torch.eye(12, dtype=DT)) @ x["x"]).norm() / b["x"].norm())
    assert loose["residual"] == pytest.approx(true, rel=1e-6)
    assert 1e-12 < loose["residual"] <= 1e-2
    assert loose["iterations"] < tight["iterations"]


def test_neumann_series_stops_at_tolerance_and_counts_hvps() -> None:
    """The series stops when its estimated tail is at most tol x the sum, and only then; HVPs are counted.

    By hand, 1-D: H = 0.5, alpha = 1, so the terms are 0.5^j and the tail after term J is exactly 0.5^(J+1) / 0.5;
    it is at most 0.01 x the sum (1 - 0.5^(J+1)) / 0.5 first at J = 6, where x = 1.984375 against 1 / H = 2.
    On an SPD matrix with eigenvalues 0.01 ... 1 and alpha = 0.05 (slowest rate 0.9995) 50 terms are far from the
    solution: the series runs all of them. With eigenvalues 10^-0.3 ... 1 and alpha = 1 it stops early, and its
    true relative error is within 10 % of the estimate."""
    from fuse4seg.bilevel import neumann_series

    x, info = neumann_series(lambda v: {"x": 0.5 * v["x"]}, {"x": torch.ones(1, dtype=DT)}, terms=50, alpha=1.0,
                             tol=0.01)
    assert info["terms"] == info["hvps"] == 6 and float(x["x"]) == 1.984375
    assert info["tail"] == pytest.approx(0.5**7 / (1 - 0.5**7), rel=1e-12)
    a = _spd()
    b = {"x": torch.ones(a.shape[0], dtype=DT)}
    calls = []

    def hvp(v: dict) -> dict:
        calls.append(1)
        return {"x": a @ v["x"]}

    _, slow = neumann_series(hvp, b, terms=50, alpha=0.05, tol=0.01)
    assert slow["terms"] == slow["hvps"] == 50 == len(calls) and slow["tail"] > 1
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(1), dtype=DT))
    h = q @ torch.diag(torch.logspace(-0.3, 0, 12, dtype=DT)) @ q.T
    exact = torch.linalg.solve(h, b["x"])
    for tol in (0.01, 0.001):
        x, fast = neumann_series(lambda v: {"x": h @ v["x"]}, b, terms=50, alpha=1.0, tol=tol)
        error = float((x["x"] - exact).norm() / exact.norm())
        assert fast["hvps"] < 50 and fast["tail"] <= tol and error == pytest.approx(fast["tail"], rel=0.1)
