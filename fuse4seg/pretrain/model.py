"""``PretrainNet``: one 1-channel UNet encoder shared by every modality, with the heads of the three objectives.

The encoder is built exactly as :meth:`fuse4seg.models.unet.UNet.build_encoder` builds a 1-channel one
(``unet_encoder(1, plan.channels, plan.norm, dims)``), so its state dict loads unchanged into
``UNet(in_channels=1).encoder`` and into every ``FeatureFusionSegmenter.encoders[i]``
(:func:`fuse4seg.runkit.pretrained.load_pretrained_encoder`). The heads and the target-modality embedding live
outside it and are dropped after pre-training; the encoder sees the images exactly as fine-tuning will.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from fuse4seg.models.blocks import (
    LAYERS,
    check_dims,
    check_positive_int,
    crop_to,
    pad_to_multiple,
    run_encoder,
    segmenter_plan,
    unet_encoder,
)
from fuse4seg.pretrain.objectives import feature_alignment_loss, info_nce, masked_reconstruction_loss


class Draw(NamedTuple):
    """The random choices of one step: the InfoNCE/alignment ``pair`` of modality indices, the ``masked``
    modality (not in the pair) and the (N, 1, *S) bool ``mask`` of its hidden pixels (S: padded size)."""

    pair: tuple[int, int]
    masked: int
    mask: torch.Tensor


class Losses(NamedTuple):
    """The three objectives of one batch (scalars) and their weighted sum ``total``."""

    total: torch.Tensor
    consistency: torch.Tensor
    reconstruction: torch.Tensor
    alignment: torch.Tensor


def draw_step(seed: int, step: int, batch: int, modalities: int, size: tuple[int, ...], patch: int,
              mask_fraction: float) -> Draw:
    """The choices of step ``step``, a pure function of (seed, step): a pair of distinct modalities, a third
    one to mask, and per image round(mask_fraction * P) (at least 1) of its P ``patch``-sized cells hidden;
    ``size`` (spatial, each a multiple of ``patch``)."""
    import numpy as np

    state = np.random.SeedSequence([int(seed), 0x50524554, int(step)]).generate_state(2, dtype=np.uint64)
    rng = np.random.default_rng(int(state[0]))
    order = rng.permutation(modalities)
    g = torch.Generator().manual_seed(int(state[1]) % (2**63 - 1))
    grid = tuple(s // patch for s in size)
    cells = int(np.prod(grid))
    hidden = min(cells, max(1, int(np.floor(mask_fraction * cells + 0.5))))
    # the `hidden` smallest of `cells` uniform keys per image: a uniform subset, one vectorised draw
    keys = torch.rand(batch, cells, generator=g)
    mask = keys.argsort(dim=1).argsort(dim=1) < hidden
    mask = mask.view(batch, 1, *grid)
    for axis in range(len(size)):
        mask = mask.repeat_interleave(patch, dim=2 + axis)
    return Draw((int(order[0]), int(order[1])), int(order[2]), mask)


class PretrainNet(nn.Module):
    """The shared encoder (``encoder``: a 1-channel UNet encoder of ``width``, ``depth``, ``norm``, ``dims``),
    a projection head (global average pool of the bottleneck -> MLP -> ``embed_dim``) for InfoNCE, and a
    reconstruction head (mean of the modalities' full-resolution features + the learned embedding of the
    modality to restore -> conv -> LeakyReLU -> 1x1 conv -> sigmoid, an image in [0, 1])."""

    def __init__(self, width: int = 16, depth: int = 4, norm: str = "group", *, dims: int = 2,
                 modalities: int = 4, embed_dim: int = 128) -> None:
        """Build the network; ConfigError for invalid options. ``modalities`` >= 3 (a pair and a masked one)."""
        super().__init__()
        self.dims = check_dims(dims)
        plan = segmenter_plan(1, 1, width, depth, norm)
        self.width, self.depth, self.norm, self.channels = width, plan.depth, plan.norm, plan.channels
        self.modalities = check_positive_int("modalities", modalities, 3)
        self.embed_dim = check_positive_int("embed_dim", embed_dim)
        self.encoder = unet_encoder(1, plan.channels, plan.norm, self.dims)
        top, first = plan.channels[-1], plan.channels[0]
        self.projection = nn.Sequential(nn.Linear(top, top), nn.ReLU(), nn.Linear(top, self.embed_dim))
        self.target_embedding = nn.Embedding(self.modalities, first)
        conv = LAYERS[self.dims].conv
        self.reconstruction = nn.Sequential(conv(first, first, 3, padding=1), nn.LeakyReLU(0.1), conv(first, 1, 1),
                                            nn.Sigmoid())

    @property
    def multiple(self) -> int:
        """Every spatial size the encoder sees is padded to a multiple of this (2**depth px), the mask's cell."""
        return 2**self.depth

    def meta(self) -> dict[str, object]:
        """What the encoder is: width, depth, norm, dims, in_channels (1) and channels per scale."""
        return {"width": self.width, "depth": self.depth, "norm": self.norm, "dims": self.dims, "in_channels": 1,
                "channels": list(self.channels)}

    def features(self, images: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per modality, the encoder's features of (N, M, *S) ``images`` (S padded) at every scale, finest first:
        one encoder pass over the N*M single-channel images."""
        n, m = images.shape[:2]
        flat = run_encoder(self.encoder, images.reshape(n * m, 1, *images.shape[2:]))
        per_scale = [f.view(n, m, *f.shape[1:]) for f in flat]
        return [[f[:, k] for f in per_scale] for k in range(m)]

    def embed(self, bottleneck: torch.Tensor) -> torch.Tensor:
        """(N, D) embedding of an (N, C, *S) bottleneck: global average pool -> projection MLP."""
        return self.projection(bottleneck.flatten(2).mean(dim=2))

    def losses(self, sources: torch.Tensor, draw: Draw, temperature: float,
               weights: tuple[float, float, float]) -> Losses:
        """The three objectives of (N, M, *S) ``sources`` in [0, 1] (any S: padded here to a multiple of 2**depth)
        under ``draw`` (its mask drawn for the padded size); ``weights`` of (consistency, reconstruction,
        alignment) make ``total``."""
        padded, size = pad_to_multiple(sources, self.multiple)
        m = draw.masked
        visible = padded.clone()
        visible[:, m : m + 1] = padded[:, m : m + 1] * (~draw.mask).to(padded.dtype)
        feats = self.features(visible)
        a, b = draw.pair
        consistency = info_nce(self.embed(feats[a][-1]), self.embed(feats[b][-1]), temperature)
        alignment = torch.stack([feature_alignment_loss(fa, fb) for fa, fb in zip(feats[a], feats[b])]).mean()
        fine = torch.stack([f[0] for f in feats]).mean(dim=0)
        target = torch.full((fine.shape[0],), m, dtype=torch.long, device=fine.device)
        conditioned = fine + self.target_embedding(target).view(-1, fine.shape[1], *([1] * self.dims))
        pred = crop_to(self.reconstruction(conditioned), size)
        reconstruction = masked_reconstruction_loss(pred, sources[:, m : m + 1], crop_to(draw.mask, size))
        w_c, w_r, w_a = weights
        total = w_c * consistency + w_r * reconstruction + w_a * alignment
        return Losses(total, consistency, reconstruction, alignment)
