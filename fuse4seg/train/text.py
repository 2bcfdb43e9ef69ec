"""A run's text models, fitted before its first step and frozen: the built-in text encoder on the train split's
texts, and the semantic loss's image-text model (fuse4seg.text.alignment) on the train split's images and texts.

Both are deterministic functions of the benchmark and the seed (on CPU), and both are stored in every checkpoint with
the networks, so a resumed run, ``evaluate`` and ``fuse`` encode texts exactly as training did.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fuse4seg.data.package.dataset import BraTSFuse
from fuse4seg.errors import ConfigError
from fuse4seg.text.alignment import retrieval_accuracy, train_alignment, view_stack
from fuse4seg.text.encoders import TextTokens, VocabularyEncoder
from fuse4seg.train.networks import Pipeline

#: Slices the image-text model trains on at most (a seeded sample of the train split beyond that), so a large
#: benchmark is not read into memory whole for it: 4096 x 5 x 240^2 float32 planes are 4.4 GiB.
ALIGN_MAX_SLICES = 4096
#: Val slices on which the trained image-text model's retrieval accuracy is reported (chance: 1 / this).
RETRIEVAL_SLICES = 64


def split_texts(dataset: BraTSFuse) -> list[str]:
    """Every slice text of ``dataset``'s split, in file order; ConfigError when the package has none."""
    if not dataset.has_text:
        raise ConfigError(f"{dataset.path} holds no slice texts (built before fuse4seg wrote them); rebuild it with "
                          "build-benchmark to train with text", option="benchmark")
    return dataset.texts()


def _sample(dataset: BraTSFuse, count: int, seed: int, channels: list[int]) -> tuple[np.ndarray, list[str]]:
    """(views (n, C + 1, H, W), texts) of at most ``count`` slices of ``dataset`` drawn by ``seed``, in file order."""
    n = len(dataset)
    picks = np.arange(n) if n <= count else np.sort(np.random.default_rng(seed).choice(n, count, replace=False))
    items = [dataset[int(i)] for i in picks]
    views = view_stack(np.stack([it["source"].numpy() for it in items]), np.stack([it["fused"].numpy() for it in items]),
                       channels)
    return views, [str(it["text"]) for it in items]


def prepare_text_models(pipeline: Pipeline, train: BraTSFuse, val: BraTSFuse | None, seed: int, steps: int
                        ) -> dict[str, Any]:
    """Fit ``pipeline``'s built-in text encoder on the ``train`` split's texts and train its image-text model for
    ``steps`` steps (seeded) on up to :data:`ALIGN_MAX_SLICES` train slices; returns facts for config.json (the
    vocabulary size, the contrastive loss at the first and last step, the val retrieval accuracy)."""
    encoder, facts = pipeline.text_encoder, {}
    if encoder is None:
        return facts
    if isinstance(encoder, VocabularyEncoder):
        encoder.fit(split_texts(train))
        facts["text_vocabulary"] = len(encoder.vocab)
    elif not train.has_text:
        split_texts(train)  # the one-line error
    if pipeline.alignment is None:
        return facts
    device = next(pipeline.alignment.parameters()).device
    views, texts = _sample(train, ALIGN_MAX_SLICES, seed, pipeline.fusion_channels)
    losses = train_alignment(pipeline.alignment, views, encoder(texts), seed, steps=steps)
    facts.update(alignment_loss_first=losses[0], alignment_loss_last=losses[-1], alignment_slices=len(texts))
    if val is not None and len(val) > 1 and val.has_text:
        views, texts = _sample(val, RETRIEVAL_SLICES, seed, pipeline.fusion_channels)
        fused = torch.from_numpy(views[:, -1:]).to(device)
        tokens = encoder(texts)
        facts["alignment_val_retrieval"] = retrieval_accuracy(
            pipeline.alignment, fused, TextTokens(tokens.features.to(device), tokens.mask.to(device)))
        facts["alignment_val_chance"] = 1.0 / len(texts)
    return facts

