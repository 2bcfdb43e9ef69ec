"""3-D networks (the 2-D classes with dims=3): shapes at odd sizes, padding, parameter counts, agreement with
the 2-D nets on one-slice volumes, functional_call, no BatchNorm, and bi-level hypergradients through them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_functional_call_matches
from torch import nn
from torch.func import functional_call

from fuse4seg.bilevel import module_hypergradient
from fuse4seg.errors import ConfigError
from fuse4seg.models import build_model, count_parameters, list_models, model_dims, model_options

TINY: dict[str, dict] = {
    "fusion-cnn-3d": {"width": 4, "layers": 3},
    "fusion-freq-3d": {"width": 4, "layers": 2},
    "unet-3d": {"width": 4, "depth": 2},
    "feature-fusion-3d": {"width": 4, "depth": 2},
}
FUSION = ("fusion-cnn-3d", "fusion-freq-3d")
SEGMENTERS = ("unet-3d", "feature-fusion-3d")


def tiny(name: str, **extra) -> nn.Module:
    """Tiny variant of 3-D model ``name`` with fixed seed."""
    torch.manual_seed(0)
    return build_model(name, **{**TINY[name], **extra})


def test_registry_has_the_3d_variants_with_the_2d_options() -> None:
    """Every 2-D model has a -3d twin of the same class, with the same options and defaults, and dims 3."""
    assert set(TINY) == set(list_models(dims=3))
    for name in TINY:
        two_d = name.removesuffix("-3d")
        assert model_dims(name) == 3 and model_options(name) == model_options(two_d)
        model = build_model(name)
        assert type(model) is type(build_model(two_d)) and model.dims == 3


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("size", [(16, 16, 16), (13, 20, 9)])
def test_output_shapes(name: str, size: tuple[int, int, int]) -> None:
    """At 16^3 and 13 x 20 x 9 every 3-D model keeps D, H, W; fusion nets give one channel in [0, 1], segmenters
    four finite logit channels."""
    model = tiny(name)
    with torch.no_grad():
        out = model(torch.rand(2, model.in_channels, *size))
    assert out.shape == (2, 1 if name in FUSION else 4, *size)
    assert torch.isfinite(out).all()
    if name in FUSION:
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("name", SEGMENTERS)
def test_odd_sizes_are_zero_padded_and_cropped(name: str) -> None:
    """A 9 x 6 x 7 volume gives the logits of the same volume zero-padded by hand to 12 x 8 x 8 (depth 2:
    multiples of 4), cropped back."""
    model = tiny(name)
    x = torch.rand(1, model.in_channels, 9, 6, 7)
    with torch.no_grad():
        direct = model(x)
        padded = model(F.pad(x, (0, 1, 0, 2, 0, 3)))[..., :9, :6, :7]
    torch.testing.assert_close(direct, padded)


@pytest.mark.parametrize("name", ["fusion-cnn", "fusion-freq"])
def test_one_slice_volume_equals_the_2d_net(name: str) -> None:
    """On a (N, C, 1, H, W) volume a 3-D fusion net equals its 2-D class with each 3x3x3 kernel's middle slice
    (zero padding along D leaves only that slice; the blur along a one-voxel axis is the identity): the
    building blocks are shared, only the layer dimension differs."""
    net3 = build_model(f"{name}-3d", width=4)
    net2 = build_model(name, width=4)
    with torch.no_grad():
        for (k, p2), p3 in zip(net2.named_parameters(), net3.parameters(), strict=True):
            p2.copy_(p3[:, :, 1] if p3.dim() == 5 else p3)
    x = torch.rand(2, 2, 1, 11, 13)
    with torch.no_grad():
        torch.testing.assert_close(net3(x)[:, :, 0], net2(x[:, :, 0]))


def test_parameter_counts_by_hand() -> None:
    """Default 3-D parameter counts: the 2-D formulas with 27-tap kernels and 8-tap 2x2x2 up-convolutions."""
    assert count_parameters(build_model("fusion-cnn-3d")) == 2 * 16 * 27 + 32 + 2 * (16 * 16 * 27 + 32) + 16 * 27 + 1

    def double_conv(cin: int, c: int) -> int:
        """Two bias-free 3x3x3 convs with GroupNorm weight + bias."""
        return 27 * cin * c + 2 * c + 27 * c * c + 2 * c

    c = [16 * 2**i for i in range(5)]
    encoder = double_conv(1, c[0]) + sum(double_conv(c[i - 1], c[i]) for i in range(1, 5))
    decoder = sum(8 * c[i + 1] * c[i] + c[i] + double_conv(2 * c[i], c[i]) for i in range(4)) + c[0] * 4 + 4
    assert count_parameters(build_model("unet-3d")) == encoder + decoder
    merge = sum(2 * ci * ci + ci for ci in c)
    assert count_parameters(build_model("feature-fusion-3d")) == 2 * encoder + merge + decoder


@pytest.mark.parametrize(("name", "shape"), [("unet-3d", (1, 1, 8, 8)), ("unet", (1, 1, 4, 8, 8)),
                                             ("fusion-cnn-3d", (2, 2, 8, 8)), ("unet-3d", (1, 3, 8, 8, 8))])
def test_wrong_input_rank_or_channels_is_a_config_error(name: str, shape: tuple[int, ...]) -> None:
    """A 4-D batch to a 3-D net (Conv3d would read it as one unbatched volume), a 5-D one to a 2-D net, and a
    wrong channel count are ConfigErrors naming the expected layout."""
    with pytest.raises(ConfigError, match="expects input"):
        build_model(name)(torch.rand(*shape))


@pytest.mark.parametrize("name", list(TINY))
def test_functional_call_matches_module(name: str) -> None:
    """With perturbed parameters, functional_call equals the module holding them, in output and gradients."""
    model = tiny(name, norm="instance")
    assert_functional_call_matches(model, torch.rand(2, model.in_channels, 8, 10, 6))


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("norm", ["group", "instance"])
def test_no_batchnorm_every_parameter_gets_a_gradient(name: str, norm: str) -> None:
    """No BatchNorm, a GroupNorm / InstanceNorm3d present, train() == eval(), and a random linear function of the
    output gives every parameter a finite non-zero gradient."""
    model = tiny(name, norm=norm)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm if norm == "group" else nn.InstanceNorm3d) for m in model.modules())
    x = torch.rand(2, model.in_channels, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), model.train()(x))
    out = model(x)
    (out * torch.randn_like(out)).sum().backward()
    for k, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and float(p.grad.abs().max()) > 0, k


def test_fusion_freq_3d_split_is_exact() -> None:
    """fusion-freq-3d's split is exact (low + high = x) and a constant volume is all low band."""
    model = tiny("fusion-freq-3d")
    x = torch.rand(1, 2, 10, 9, 8)
    low, high = model.split(x)
    torch.testing.assert_close(low + high, x)
    const = torch.full((1, 2, 6, 7, 8), 0.3)
    torch.testing.assert_close(model.split(const)[0], const)


def _bilevel_problem(size: int, dtype: torch.dtype, fusion: dict, unet: dict) -> tuple:
    """fusion-cnn-3d feeding unet-3d on random (1, 2, size^3) train/val volumes with random labels; the
    lower loss is the voxel cross-entropy, the upper adds the fused volume's squared distance to the
    sources' maximum (a stand-in fusion loss: the project's fusion losses are 2-D)."""
    torch.manual_seed(0)
    fuse = build_model("fusion-cnn-3d", **fusion).to(dtype)
    seg = build_model("unet-3d", **unet).to(dtype)
    g = torch.Generator().manual_seed(1)
    x_tr, x_val = (torch.rand(1, 2, size, size, size, generator=g, dtype=dtype) for _ in range(2))
    y_tr, y_val = (torch.randint(0, 4, (1, size, size, size), generator=g) for _ in range(2))

    def lower_loss(f: Callable, s: Callable) -> torch.Tensor:
        """Voxel cross-entropy of the segmenter on the fused training volume."""
        return F.cross_entropy(s(f(x_tr)), y_tr)

    def upper_loss(f: Callable, s: Callable) -> torch.Tensor:
        """Stand-in fusion term plus cross-entropy on the validation volume."""
        fused = f(x_val)
        return ((fused - x_val.amax(dim=1, keepdim=True)) ** 2).mean() + F.cross_entropy(s(fused), y_val)

    return fuse, seg, lower_loss, upper_loss


@pytest.mark.parametrize("method", ["unrolled", "implicit-cg"])
def test_hypergradient_through_3d_nets_is_finite(method: str) -> None:
    """module_hypergradient with fusion-cnn-3d (width 4) and unet-3d (width 4, depth 2) on (1, 2, 16, 16, 16)
    volumes gives a finite, non-zero hypergradient for every fusion parameter and finite new lower weights."""
    fuse, seg, lower_loss, upper_loss = _bilevel_problem(16, torch.float32, {"width": 4, "layers": 3},
                                                         {"width": 4, "depth": 2})
    grads, lower = module_hypergradient(fuse, seg, lower_loss, upper_loss, method, steps=2, lr=0.1, cg_iters=3)
    assert set(grads) == {k for k, _ in fuse.named_parameters()}
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    assert all(torch.isfinite(w).all() for w in lower.values())


def test_unrolled_hypergradient_matches_finite_differences_float64() -> None:
    """In float64 on a tiny case (4^3 volumes, fusion width 2, unet width 2 depth 1, K = 2 SGD steps), the
    unrolled hypergradient's directional derivative equals the central difference (eps 1e-5) of
    Phi(u) = upper(u, w_2(u)), with w_2 recomputed by explicit gradient steps: relative error < 1e-7; the
    first-order hypergradient (no indirect term) is off by more than 1e-4."""
    fuse, seg, lower_loss, upper_loss = _bilevel_problem(4, torch.float64, {"width": 2, "layers": 2},
                                                         {"width": 2, "depth": 1})
    steps, lr = 2, 0.1
    grads, _ = module_hypergradient(fuse, seg, lower_loss, upper_loss, "unrolled", steps=steps, lr=lr)
    u0 = {k: p.detach() for k, p in fuse.named_parameters()}
    w0 = {k: p.detach() for k, p in seg.named_parameters()}
    torch.manual_seed(2)
    v = {k: torch.randn_like(p) for k, p in u0.items()}

    def phi(u: dict) -> float:
        """Upper objective after ``steps`` explicit SGD steps on the lower loss from w0."""
        def net(module: nn.Module, params: dict) -> Callable:
            """``module`` evaluated with ``params``."""
            return lambda x: functional_call(module, params, (x,))

        w = dict(w0)
        for _ in range(steps):
            leaves = {k: t.clone().requires_grad_(True) for k, t in w.items()}
            g = torch.autograd.grad(lower_loss(net(fuse, u), net(seg, leaves)), list(leaves.values()))
            w = {k: t - lr * gk for (k, t), gk in zip(w.items(), g)}
        return float(upper_loss(net(fuse, u), net(seg, w)))

    eps = 1e-5
    fd = (phi({k: u0[k] + eps * v[k] for k in u0}) - phi({k: u0[k] - eps * v[k] for k in u0})) / (2 * eps)
    analytic = float(sum((grads[k] * v[k]).sum() for k in u0))
    assert abs(analytic - fd) <= 1e-7 * abs(fd)  # measured 1.2e-8
    # The check sees the indirect term (through w_2): first-order, which drops it, misses by far more.
    direct, _ = module_hypergradient(fuse, seg, lower_loss, upper_loss, "first-order", steps=steps, lr=lr)
    assert abs(float(sum((direct[k] * v[k]).sum() for k in u0)) - fd) > 1e-4 * abs(fd)
