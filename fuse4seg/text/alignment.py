"""The medical semantic loss: a CLIP-style image-text alignment model, trained contrastively on a benchmark's
images and texts, then frozen; it scores a fused image against its slice's text.

Image tower: (N, 1, H, W) in [0, 1] -> three conv stages (width, 2 width, 4 width; 2x2 max-pool between) ->
global mean -> linear -> unit vector of ``embed`` features. Text tower: the text encoder's token features
(N, T, D), mean over the real tokens -> two-layer MLP -> unit vector. Training (:func:`train_alignment`):
symmetric InfoNCE (CLIP) over each batch at temperature ``temperature``, the image of a pair being one of the
slice's fusion-input modalities or the benchmark's fused image, drawn per pair, so the image tower reads any
view of the slice, fused images included. The loss a fusion network then gets is
:func:`semantic_loss`: 1 - cosine(image embedding of the fused image, text embedding of its slice), per item,
averaged (it needs no batch of negatives, and a sharded batch reduces it like every other loss).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fuse4seg.losses.segmentation import reduce_together
from fuse4seg.models.blocks import ConvNormAct
from fuse4seg.text.encoders import TextTokens

#: Contrastive training defaults: steps, batch (pairs), learning rate.
ALIGN_STEPS, ALIGN_BATCH, ALIGN_LR = 200, 32, 1e-3


def masked_mean(tokens: TextTokens) -> torch.Tensor:
    """(N, D) mean of the real tokens' features of (N, T, D) ``tokens`` (zeros for a text with none)."""
    weights = tokens.mask.to(tokens.features.dtype)[..., None]
    return (tokens.features * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class AlignmentModel(nn.Module):
    """Image and text towers into one ``embed``-dimensional unit sphere (module doc); ``text_dim``: the text
    encoder's feature size."""

    def __init__(self, text_dim: int, embed: int = 64, width: int = 16, temperature: float = 0.07) -> None:
        """Build both towers."""
        super().__init__()
        self.temperature = float(temperature)
        self.image_tower = nn.Sequential(
            ConvNormAct(1, width, "group"), nn.MaxPool2d(2),
            ConvNormAct(width, 2 * width, "group"), nn.MaxPool2d(2),
            ConvNormAct(2 * width, 4 * width, "group"),
        )
        self.image_head = nn.Linear(4 * width, embed)
        self.text_tower = nn.Sequential(nn.Linear(text_dim, embed), nn.GELU(), nn.Linear(embed, embed))

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) images in [0, 1] -> (N, embed) unit vectors."""
        features = self.image_tower(images).mean(dim=(2, 3))
        return F.normalize(self.image_head(features), dim=1)

    def embed_texts(self, tokens: TextTokens) -> torch.Tensor:
        """Encoded texts (N, T, D) -> (N, embed) unit vectors."""
        return F.normalize(self.text_tower(masked_mean(tokens)), dim=1)


def clip_loss(image: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE of (N, E) unit image and text embeddings whose row i is a pair: the mean of the
    image->text and text->image cross-entropies of the (N, N) cosine logits / ``temperature``."""
    logits = image @ text.T / temperature
    target = torch.arange(len(image), device=image.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def semantic_loss(model: AlignmentModel, fused: torch.Tensor, tokens: TextTokens,
                  reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Mean over the batch of 1 - cosine(image embedding of (N, 1, H, W) ``fused``, text embedding of its
    ``tokens``), in [0, 2]; ``reduce`` (a sharded batch): the mean over every shard."""
    similarity = (model.embed_images(fused.float()) * model.embed_texts(tokens)).sum(dim=1)
    total, n = reduce_together(reduce, [(1.0 - similarity).sum(), similarity.new_tensor(float(len(similarity)))])
    return total / n


def retrieval_accuracy(model: AlignmentModel, images: torch.Tensor, tokens: TextTokens) -> float:
    """Share of the N images whose most similar text among the N is their own (chance: 1 / N)."""
    with torch.no_grad():
        sims = model.embed_images(images) @ model.embed_texts(tokens).T
    return float((sims.argmax(dim=1) == torch.arange(len(images), device=sims.device)).float().mean())


def train_alignment(model: AlignmentModel, views: np.ndarray, tokens: TextTokens, seed: int,
                    steps: int = ALIGN_STEPS, batch_size: int = ALIGN_BATCH, lr: float = ALIGN_LR) -> list[float]:
    """Train ``model`` by CLIP loss on pairs (a view of slice i, text i): ``views`` (N, V, H, W) float32 in [0, 1]
    (the fusion-input modalities and the fused image), ``tokens`` the N encoded texts; batches and views are
    drawn from ``seed``; then freeze it (eval, no grad). Returns the loss of every step."""
    g = torch.Generator().manual_seed(int(seed))
    device = next(model.parameters()).device
    n, v = views.shape[:2]
    batch_size = min(batch_size, n)
    model.train(True).requires_grad_(True)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        pick = torch.randperm(n, generator=g)[:batch_size]
        view = torch.randint(v, (batch_size,), generator=g)
        images = torch.from_numpy(views[pick.numpy(), view.numpy()][:, None]).to(device)
        batch = TextTokens(tokens.features[pick].to(device), tokens.mask[pick].to(device))
        loss = clip_loss(model.embed_images(images), model.embed_texts(batch), model.temperature)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    model.train(False).requires_grad_(False)
    return losses


def view_stack(sources: np.ndarray, fused: np.ndarray, channels: Sequence[int]) -> np.ndarray:
    """(N, len(channels) + 1, H, W) views of N slices: the ``channels`` of (N, 4, H, W) ``sources`` and the
    (N, 1, H, W) ``fused`` image."""
    return np.concatenate([sources[:, list(channels)], fused], axis=1).astype(np.float32, copy=False)
