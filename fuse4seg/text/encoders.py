"""Text encoders behind one interface: texts -> token features (N, T, D) float32 and a mask (N, T) bool.

Two encoders, both frozen during fusion training (they are inputs, not learners):

- ``builtin`` (:class:`VocabularyEncoder`): fitted on the benchmark's own texts, no download, no network.
  Words are lower-cased; a number becomes the token of its power-of-two bin (``<num:7>`` for 128..255), so
  "oedema 151.3 mm²" and "oedema 160.0 mm²" read alike and a 10x larger area reads differently. Word vectors
  are the classic count-based embedding: the positive pointwise mutual information of words within
  :data:`WINDOW` tokens of each other, factorised by SVD (``dim / 2`` components scaled by the square root of
  their singular values, each component's sign fixed so its largest-magnitude entry is positive, rows
  L2-normalised). A token's feature is its word vector beside the mean vector of its :data:`WINDOW`
  neighbours on each side, so a number carries the region it is written next to. Unknown words map to zeros.
  Deterministic: the same texts give the same encoder bit for bit.
- a Hugging Face model already on disk (:class:`PretrainedEncoder`, ``--text-encoder PATH``, the optional
  ``transformers`` extra): its tokenizer and last hidden states, loaded with ``local_files_only`` so nothing
  is ever downloaded; a missing or unreadable folder is a one-line ConfigError. Its features are cached per
  distinct text (texts repeat every epoch) up to :data:`CACHE_MAX_BYTES`.

Both are ``nn.Module`` s whose ``state_dict`` holds what rebuilds them (the vocabulary and vectors; the
model's path), so a run's checkpoint carries its text encoder and ``evaluate``/``fuse`` encode as training did.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from fuse4seg.errors import ConfigError
from fuse4seg.io import one_line

#: ``--text-encoder`` value of the built-in encoder (anything else is a folder path).
BUILTIN = "builtin"
#: Tokens kept per text (ours have 40-90); longer texts are truncated.
MAX_TOKENS = 128
#: Neighbours on each side counted as a word's context (co-occurrence and token features).
WINDOW = 2
#: Default feature size of the built-in encoder (word vector + context vector, half each).
DEFAULT_DIM = 64
#: Cached features of a pretrained encoder, at most (bytes).
CACHE_MAX_BYTES = 512 * 1024**2
#: Texts per forward pass of a pretrained encoder (a BERT-sized model's activations stay well under 1 GB).
ENCODE_BATCH = 64
_TOKEN = re.compile(r"[a-z]+|[0-9]+(?:\.[0-9]+)?|[^\sa-z0-9]")


class TextTokens(NamedTuple):
    """Encoded texts: ``features`` (N, T, D) float32, ``mask`` (N, T) bool (True: a real token)."""

    features: torch.Tensor
    mask: torch.Tensor


def tokenize(text: str) -> list[str]:
    """Lower-cased word, number-bin and punctuation tokens of ``text`` (numbers -> ``<num:k>``, k = floor(log2(v + 1)))."""
    out = []
    for token in _TOKEN.findall(text.lower())[:MAX_TOKENS]:
        if "0" <= token[0] <= "9":
            token = f"<num:{int(min(math.log2(float(token) + 1.0), 40.0))}>"  # a 400-digit number is bin 40
        out.append(token)
    return out


def _ppmi(sequences: list[list[int]], size: int) -> np.ndarray:
    """(size, size) positive PMI of token ids co-occurring within WINDOW positions (symmetric counts)."""
    counts = np.zeros((size, size), dtype=np.float64)
    for ids in sequences:
        ids_arr = np.asarray(ids, dtype=np.int64)
        for shift in range(1, WINDOW + 1):
            if len(ids_arr) > shift:
                np.add.at(counts, (ids_arr[:-shift], ids_arr[shift:]), 1.0)
    counts = counts + counts.T
    total = counts.sum()
    if total == 0:
        return counts
    rows = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(counts * total / (rows * rows.T))
    return np.where(np.isfinite(pmi) & (pmi > 0), pmi, 0.0)


def fit_word_vectors(texts: Sequence[str], dim: int) -> tuple[list[str], np.ndarray]:
    """(vocabulary, (V, dim) float32 L2-normalised word vectors) of ``texts`` by PPMI + SVD (module doc); the
    vocabulary is sorted, so the result does not depend on the order of ``texts``."""
    tokenised = [tokenize(t) for t in texts]
    vocab = sorted(Counter(tok for toks in tokenised for tok in toks))
    if not vocab:
        raise ConfigError("the benchmark's train split has no text to fit the built-in text encoder on",
                          option="text_encoder")
    index = {tok: i for i, tok in enumerate(vocab)}
    ppmi = _ppmi([[index[t] for t in toks] for toks in tokenised], len(vocab))
    u, s, _ = np.linalg.svd(ppmi, hermitian=True)
    k = min(dim, len(vocab))
    vectors = u[:, :k] * np.sqrt(s[:k])
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(k)])
    vectors = vectors * np.where(signs == 0, 1.0, signs)
    out = np.zeros((len(vocab), dim), dtype=np.float64)
    out[:, :k] = vectors
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return vocab, (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def pad_tokens(features: Sequence[torch.Tensor], dim: int) -> TextTokens:
    """Stack per-text (T_i, dim) features into a zero-padded :class:`TextTokens` (T = max T_i, at least 1)."""
    length = max([1, *(len(f) for f in features)])
    out = torch.zeros(len(features), length, dim)
    mask = torch.zeros(len(features), length, dtype=torch.bool)
    for i, f in enumerate(features):
        out[i, :len(f)] = f
        mask[i, :len(f)] = True
    return TextTokens(out, mask)


class VocabularyEncoder(nn.Module):
    """The built-in encoder (module doc): texts -> (N, T, dim) token features; unfitted until :meth:`fit` or a
    loaded state."""

    kind = BUILTIN

    def __init__(self, dim: int = DEFAULT_DIM) -> None:
        """An unfitted encoder of ``dim`` (even, >= 2) features per token."""
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2 or dim % 2:
            raise ConfigError(f"the built-in text encoder's size must be an even integer >= 2, got {dim!r}",
                              option="text_dim")
        self.dim = dim
        self.vocab: dict[str, int] = {}
        # Not persistent: its shape depends on the vocabulary, so it travels in the extra state with it.
        self.register_buffer("vectors", torch.zeros(0, dim // 2), persistent=False)

    def fit(self, texts: Sequence[str]) -> VocabularyEncoder:
        """Fit the vocabulary and word vectors on ``texts`` (a benchmark's train split); returns self."""
        vocab, vectors = fit_word_vectors(texts, self.dim // 2)
        self.vocab = {tok: i for i, tok in enumerate(vocab)}
        self.vectors = torch.from_numpy(vectors).to(self.vectors.device)
        return self

    def get_extra_state(self) -> dict[str, Any]:
        """The fitted vocabulary (list of str) and word vectors, for the state dict."""
        return {"vocab": list(self.vocab), "vectors": self.vectors.detach().cpu()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_extra_state`; ValueError when it does not fit this encoder's size."""
        vectors = torch.as_tensor(state["vectors"], dtype=torch.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim // 2 or vectors.shape[0] != len(state["vocab"]):
            raise ValueError(f"text encoder state of shape {tuple(vectors.shape)} does not fit size {self.dim}")
        self.vocab = {str(tok): i for i, tok in enumerate(state["vocab"])}
        self.vectors = vectors.to(self.vectors.device)

    def token_features(self, text: str) -> torch.Tensor:
        """(T, dim) features of one text: each token's word vector beside its neighbours' mean vector."""
        ids = [self.vocab.get(tok, -1) for tok in tokenize(text)]
        half = self.dim // 2
        words = torch.zeros(len(ids), half, device=self.vectors.device)
        known = torch.tensor([i >= 0 for i in ids], dtype=torch.bool, device=self.vectors.device)
        if known.any():
            words[known] = self.vectors[torch.tensor([i for i in ids if i >= 0], device=self.vectors.device)]
        if not ids:
            return torch.zeros(0, self.dim, device=self.vectors.device)
        # mean of the WINDOW neighbours on each side (fewer at the ends), by a box filter over the sequence
        padded = torch.nn.functional.pad(words.T[None], (WINDOW, WINDOW))
        box = torch.nn.functional.avg_pool1d(padded, 2 * WINDOW + 1, stride=1, count_include_pad=True)[0].T
        counts = torch.nn.functional.avg_pool1d(
            torch.nn.functional.pad(torch.ones(1, 1, len(ids), device=words.device), (WINDOW, WINDOW)),
            2 * WINDOW + 1, stride=1)[0, 0] * (2 * WINDOW + 1) - 1
        context = (box * (2 * WINDOW + 1) - words) / counts.clamp(min=1)[:, None]
        return torch.cat([words, context], dim=1)

    @torch.no_grad()
    def forward(self, texts: Sequence[str]) -> TextTokens:
        """Encode N texts into :class:`TextTokens` (N, T, dim); ConfigError when the encoder was never fitted."""
        if not self.vocab:
            raise ConfigError("the built-in text encoder has not been fitted", option="text_encoder")
        return pad_tokens([self.token_features(t) for t in texts], self.dim)


class PretrainedEncoder(nn.Module):
    """A Hugging Face text model read from the folder ``path`` (never downloaded): texts -> its last hidden
    states (N, T, hidden size) and attention mask; frozen, features cached per text."""

    kind = "pretrained"

    def __init__(self, path: str) -> None:
        """Load the tokenizer and model of folder ``path``; one-line ConfigError when it cannot."""
        super().__init__()
        self.path = os.fspath(path)
        self._tokenizer, model = load_pretrained(self.path)
        # Kept outside the module tree: its weights are the folder's, not the run's (checkpoints store the path).
        self._model = [model.eval().requires_grad_(False)]
        self.dim = int(model.config.hidden_size)
        self.fingerprint = folder_fingerprint(self.path)
        self._cache: dict[str, torch.Tensor] = {}
        self._cached_bytes = 0

    def get_extra_state(self) -> dict[str, Any]:
        """The model folder and its fingerprint, for the state dict (its weights stay in the folder)."""
        return {"path": self.path, "dim": self.dim, "fingerprint": self.fingerprint}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Nothing to restore (the model was loaded from the configured path); ValueError when the folder now holds
        another model (another size or fingerprint) than the run was trained with."""
        if int(state["dim"]) != self.dim:
            raise ValueError(f"text model {self.path} has {self.dim} features, the run's had {state['dim']}")
        if state.get("fingerprint", self.fingerprint) != self.fingerprint:
            raise ValueError(f"text model {self.path} has changed since the run was trained (other files or config)")

    def to(self, *args: Any, **kwargs: Any) -> PretrainedEncoder:
        """Move the model too (it is not a submodule)."""
        self._model[0].to(*args, **kwargs)
        self._cache.clear()
        self._cached_bytes = 0
        return super().to(*args, **kwargs)

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> list[torch.Tensor]:
        """Per text (T_i, dim) last hidden states of the real tokens, :data:`ENCODE_BATCH` texts per forward pass."""
        model = self._model[0]
        device = next(model.parameters()).device
        out = []
        for start in range(0, len(texts), ENCODE_BATCH):
            part = texts[start:start + ENCODE_BATCH]
            batch = self._tokenizer(part, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items()}
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].bool()
            out += [hidden[i, mask[i]] for i in range(len(part))]
        return out

    @torch.no_grad()
    def forward(self, texts: Sequence[str]) -> TextTokens:
        """Encode N texts into :class:`TextTokens` (N, T, hidden size)."""
        texts = list(texts)
        missing = sorted({t for t in texts if t not in self._cache})
        fresh = dict(zip(missing, self._encode(missing))) if missing else {}
        for text, features in fresh.items():
            size = features.numel() * features.element_size()
            if self._cached_bytes + size <= CACHE_MAX_BYTES:
                self._cache[text] = features
                self._cached_bytes += size
        return pad_tokens([self._cache.get(t, fresh.get(t)) for t in texts], self.dim)


def folder_fingerprint(path: str) -> str:
    """sha256 of a model folder's config.json and of every file's name and size (a changed model changes it)."""
    import hashlib

    digest = hashlib.sha256()
    root = os.path.abspath(path)
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            full = os.path.join(folder, name)
            digest.update(f"{os.path.relpath(full, root)}\0{os.path.getsize(full)}\0".encode())
    config = os.path.join(root, "config.json")
    if os.path.isfile(config):
        with open(config, "rb") as handle:
            digest.update(handle.read())
    return digest.hexdigest()


def load_pretrained(path: str) -> tuple[Any, nn.Module]:
    """(tokenizer, model) of the Hugging Face model folder ``path``, offline; one-line ConfigError on failure."""
    if not os.path.isdir(path):
        raise ConfigError(f"{path}: no such folder (a Hugging Face text model saved on disk, or 'builtin')",
                          option="text_encoder")
    try:
        import transformers
    except ImportError:
        raise ConfigError("needs the optional 'transformers' package: pip install 'fuse4seg[text]'",
                          option="text_encoder") from None
    transformers.utils.logging.disable_progress_bar()  # a command's output is its own lines, not loading bars
    try:
        # Never the folder's own Python code (a config's auto_map): a model folder is data, not a program.
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        model = transformers.AutoModel.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError... for a bad folder
        raise ConfigError(f"{path}: not a loadable text model ({one_line(exc)[:160]})", option="text_encoder") from None
    if not hasattr(model.config, "hidden_size"):
        raise ConfigError(f"{path}: the model declares no hidden_size", option="text_encoder")
    return tokenizer, model


def build_text_encoder(spec: str, dim: int = DEFAULT_DIM) -> VocabularyEncoder | PretrainedEncoder:
    """The encoder of ``--text-encoder``: an unfitted built-in one of ``dim`` features, or the model at ``spec``."""
    return VocabularyEncoder(dim) if spec == BUILTIN else PretrainedEncoder(spec)

