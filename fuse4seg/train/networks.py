"""The trained pipeline: an optional fusion network feeding a segmentation network, built from a config.

The same object serves training (all modes), evaluation and inference, so the input channels a
network sees are chosen in exactly one place.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fuse4seg.conventions import modality_indices
from fuse4seg.errors import ConfigError
from fuse4seg.losses.segmentation import Reduce
from fuse4seg.text.alignment import AlignmentModel
from fuse4seg.text.encoders import TextTokens, build_text_encoder
from fuse4seg.train.config import TrainConfig, reads_text, uses_text
from fuse4seg.train.modes import MODES
from fuse4seg.train.variants import VARIANTS, Variant, variant_of


@dataclass
class Pipeline:
    """Fusion network (None for direct/feature-fusion) and segmentation network, with input selection.

    ``fusion_inputs``: the modalities the fusion network fuses (and fusion metrics compare with);
    ``seg_inputs``: the segmenter's input channels, ``("fused",)`` (the learned fused image, or the
    stored one without a fusion network) or modality names; ``region_based``: the segmenter
    predicts WT/TC/ET sigmoids instead of 4-class logits; ``variant``: the run variant (task x dims), whose loss
    and selection metric the pipeline's are.
    """

    fusion: nn.Module | None
    seg: nn.Module
    fusion_inputs: tuple[str, ...]
    seg_inputs: tuple[str, ...] = ("fused",)
    region_based: bool = False
    text_encoder: nn.Module | None = None  # frozen; set when the fusion net reads text or the semantic loss is on
    alignment: AlignmentModel | None = None  # frozen image-text model of the semantic loss
    teacher: nn.Module | None = None  # the segmenter's mean teacher (--label-fraction < 1), updated by EMA
    variant: Variant = VARIANTS["segment-2d"]  # classify-2d: the second network is a presence classifier

    @property
    def classifies(self) -> bool:
        """Whether the second network classifies slices (``--task classify``) instead of segmenting them."""
        return not self.variant.segments

    @property
    def sigmoid_outputs(self) -> bool:
        """Whether the second network's outputs are independent sigmoids (regions, or presence) rather than a softmax."""
        return self.region_based or self.variant.sigmoid_outputs

    @property
    def selection_metric(self) -> str:
        """The validation score that chooses best.pt (the variant's): mean Dice, or mean AUROC for a classifier."""
        return self.variant.selection_metric

    def task_loss(self, logits: torch.Tensor, label: torch.Tensor, reduce: Reduce | None = None) -> torch.Tensor:
        """The second network's loss against (N, *spatial) canonical labels (the variant's): segmentation (Dice + CE)
        or presence BCE."""
        return self.variant.loss(logits, label, self.region_based, reduce)

    @property
    def fusion_channels(self) -> list[int]:
        """Indices into the 4 MODALITIES of the fusion network's inputs."""
        return modality_indices(self.fusion_inputs)

    @property
    def reads_text(self) -> bool:
        """Whether the fusion network is guided by the slices' texts (``fusion-text``)."""
        return bool(getattr(self.fusion, "reads_text", False))

    def fusion_sources(self, source: torch.Tensor) -> torch.Tensor:
        """(N, 4, *spatial) sources in MODALITIES order -> (N, C, *spatial) fusion inputs (slices or volumes)."""
        return source[:, self.fusion_channels]

    def encode_text(self, texts: Sequence[str | None] | None, device: torch.device | str) -> TextTokens | None:
        """The N ``texts`` encoded on ``device`` (:class:`TextTokens`; a None or empty text has no token), or None
        without a text encoder or any text."""
        if self.text_encoder is None or texts is None:
            return None
        texts = list(texts)
        present = [i for i, text in enumerate(texts) if text]
        if not present:
            return None
        tokens = self.text_encoder([texts[i] for i in present])
        if len(present) < len(texts):  # the texts without one keep no token (the fusion net's "no text" token)
            features = tokens.features.new_zeros((len(texts), *tokens.features.shape[1:]))
            mask = tokens.mask.new_zeros((len(texts), tokens.mask.shape[1]))
            features[present], mask[present] = tokens.features, tokens.mask
            tokens = TextTokens(features, mask)
        return TextTokens(tokens.features.to(device), tokens.mask.to(device))

    def run_fusion(self, fuse: Callable[..., torch.Tensor], source: torch.Tensor, text: TextTokens | None
                   ) -> torch.Tensor:
        """``fuse`` (the fusion net, or its functional form in a bi-level step) on the fusion inputs of (N, 4, *spatial)
        ``source``, with the encoded ``text`` when the network reads text -> (N, 1, *spatial)."""
        inputs = self.fusion_sources(source)
        if self.reads_text and text is not None:
            return fuse(inputs, text.features, text.mask)
        return fuse(inputs)

    def fuse(self, source: torch.Tensor, texts: Sequence[str | None] | None = None) -> torch.Tensor | None:
        """(N, 4, *spatial) sources in [0, 1] (and the N slices' texts, for a text-guided net; None: no text) ->
        (N, 1, *spatial) learned fused image, or None without a fusion net."""
        if self.fusion is None:
            return None
        text = self.encode_text(texts, source.device) if self.reads_text else None
        return self.run_fusion(self.fusion, source, text)

    def seg_input(self, source: torch.Tensor, stored_fused: torch.Tensor | None, fused: torch.Tensor | None
                  ) -> torch.Tensor:
        """The segmentation network's input (N, S, *spatial): learned fused, stored fused or chosen modalities."""
        if self.fusion is not None:
            assert fused is not None
            return fused
        if self.seg_inputs == ("fused",):
            if stored_fused is None:
                raise ConfigError("this data has no stored fused image to read; choose modalities", option="inputs")
            return stored_fused
        return source[:, modality_indices(self.seg_inputs)]

    def forward(self, source: torch.Tensor, stored_fused: torch.Tensor | None = None,
                texts: Sequence[str | None] | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(N, 4, *spatial) sources (and the slices' texts, read by a text-guided fusion net) -> (fused
        (N, 1, *spatial) or None, segmentation logits (N, K, *spatial))."""
        fused = self.fuse(source, texts)
        return fused, self.seg(self.seg_input(source, stored_fused, fused))

    def networks(self) -> dict[str, nn.Module]:
        """The networks by state-dict key: 'seg', and 'fusion', 'text', 'alignment', 'teacher' when present."""
        found = {"fusion": self.fusion, "seg": self.seg, "text": self.text_encoder, "alignment": self.alignment,
                 "teacher": self.teacher}
        return {key: module for key, module in found.items() if module is not None}

    def to(self, device: torch.device | str) -> Pipeline:
        """Move every network to ``device`` in place; returns self."""
        for module in self.networks().values():
            module.to(device)
        return self

    def train(self, mode: bool = True) -> Pipeline:
        """Set the trained networks' flag; returns self (the text encoder and alignment model stay frozen)."""
        if self.fusion is not None:
            self.fusion.train(mode)
        self.seg.train(mode)
        return self

    def state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """Plain state dicts by :meth:`networks` key ('fusion', 'text', 'alignment', 'teacher' only when present)."""
        return {key: module.state_dict() for key, module in self.networks().items()}

    def load_state_dicts(self, states: dict[str, dict[str, torch.Tensor]]) -> None:
        """Load state dicts saved by :meth:`state_dicts` (strict: the same networks, names and shapes)."""
        for key, module in self.networks().items():
            module.load_state_dict(states[key])


def num_outputs(config: TrainConfig) -> int:
    """Outputs of the second network (its variant's): 3 region sigmoids or presence logits, or 4 class logits."""
    return variant_of(config).num_outputs(config)


def _options(name: str, options: dict, fixed: dict) -> dict:
    """Merge user model options (option ``name``) with the ones the pipeline fixes; ConfigError if the user
    set those."""
    clash = sorted(set(options) & set(fixed))
    if clash:
        raise ConfigError(f"option {clash[0]!r} is set by the training mode, remove it", option=name)
    return {**options, **fixed}


def _build_segmenter(config: TrainConfig) -> nn.Module:
    """The second network of ``config`` (segmenter or classifier), its weights drawn from torch's global RNG."""
    from fuse4seg.models import build_model

    mode, variant = MODES[config.mode], variant_of(config)
    return build_model(
        variant.network_name(variant.second_network(config, mode)),
        **_options("seg_options", config.seg_options, {"in_channels": len(mode.seg_inputs(config)),
                                                        "num_classes": variant.num_outputs(config)}),
    )


def fresh_segmenter_weights(config: TrainConfig, seed: int) -> dict[str, torch.Tensor]:
    """Initial weights of the segmenter of ``config``, drawn from torch's RNG seeded ``seed`` (the global RNG is
    left as it was, so the run's other draws do not move)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build_segmenter(config).state_dict()


def build_pipeline(config: TrainConfig, seed: int | None = None) -> Pipeline:
    """Build the networks of ``config`` (their ``-3d`` variants with --dims 3) with initial weights drawn from
    ``seed`` (default config.seed)."""
    from fuse4seg.models import build_model

    mode, variant = MODES[config.mode], variant_of(config)
    # Built first: loading a pretrained text model may draw from torch's RNG, which seeds the networks next.
    text_encoder = build_text_encoder(config.text_encoder) if uses_text(config) else None
    torch.manual_seed(config.seed if seed is None else seed)
    fusion = None
    if mode.has_fusion:
        fixed = {"in_channels": len(config.fusion_inputs)}
        if text_encoder is not None and reads_text(config.fusion_model):
            fixed["text_dim"] = text_encoder.dim
        fusion = build_model(variant.network_name(config.fusion_model),
                             **_options("fusion_options", config.fusion_options, fixed))
    seg_inputs = mode.seg_inputs(config)
    seg = _build_segmenter(config)
    alignment = AlignmentModel(text_encoder.dim) if text_encoder is not None and config.semantic_weight > 0 else None
    teacher = copy.deepcopy(seg) if config.label_fraction < 1 else None
    for frozen in (text_encoder, alignment, teacher):
        if frozen is not None:
            frozen.train(False).requires_grad_(False)
    return Pipeline(fusion, seg, config.fusion_inputs, seg_inputs, config.region_based, text_encoder, alignment,
                    teacher, variant)
