"""Fusion networks: (N, C, H, W) sources in [0, 1] -> (N, 1, H, W) fused image in [0, 1]; built with
``dims=3`` (registry names ``*-3d``), (N, C, D, H, W) volumes -> (N, 1, D, H, W).

Both networks predict a residual in logit space on top of a fixed, parameter-free fusion of the
inputs (the mean for ``fusion-cnn``; low-pass mean plus max-abs detail for ``fusion-freq``), or, for
``fusion-cnn`` with ``output="weighted"``, on a learned convex combination of the inputs that starts at the mean:

    fused = sigmoid(logit(base) + r(x))

Why: with the last layer initialised near zero, the untrained network already outputs a sensible
fused image, so the segmentation follower sees realistic input from the first bi-level step; the
sigmoid keeps the output in [0, 1] without clamping, so no pixel ever gets a zero gradient the way
a clamped output would. ``output="sigmoid"`` (fused = sigmoid(r(x))) is kept for comparison:
after 150 Adam steps on :func:`fuse4seg.losses.fusion_loss` (phantom T1ce + FLAIR slices, 120 px)
the residual form reached a held-out fusion loss of 0.87 (Qabf 0.79) against 1.56 (Qabf 0.63)
for the plain sigmoid, which starts from a grey image and must first learn the identity.
"""

from __future__ import annotations

import torch
from torch import nn

from fuse4seg.models.blocks import (
    LAYERS,
    NORMS,
    ConvNormAct,
    check_choice,
    check_dims,
    check_input,
    check_positive_float,
    check_positive_int,
    gaussian_kernel1d,
    logit,
    max_abs_select,
    split_bands,
)

OUTPUTS: tuple[str, ...] = ("residual", "weighted", "sigmoid")
# output="weighted": the base is a learned convex combination of the inputs, softmax(BASE_GAIN * base_logits). Adam
# moves every parameter by about the learning rate per step whatever its scale; the mixing weights are one global
# quantity that has to travel O(1) in logit space (T1ce weight 0.5 -> 0.9 is 2.2) within a few hundred outer steps
# at lr 1e-3, which the gain makes possible without a parameter group of its own.
BASE_GAIN = 5.0


def mixing_weights(base_logits: torch.Tensor) -> torch.Tensor:
    """(C,) weights of output="weighted"'s base from its (C,) logits: softmax(BASE_GAIN * logits), >= 0, summing to 1."""
    return torch.softmax(BASE_GAIN * base_logits, dim=0)


# Standard deviation of the last conv's initial weights: small, so the initial output is close to
# the base fusion, but non-zero, so every earlier layer receives a gradient from the first step.
_HEAD_INIT_STD = 1e-2


def _small_head(conv: nn.Module) -> nn.Module:
    """Initialise the residual head near zero (see module docstring) and return it."""
    nn.init.normal_(conv.weight, std=_HEAD_INIT_STD)
    nn.init.zeros_(conv.bias)
    return conv


class FusionCNN(nn.Module):
    """Small image-level fusion CNN: (N, in_channels, H, W) in [0, 1] -> (N, 1, H, W) in [0, 1].

    Options: ``in_channels`` (number of fused modalities, default 2 = T1ce + FLAIR), ``width``
    (feature maps per layer, 16), ``layers`` (3x3 conv layers including the output layer, 4),
    ``norm`` ("group" | "instance" | "none", "group"), ``output`` ("residual" on the mean of the
    inputs; "weighted": residual on a learned convex combination of the inputs, which starts at their mean; or plain
    "sigmoid"). Fully convolutional at stride 1: any H, W. Keyword-only ``dims``
    (2; 3 for ``fusion-cnn-3d``: 3x3x3 convs on (N, in_channels, D, H, W) volumes).
    """

    kind = "fusion"

    def __init__(
        self,
        in_channels: int = 2,
        width: int = 16,
        layers: int = 4,
        norm: str = "group",
        output: str = "residual",
        *,
        dims: int = 2,
    ) -> None:
        """Build the network; ConfigError for invalid options."""
        super().__init__()
        self.dims = check_dims(dims)
        self.in_channels = check_positive_int("in_channels", in_channels)
        width = check_positive_int("width", width)
        layers = check_positive_int("layers", layers, minimum=2)
        norm = check_choice("norm", norm, NORMS)
        self.output = check_choice("output", output, OUTPUTS)
        blocks: list[nn.Module] = [ConvNormAct(self.in_channels, width, norm, dims=dims)]
        blocks += [ConvNormAct(width, width, norm, dims=dims) for _ in range(layers - 2)]
        self.features = nn.Sequential(*blocks)
        self.head = LAYERS[dims].conv(width, 1, 3, padding=1)
        if self.output != "sigmoid":
            _small_head(self.head)
        if self.output == "weighted":  # zeros: the base starts at the mean, as "residual"'s
            self.base_logits = nn.Parameter(torch.zeros(self.in_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fuse (N, in_channels, *S) sources in [0, 1] into (N, 1, *S) in [0, 1] (S: H, W or D, H, W)."""
        check_input(x, self.dims, self.in_channels)
        r = self.head(self.features(x))
        if self.output == "residual":
            r = r + logit(x.mean(dim=1, keepdim=True))
        elif self.output == "weighted":
            w = mixing_weights(self.base_logits).to(x.dtype).view(1, -1, *([1] * self.dims))
            r = r + logit((w * x).sum(dim=1, keepdim=True))
        return torch.sigmoid(r)


class FrequencyFusionNet(nn.Module):
    """Frequency-decoupled fusion: low- and high-frequency branches, recombined; -> (N, 1, H, W) in [0, 1].

    Each source is split into a low-frequency part (Gaussian blur, standard deviation ``sigma``
    pixels) and a high-frequency part (source minus its blur). One conv branch sees all low parts,
    another all high parts; their features are concatenated and a head predicts a logit-space
    residual on the base fusion ``mean(low) + maxabs(high)`` (per pixel, the high part of the source
    with the largest magnitude). Options: ``in_channels`` (2), ``width`` (16 per branch),
    ``layers`` (3 per branch), ``sigma`` (2.0), ``norm`` ("group"). Keyword-only ``dims`` (2; 3 for
    ``fusion-freq-3d``: the blur is separable along D, H and W, sigma in voxels).
    """

    kind = "fusion"

    def __init__(
        self, in_channels: int = 2, width: int = 16, layers: int = 3, sigma: float = 2.0, norm: str = "group",
        *, dims: int = 2,
    ) -> None:
        """Build the network; ConfigError for invalid options."""
        super().__init__()
        self.dims = check_dims(dims)
        self.in_channels = check_positive_int("in_channels", in_channels)
        width = check_positive_int("width", width)
        layers = check_positive_int("layers", layers)
        self.sigma = check_positive_float("sigma", sigma)
        norm = check_choice("norm", norm, NORMS)
        # A fixed filter, not a parameter: the split into bands is part of the architecture.
        self.register_buffer("blur_kernel", gaussian_kernel1d(self.sigma), persistent=False)

        def branch() -> nn.Sequential:
            """One conv branch: in_channels -> width feature maps."""
            blocks = [ConvNormAct(self.in_channels, width, norm, dims=dims)]
            return nn.Sequential(*blocks, *[ConvNormAct(width, width, norm, dims=dims) for _ in range(layers - 1)])

        self.low_branch = branch()
        self.high_branch = branch()
        self.merge = ConvNormAct(2 * width, width, norm, dims=dims)
        self.head = _small_head(LAYERS[dims].conv(width, 1, 3, padding=1))

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split (N, C, *S) into (low, high) parts of the same shape; low + high == x."""
        return split_bands(x, kernel1d=self.blur_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fuse (N, in_channels, *S) sources in [0, 1] into (N, 1, *S) in [0, 1] (S: H, W or D, H, W)."""
        check_input(x, self.dims, self.in_channels)
        low, high = self.split(x)
        features = torch.cat([self.low_branch(low), self.high_branch(high)], dim=1)
        r = self.head(self.merge(features))
        base = low.mean(dim=1, keepdim=True) + max_abs_select(high)
        return torch.sigmoid(logit(base) + r)
