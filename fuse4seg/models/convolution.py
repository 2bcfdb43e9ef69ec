"""Convolution layers whose second derivative computes only the terms that are asked for.

Every network of fuse4seg is built from these layers (:data:`fuse4seg.models.blocks.LAYERS`). They are torch's
``Conv2d`` and ``Conv3d``, with one change in the passes whose backward is itself differentiated: the tracked
inner steps of the bi-level hypergradients and the implicit methods' Hessian-vector products, which
``fuse4seg.bilevel`` runs inside :func:`fuse4seg.second_order.second_order_passes`.

- torch's double backward of a convolution (``_convolution_double_backward``) computes the second-order weight
  term, a convolution of the input gradient's gradient with the output gradient, whenever the first is defined,
  whatever is asked for. A hypergradient is taken for the upper parameters only, so that term (a convolution
  whose kernel is the size of the image) is thrown away.
- Inside those passes the backward is written as two differentiable calls whose own backward passes honour
  the request: the input gradient as the adjoint convolution (a forward ``aten.convolution`` with the transposed
  flag set) and the weight gradient as ``aten.convolution_backward`` asked for the weight alone.
- Outside them the layers are torch's own, and inside them a backward that is not differentiated makes torch's
  own ``aten.convolution_backward`` call, so first-order gradients are bit-identical to torch's (tested).

At paper size this takes about 7 % off a bi-level step on CPU (``benchmarks/second_order.py``, the performance
page). Transposed convolutions stay torch's: while developing, the same change gave no gain on the UNet's 2 x 2
upsampling.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from fuse4seg.second_order import in_second_order_passes

__all__ = ["LeanConv2d", "LeanConv3d"]

_aten = torch.ops.aten


class Spec(NamedTuple):
    """The geometry of one ``aten.convolution`` call: stride, padding and dilation per spatial axis; groups."""

    stride: list[int]
    padding: list[int]
    dilation: list[int]
    groups: int

    def forward_args(self) -> tuple:
        """The arguments of ``aten.convolution`` after (input, weight, bias), and of ``aten.convolution_backward``
        after (grad_output, input, weight, bias_sizes): a convolution, not a transposed one."""
        return self.stride, self.padding, self.dilation, False, [0] * len(self.stride), self.groups


def _input_gradient(grad_out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, spec: Spec) -> torch.Tensor:
    """d loss / d x (shape of x) of ``convolution(x, w)`` from d loss / d output: the adjoint (transposed)
    convolution of ``grad_out`` with the same weight."""
    # A strided convolution maps several input sizes to one output size: output_padding picks x's.
    extra = [x.shape[2 + i] - ((grad_out.shape[2 + i] - 1) * s - 2 * p + d * (w.shape[2 + i] - 1) + 1)
             for i, (s, p, d) in enumerate(zip(spec.stride, spec.padding, spec.dilation))]
    return _aten.convolution(grad_out, w, None, spec.stride, spec.padding, spec.dilation, True, extra, spec.groups)


class _Convolution(torch.autograd.Function):
    """``aten.convolution`` of (x, w, b) with geometry ``spec``, with the backward of the module docstring."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, spec: Spec) -> torch.Tensor:
        """(N, C_in, *S) -> (N, C_out, *S'), as torch's convolution."""
        return _aten.convolution(x, w, b, *spec.forward_args())

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        """Keep x and w for both modes of differentiation, and the geometry."""
        x, w, b, spec = inputs
        ctx.save_for_backward(x, w)
        ctx.save_for_forward(x, w)
        ctx.spec = spec
        ctx.bias_sizes = None if b is None else list(b.shape)
        ctx.out_shape = output.shape

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """(d x, d w, d b, None) from d output; torch's single call unless this backward is differentiated."""
        x, w = ctx.saved_tensors
        spec, bias_sizes = ctx.spec, ctx.bias_sizes
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and bias_sizes is not None
        if not torch.is_grad_enabled():  # not differentiated again: exactly torch's own backward
            gx, gw, gb = _aten.convolution_backward(grad_out, x, w, bias_sizes, *spec.forward_args(),
                                                     [need_x, need_w, need_b])
            return gx, gw, gb, None
        gx = _input_gradient(grad_out, x, w, spec) if need_x else None
        gw = (_aten.convolution_backward(grad_out, x, w, None, *spec.forward_args(), [False, True, False])[1]
              if need_w else None)
        gb = grad_out.sum(dim=[0, *range(2, grad_out.dim())]) if need_b else None
        return gx, gw, gb, None

    @staticmethod
    def jvp(ctx: Any, x_t: torch.Tensor | None, w_t: torch.Tensor | None, b_t: torch.Tensor | None,
            _: None) -> torch.Tensor:
        """Forward-mode derivative conv(x_t, w) + conv(x, w_t) + b_t (torch.func.jvp: the ``func`` HVP backend)."""
        x, w = ctx.saved_tensors
        args = ctx.spec.forward_args()
        terms = [_aten.convolution(x_t, w, None, *args)] if x_t is not None else []
        if w_t is not None:
            terms.append(_aten.convolution(x, w_t, None, *args))
        if b_t is not None:
            terms.append(b_t.reshape(1, -1, *([1] * (x.dim() - 2))))
        out = terms[0]
        for term in terms[1:]:
            out = out + term
        return out.expand(ctx.out_shape)


def convolve(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, spec: Spec) -> torch.Tensor:
    """(N, C_in, *S) -> (N, C_out, *S'): the convolution of (x, w, b) with geometry ``spec`` through
    :class:`_Convolution`; under autocast the three are cast to its lower precision first, as autocast casts a
    convolution's, and the call runs outside it."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return _Convolution.apply(x, w, b, spec)
    dtype = torch.get_autocast_dtype(device)
    x, w = x.to(dtype), w.to(dtype)
    b = None if b is None else b.to(dtype)
    with torch.autocast(device, enabled=False):
        return _Convolution.apply(x, w, b, spec)


class _LeanConvMixin:
    """``_conv_forward`` of ``nn.ConvNd``: torch's own, or through :func:`convolve` inside
    :func:`fuse4seg.second_order.second_order_passes` (string padding: torch's own always)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """(N, C_in, *S) -> (N, C_out, *S'), as the torch layer computes it."""
        if not in_second_order_passes() or isinstance(self.padding, str):
            return super()._conv_forward(input, weight, bias)
        axes = len(self.kernel_size)
        padding = list(self.padding)
        if self.padding_mode != "zeros":  # as torch: pad with the mode, then convolve without padding
            input = nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = [0] * axes
        spec = Spec(list(self.stride), padding, list(self.dilation), self.groups)
        return convolve(input, weight, bias, spec)


class LeanConv2d(_LeanConvMixin, nn.Conv2d):
    """``nn.Conv2d`` with the lean differentiated backward (module docstring); same parameters and state dict."""


class LeanConv3d(_LeanConvMixin, nn.Conv3d):
    """``nn.Conv3d`` with the lean differentiated backward (module docstring); same parameters and state dict."""
