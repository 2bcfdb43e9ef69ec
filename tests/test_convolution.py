"""The lean convolution layers (fuse4seg.models.convolution) against torch's own layers and finite differences."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode

from fuse4seg.bilevel import module_hypergradient
from fuse4seg.models.blocks import LAYERS
from fuse4seg.models.convolution import LeanConv2d, LeanConv3d
from fuse4seg.second_order import in_second_order_passes, second_order_passes

#: (lean class, torch class, constructor options, input shape): plain, strided + grouped, dilated with a padding
#: mode, and 3-D.
CASES = [
    (LeanConv2d, nn.Conv2d, {"in_channels": 3, "out_channels": 4, "kernel_size": 3, "padding": 1}, (2, 3, 9, 9)),
    (LeanConv2d, nn.Conv2d, {"in_channels": 4, "out_channels": 6, "kernel_size": 3, "stride": 2, "padding": 1,
                             "groups": 2}, (2, 4, 10, 9)),
    (LeanConv2d, nn.Conv2d, {"in_channels": 3, "out_channels": 4, "kernel_size": 3, "padding": 2, "dilation": 2,
                             "padding_mode": "replicate", "bias": False}, (2, 3, 9, 9)),
    (LeanConv3d, nn.Conv3d, {"in_channels": 2, "out_channels": 3, "kernel_size": 3, "padding": 1}, (1, 2, 5, 6, 4)),
]
IDS = ["plain", "strided-grouped", "dilated-replicate", "3d"]


def _pair(lean_cls: type, torch_cls: type, options: dict, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    """A lean layer and a torch layer holding the same weights."""
    reference = torch_cls(**options).to(dtype)
    lean = lean_cls(**options).to(dtype)
    lean.load_state_dict(reference.state_dict())
    return lean, reference


def test_the_networks_are_built_from_the_lean_layers() -> None:
    """Every network's convolutions come from LAYERS, which holds the lean classes."""
    assert LAYERS[2].conv is LeanConv2d and LAYERS[3].conv is LeanConv3d


def test_the_flag_is_set_only_inside_the_block() -> None:
    """second_order_passes() sets the flag for its block alone, and restores it after an exception."""
    assert not in_second_order_passes()
    with pytest.raises(RuntimeError), second_order_passes():
        assert in_second_order_passes()
        raise RuntimeError
    assert not in_second_order_passes()


def test_outside_second_order_passes_the_layer_is_torchs() -> None:
    """Ordinary training records torch's own convolution node."""
    layer = LeanConv2d(2, 3, 3, padding=1)
    out = layer(torch.randn(1, 2, 5, 5))
    assert type(out.grad_fn).__name__ == "ConvolutionBackward0"
    with second_order_passes():
        assert type(layer(torch.randn(1, 2, 5, 5)).grad_fn).__name__ != "ConvolutionBackward0"


@pytest.mark.parametrize(("lean_cls", "torch_cls", "options", "shape"), CASES, ids=IDS)
def test_first_order_is_bit_identical_to_torch(lean_cls: type, torch_cls: type, options: dict,
                                               shape: tuple[int, ...]) -> None:
    """Inside second_order_passes, the output and the first-order gradients equal torch's bit for bit (float32)."""
    torch.manual_seed(0)
    lean, reference = _pair(lean_cls, torch_cls, options, torch.float32)
    x = torch.randn(*shape, requires_grad=True)
    with second_order_passes():
        out = lean(x)
    expected = reference(x)
    assert torch.equal(out, expected)
    got = torch.autograd.grad(out.square().sum(), [x, *lean.parameters()])
    want = torch.autograd.grad(expected.square().sum(), [x, *reference.parameters()])
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def _second_order(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """d/d(x, parameters) of <d L / d parameters, ramp> with L = sum sin(layer(x)): a differentiated backward."""
    grads = torch.autograd.grad(layer(x).sin().sum(), list(layer.parameters()), create_graph=True)
    inner = sum((g * torch.arange(g.numel(), dtype=g.dtype).reshape(g.shape)).sum() for g in grads)
    return torch.autograd.grad(inner, [x, *layer.parameters()])


@pytest.mark.parametrize(("lean_cls", "torch_cls", "options", "shape"), CASES, ids=IDS)
def test_second_order_equals_torch_and_finite_differences(lean_cls: type, torch_cls: type, options: dict,
                                                          shape: tuple[int, ...]) -> None:
    """A differentiated backward gives torch's second derivatives (float64, 1e-12) and passes gradgradcheck."""
    torch.manual_seed(1)
    lean, reference = _pair(lean_cls, torch_cls, options, torch.float64)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    with second_order_passes():
        got = _second_order(lean, x)
        names = [n for n, _ in lean.named_parameters()]

        def call(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
            """The lean layer as a function of its input and parameters."""
            return functional_call(lean, dict(zip(names, params)), (x,))

        assert torch.autograd.gradgradcheck(call, (x, *lean.parameters()))
    want = _second_order(reference, x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("lean_cls", "torch_cls", "options", "shape"), CASES, ids=IDS)
def test_forward_over_reverse_equals_torch(lean_cls: type, torch_cls: type, options: dict,
                                           shape: tuple[int, ...]) -> None:
    """torch.func.jvp of torch.func.grad (the implicit methods' ``func`` HVP backend) gives torch's layer's
    Hessian-vector product (float64)."""
    torch.manual_seed(2)
    lean, reference = _pair(lean_cls, torch_cls, options, torch.float64)
    x = torch.randn(*shape, dtype=torch.float64)
    params = {k: v.detach() for k, v in reference.named_parameters()}
    tangent = {k: torch.randn_like(v) for k, v in params.items()}

    def hvp(layer: nn.Module) -> dict[str, torch.Tensor]:
        """H v of L(params) = sum sin(layer(x)) by forward-over-reverse."""
        def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
            """The loss as a function of the parameters."""
            return functional_call(layer, p, (x,)).sin().sum()
        return torch.func.jvp(torch.func.grad(loss), (params,), (tangent,))[1]

    with second_order_passes():
        got = hvp(lean)
    want = hvp(reference)
    for k in params:
        torch.testing.assert_close(got[k], want[k], rtol=1e-12, atol=1e-12)


def test_autocast_matches_torchs_autocast() -> None:
    """Under CPU bf16 autocast the lean layer casts as torch's does: same output and input gradient, bit for bit."""
    torch.manual_seed(3)
    lean, reference = _pair(LeanConv2d, nn.Conv2d, {"in_channels": 3, "out_channels": 4, "kernel_size": 3,
                                                    "padding": 1}, torch.float32)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with second_order_passes():
            out = lean(x)
        expected = reference(x)
    assert out.dtype == expected.dtype == torch.bfloat16
    assert torch.equal(out, expected)
    got = torch.autograd.grad(out.float().sum(), [x, lean.weight])
    want = torch.autograd.grad(expected.float().sum(), [x, reference.weight])
    assert all(g.dtype == torch.float32 and torch.equal(g, w) for g, w in zip(got, want))


class _WeightShapedConvolutions(TorchDispatchMode):
    """Counts the convolutions whose output has the shape of a given weight with its first two axes swapped:
    how torch's double backward computes a convolution's second-order weight term."""

    def __init__(self, weight_shapes: list[torch.Size]) -> None:
        """Watch for these weight shapes."""
        super().__init__()
        self.shapes = {torch.Size([s[1], s[0], *s[2:]]) for s in weight_shapes}
        self.count = 0

    def __torch_dispatch__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        """Run the op; count it if it is a convolution with a watched output shape."""
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten._convolution) \
                and out.shape in self.shapes:
            self.count += 1
        return out


def _bilevel_problem(conv: type) -> tuple[nn.Module, nn.Module, Callable, Callable]:
    """Upper: a 1 x 1 mixing layer; lower: two 3 x 3 convolutions of class ``conv``; float64 losses."""
    torch.manual_seed(4)
    mix = nn.Conv2d(2, 1, 1).double()
    seg = nn.Sequential(conv(1, 6, 3, padding=1), nn.Tanh(), conv(6, 3, 3, padding=1)).double()
    x_fit, x_hold = torch.randn(3, 2, 12, 12, dtype=torch.float64), torch.randn(3, 2, 12, 12, dtype=torch.float64)
    y_fit, y_hold = torch.randint(0, 3, (3, 12, 12)), torch.randint(0, 3, (3, 12, 12))

    def lower_loss(fuse: Callable, segment: Callable) -> torch.Tensor:
        """Cross-entropy of segment(fuse(x_fit))."""
        return nn.functional.cross_entropy(segment(fuse(x_fit)), y_fit)

    def upper_loss(fuse: Callable, segment: Callable) -> torch.Tensor:
        """Cross-entropy of segment(fuse(x_hold))."""
        return nn.functional.cross_entropy(segment(fuse(x_hold)), y_hold)

    return mix, seg, lower_loss, upper_loss


@pytest.mark.parametrize("method", ["unrolled", "implicit-cg"])
def test_a_hypergradient_equals_torchs_without_the_weight_term(method: str) -> None:
    """Through lean layers the hypergradient equals the one through torch's (float64, 1e-10), and no convolution
    computes the second-order weight term of the lower layers, which nothing asked for."""
    results, counts = [], []
    for conv in (nn.Conv2d, LeanConv2d):
        mix, seg, lower_loss, upper_loss = _bilevel_problem(conv)
        watch = _WeightShapedConvolutions([m.weight.shape for m in seg if isinstance(m, nn.Conv2d)])
        with watch:
            result = module_hypergradient(mix, seg, lower_loss, upper_loss, method, steps=2, lr=0.3, cg_iters=3)
        results.append(result)
        counts.append(watch.count)
    torch_result, lean_result = results
    for k in torch_result.grads:
        torch.testing.assert_close(lean_result.grads[k], torch_result.grads[k], rtol=1e-10, atol=1e-12)
    for k in torch_result.lower:
        torch.testing.assert_close(lean_result.lower[k], torch_result.lower[k], rtol=1e-10, atol=1e-12)
    assert counts[1] == 0
