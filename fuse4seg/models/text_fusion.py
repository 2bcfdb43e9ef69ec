"""Text-guided fusion (SMFusion): (N, C, H, W) sources in [0, 1] and a slice's encoded text -> (N, 1, H, W).

Like ``fusion-cnn`` it predicts a logit-space residual on the mean of the sources; between its conv layers:

- semantic alignment: cross-attention from every pixel's features (queries) to the text's tokens (keys and
  values, projected from the text encoder's ``text_dim`` features), added back to the features;
- text injection: the mean of the text's tokens sets a per-channel scale and shift of the features (FiLM),
  ``f * (1 + gamma) + beta``.

Both start near the identity (the attention's output projection and the injection start with weights of
standard deviation 0.01 and zero biases, as the residual head does), so the untrained network is close to a
plain fusion CNN, the text's influence is learned, and every parameter gets a gradient from the first step. Without a text (``text``
None, or a text with no tokens) the network attends to one learned "no text" token, so it also fuses cases
that have no report. 2-D only: texts describe axial slices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fuse4seg.errors import ConfigError
from fuse4seg.models.blocks import (
    LAYERS,
    NORMS,
    ConvNormAct,
    check_choice,
    check_input,
    check_positive_int,
    logit,
)
from fuse4seg.models.fusion import _small_head


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over the keys where ``mask`` (broadcast to (N, heads, Q, T)) is True; q (N, heads,
    Q, d), k and v (N, heads, T, d); every query must keep at least one key.

    Without gradients (evaluation, ``fuse``) torch's fused kernel computes it without the (Q, T) score matrix; with
    gradients the product is written out, because the bi-level hypergradients differentiate the backward pass
    again and the fused CPU kernel has no second derivative (benchmarks/text.py measures both).
    """
    if not torch.is_grad_enabled():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ v


class TextGuidedFusion(nn.Module):
    """Text-guided fusion network (module doc): (N, in_channels, H, W) in [0, 1] + text -> (N, 1, H, W) in [0, 1].

    Options: ``in_channels`` (2), ``width`` (16), ``layers`` (conv layers including the output layer, 4, at
    least 3: one before the text, one after it, the output), ``heads`` (attention heads, 2; must divide
    ``width``), ``text_dim`` (the text encoder's feature size, 64; set by training from the encoder), ``norm``
    ("group"). ``forward(x, text, text_mask)``: ``text`` (N, T, text_dim) token features, ``text_mask``
    (N, T) bool (True: a real token).
    """

    kind = "fusion"
    #: Training, evaluation and inference pass the slice's encoded text to networks that declare this.
    reads_text = True

    def __init__(self, in_channels: int = 2, width: int = 16, layers: int = 4, heads: int = 2, text_dim: int = 64,
                 norm: str = "group") -> None:
        """Build the network; ConfigError for invalid options."""
        super().__init__()
        self.dims = 2
        self.in_channels = check_positive_int("in_channels", in_channels)
        width = check_positive_int("width", width)
        layers = check_positive_int("layers", layers, minimum=3)
        self.heads = check_positive_int("heads", heads)
        if width % self.heads:
            raise ConfigError(f"option 'heads' ({heads}) must divide option 'width' ({width})")
        self.text_dim = check_positive_int("text_dim", text_dim)
        norm = check_choice("norm", norm, NORMS)
        blocks: list[nn.Module] = [ConvNormAct(self.in_channels, width, norm)]
        blocks += [ConvNormAct(width, width, norm) for _ in range(layers - 3)]
        self.features = nn.Sequential(*blocks)
        self.null_text = nn.Parameter(torch.randn(1, 1, self.text_dim) * 0.02)
        self.query = nn.Linear(width, width, bias=False)
        self.key = nn.Linear(self.text_dim, width, bias=False)
        self.value = nn.Linear(self.text_dim, width, bias=False)
        self.attend_out = nn.Linear(width, width)
        self.inject = nn.Linear(self.text_dim, 2 * width)
        for layer in (self.attend_out, self.inject):  # near the identity at the start (module doc)
            _small_head(layer)
        self.mix = ConvNormAct(width, width, norm)
        self.head = _small_head(LAYERS[2].conv(width, 1, 3, padding=1))

    def _text(self, x: torch.Tensor, text: torch.Tensor | None, mask: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (N, T, text_dim), mask (N, T)) with the learned null token for a missing or empty text."""
        n = x.shape[0]
        null = self.null_text.to(x.dtype).expand(n, 1, self.text_dim)
        if text is None:
            return null, torch.ones(n, 1, dtype=torch.bool, device=x.device)
        if text.ndim != 3 or text.shape[0] != n or text.shape[2] != self.text_dim:
            raise ConfigError(f"text features must be (N={n}, T, {self.text_dim}), got {tuple(text.shape)}")
        mask = torch.ones(text.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        # The null token is always present but attended to only by texts without a real token.
        empty = ~mask.any(dim=1, keepdim=True)
        return torch.cat([null, text.to(x.dtype)], dim=1), torch.cat([empty, mask], dim=1)

    def forward(self, x: torch.Tensor, text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Fuse (N, in_channels, H, W) sources in [0, 1], guided by their texts, into (N, 1, H, W) in [0, 1]."""
        check_input(x, 2, self.in_channels)
        f = self.features(x)
        tokens, mask = self._text(x, text, text_mask)
        n, c, h, w = f.shape
        d = c // self.heads
        q = self.query(f.flatten(2).transpose(1, 2)).view(n, h * w, self.heads, d).transpose(1, 2)
        k = self.key(tokens).view(n, -1, self.heads, d).transpose(1, 2)
        v = self.value(tokens).view(n, -1, self.heads, d).transpose(1, 2)
        attended = attention(q, k, v, mask[:, None, None, :]).transpose(1, 2).reshape(n, h * w, c)
        f = f + self.attend_out(attended).transpose(1, 2).reshape(n, c, h, w)
        weights = mask.to(tokens.dtype)[..., None]
        pooled = (tokens * weights).sum(1) / weights.sum(1)
        gamma, beta = self.inject(pooled).chunk(2, dim=1)
        f = f * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
        r = self.head(self.mix(f))
        return torch.sigmoid(r + logit(x.mean(dim=1, keepdim=True)))
