"""Public surface of fuse4seg.bilevel: option checking, non-finite reporting, dtype handling,
the module adapter's helpers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fuse4seg.bilevel import (
    METHODS,
    NonFiniteHypergradient,
    assign_grads,
    hypergradient,
    load_params,
    module_hypergradient,
)
from fuse4seg.errors import ConfigError


def _quadratic(dtype: torch.dtype = torch.float64) -> tuple:
    """F = 0.5 ||w - u||^2, G = 0.5 ||w||^2 + 0.5 ||u||^2: after K GD steps of size a from 0,
    w_K = (1 - (1 - a)^K) u, so dG/du = ((1 - (1 - a)^K)^2 + 1) u exactly."""
    u = {"u": torch.tensor([1.0, -2.0, 0.5], dtype=dtype, requires_grad=True)}
    w = {"w": torch.zeros(3, dtype=dtype)}

    def lower_loss(up: dict, lo: dict) -> torch.Tensor:
        """Distance of w to u."""
        return 0.5 * ((lo["w"] - up["u"]) ** 2).sum()

    def upper_loss(up: dict, lo: dict) -> torch.Tensor:
        """Norms of w and u (u enters directly too)."""
        return 0.5 * (lo["w"] ** 2).sum() + 0.5 * (up["u"] ** 2).sum()

    return u, w, lower_loss, upper_loss


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("first-order",)])
def test_every_method_on_a_hand_worked_quadratic(method: str) -> None:
    """Every method gets the hand-worked answer: K = 1 GD step of a = 0.5 (exact for all but
    first-order, since the lower problem is quadratic with identity Hessian)."""
    u, w, lower_loss, upper_loss = _quadratic()
    opts = {"steps": 1, "lr": 0.5, "truncate": 1}
    if method.startswith("implicit"):
        # At the inner solution w* = u: dG/du = 2u; start there so one step stays at the solution.
        w = {"w": u["u"].detach().clone()}
        opts.update(neumann_terms=60, neumann_alpha=0.5, cg_iters=5, neumann_tol=0.0)
        expected = 2.0 * u["u"].detach()
    else:
        expected = ((1 - 0.5) ** 2 + 1) * u["u"].detach()
    g, new = hypergradient(u, w, lower_loss, upper_loss, method, **opts)
    assert torch.allclose(g["u"], expected, rtol=1e-10)
    assert new["w"].shape == (3,) and not new["w"].requires_grad


def test_first_order_returns_direct_term_and_lower_is_untouched() -> None:
    """first-order gives d_u G = u; the caller's lower dict is not modified."""
    u, w, lower_loss, upper_loss = _quadratic()
    g, new = hypergradient(u, w, lower_loss, upper_loss, "first-order", steps=3, lr=0.5)
    assert torch.allclose(g["u"], u["u"].detach())
    assert torch.equal(w["w"], torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(new["w"], (1 - 0.5**3) * u["u"].detach())


def test_float32_in_float32_out() -> None:
    """Gradients and new lower parameters keep the inputs' dtype."""
    u, w, lower_loss, upper_loss = _quadratic(torch.float32)
    g, new = hypergradient(u, w, lower_loss, upper_loss, "implicit-cg", steps=2, lr=0.5)
    assert g["u"].dtype == torch.float32 and new["w"].dtype == torch.float32


@pytest.mark.parametrize("options,name", [
    ({"stepz": 3}, "stepz"), ({"steps": -1}, "steps"), ({"lr": 0.0}, "lr"), ({"optimizer": "rmsprop"}, "optimizer"),
    ({"betas": (0.9,)}, "betas"), ({"momentum": 1.0}, "momentum"), ({"cg_iters": 2.5}, "cg_iters"),
    ({"damping": -1.0}, "damping"), ({"truncate": 5, "steps": 2}, "truncate"), ({"state": [1]}, "state"),
])
def test_bad_options_raise_config_error_naming_them(options: dict, name: str) -> None:
    """Unknown option names and bad values raise ConfigError whose message names the option."""
    u, w, lower_loss, upper_loss = _quadratic()
    with pytest.raises(ConfigError, match=name):
        hypergradient(u, w, lower_loss, upper_loss, "truncated", **options)


def test_unknown_method_and_unsupported_combination() -> None:
    """Unknown method names and finite-difference with Adam are ConfigErrors naming the cause."""
    u, w, lower_loss, upper_loss = _quadratic()
    with pytest.raises(ConfigError, match="method"):
        hypergradient(u, w, lower_loss, upper_loss, "reverse-hyper")
    with pytest.raises(ConfigError, match="optimizer"):
        hypergradient(u, w, lower_loss, upper_loss, "finite-difference", optimizer="adam")


@pytest.mark.parametrize("method", METHODS)
def test_non_finite_hypergradient_is_raised(method: str) -> None:
    """A NaN in the upper loss's gradient raises NonFiniteHypergradient (an ArithmeticError)
    naming the key, with the new lower parameters still available on the exception."""
    u, w, lower_loss, _ = _quadratic()

    def bad_upper(up: dict, lo: dict) -> torch.Tensor:
        """sqrt of a negative entry: NaN value and gradient."""
        return torch.sqrt(up["u"]).sum() + (lo["w"] ** 2).sum()

    with pytest.raises(NonFiniteHypergradient, match="u") as caught:
        hypergradient(u, w, lower_loss, bad_upper, method, steps=1, lr=0.5)
    assert isinstance(caught.value, ArithmeticError)
    assert torch.isfinite(caught.value.result[1]["w"]).all()


def _nets() -> tuple[nn.Module, nn.Module]:
    """A fusion conv and a GroupNorm seg net (float32)."""
    torch.manual_seed(0)
    fuse = nn.Conv2d(2, 1, 3, padding=1)
    seg = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    return fuse, seg


def test_module_helpers_write_grads_and_params() -> None:
    """assign_grads fills .grad (or accumulates); load_params copies the new lower parameters."""
    fuse, seg = _nets()
    x, y = torch.randn(2, 2, 8, 8), torch.randint(0, 2, (2, 8, 8))
    loss = lambda f, s: nn.functional.cross_entropy(s(f(x)), y)
    grads, theta = module_hypergradient(fuse, seg, loss, loss, "unrolled", steps=2, lr=0.1)
    assign_grads(fuse, grads)
    assert torch.equal(fuse.weight.grad, grads["weight"])
    assign_grads(fuse, grads, accumulate=True)
    assert torch.allclose(fuse.weight.grad, 2 * grads["weight"])
    load_params(seg, theta)
    assert torch.equal(seg[0].weight, theta["0.weight"])
    with pytest.raises(ConfigError, match="nope"):
        load_params(seg, {"nope": torch.zeros(1)})


def test_module_adapter_rejects_training_batchnorm() -> None:
    """BatchNorm in training mode in the lower module is refused with a message naming the layer."""
    fuse = nn.Conv2d(2, 1, 3, padding=1)
    seg = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2))
    x = torch.randn(2, 2, 8, 8)
    loss = lambda f, s: s(f(x)).mean()
    with pytest.raises(ConfigError, match="BatchNorm"):
        module_hypergradient(fuse, seg, loss, loss, "unrolled")


def test_module_adapter_rejects_unknown_lower_keys() -> None:
    """A lower starting point with a name the lower module does not have is a ConfigError."""
    fuse, seg = _nets()
    x = torch.randn(2, 2, 8, 8)
    start = {**{k: v.detach() for k, v in seg.named_parameters()}, "extra.weight": torch.zeros(1)}
    with pytest.raises(ConfigError, match="extra.weight"):
        module_hypergradient(fuse, seg, lambda f, s: s(f(x)).mean(), lambda f, s: s(f(x)).mean(), lower=start)
