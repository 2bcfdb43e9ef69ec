"""The trained pipeline: an optional fusion network feeding a segmentation network, built from a config.

The same object serves training (all modes), evaluation and inference, so the input channels a
network sees are chosen in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from fuse4seg.conventions import NUM_CLASSES, REGIONS, modality_indices
from fuse4seg.errors import ConfigError
from fuse4seg.train.modes import MODES

if TYPE_CHECKING:
    from fuse4seg.train.config import TrainConfig

#: Region-based training predicts WT, TC, ET sigmoids instead of 4-class softmax logits.
NUM_REGIONS = len(REGIONS)


@dataclass
class Pipeline:
    """Fusion network (None for direct/feature-fusion) and segmentation network, with input selection.

    ``fusion_inputs``: the modalities the fusion network fuses (and fusion metrics compare with);
    ``seg_inputs``: the segmenter's input channels, ``("fused",)`` (the learned fused image, or the
    stored one without a fusion network) or modality names; ``region_based``: the segmenter
    predicts WT/TC/ET sigmoids instead of 4-class logits.
    """

    fusion: nn.Module | None
    seg: nn.Module
    fusion_inputs: tuple[str, ...]
    seg_inputs: tuple[str, ...] = ("fused",)
    region_based: bool = False

    @property
    def fusion_channels(self) -> list[int]:
        """Indices into the 4 MODALITIES of the fusion network's inputs."""
        return modality_indices(self.fusion_inputs)

    def fusion_sources(self, source: torch.Tensor) -> torch.Tensor:
        """(N, 4, *spatial) sources in MODALITIES order -> (N, C, *spatial) fusion inputs (slices or volumes)."""
        return source[:, self.fusion_channels]

    def fuse(self, source: torch.Tensor) -> torch.Tensor | None:
        """(N, 4, *spatial) sources in [0, 1] -> (N, 1, *spatial) learned fused image, or None without a fusion net."""
        if self.fusion is None:
            return None
        return self.fusion(self.fusion_sources(source))

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

    def forward(self, source: torch.Tensor, stored_fused: torch.Tensor | None = None
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(N, 4, *spatial) sources -> (fused (N, 1, *spatial) or None, segmentation logits (N, K, *spatial))."""
        fused = self.fuse(source)
        return fused, self.seg(self.seg_input(source, stored_fused, fused))

    def to(self, device: torch.device | str) -> Pipeline:
        """Move both networks to ``device`` in place; returns self."""
        if self.fusion is not None:
            self.fusion.to(device)
        self.seg.to(device)
        return self

    def train(self, mode: bool = True) -> Pipeline:
        """Set both networks' training flag; returns self."""
        if self.fusion is not None:
            self.fusion.train(mode)
        self.seg.train(mode)
        return self

    def state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """Plain state dicts {'fusion': ..., 'seg': ...} (fusion omitted when there is none)."""
        out = {"seg": self.seg.state_dict()}
        if self.fusion is not None:
            out["fusion"] = self.fusion.state_dict()
        return out

    def load_state_dicts(self, states: dict[str, dict[str, torch.Tensor]]) -> None:
        """Load state dicts saved by :meth:`state_dicts` (strict: names and shapes must match)."""
        self.seg.load_state_dict(states["seg"])
        if self.fusion is not None:
            self.fusion.load_state_dict(states["fusion"])


def num_outputs(config: TrainConfig) -> int:
    """Output channels of the segmentation network: 3 region sigmoids or 4 class logits."""
    return NUM_REGIONS if config.region_based else NUM_CLASSES


def _options(name: str, options: dict, fixed: dict) -> dict:
    """Merge user model options (option ``name``) with the ones the pipeline fixes; ConfigError if the user
    set those."""
    clash = sorted(set(options) & set(fixed))
    if clash:
        raise ConfigError(f"option {clash[0]!r} is set by the training mode, remove it", option=name)
    return {**options, **fixed}


def network_name(name: str, dims: int) -> str:
    """The registry name of network ``name`` (a 2-D name, as --fusion-model/--seg-model give it) for ``dims``-D
    inputs: itself, or its ``-3d`` variant (fuse4seg.models.registry registers one per 2-D network)."""
    return name if dims == 2 else f"{name}-3d"


def build_pipeline(config: TrainConfig, seed: int | None = None) -> Pipeline:
    """Build the networks of ``config`` (their ``-3d`` variants with --dims 3) with initial weights drawn from
    ``seed`` (default config.seed)."""
    from fuse4seg.models import build_model

    mode = MODES[config.mode]
    torch.manual_seed(config.seed if seed is None else seed)
    fusion = None
    if mode.has_fusion:
        fusion = build_model(
            network_name(config.fusion_model, config.dims),
            **_options("fusion_options", config.fusion_options, {"in_channels": len(config.fusion_inputs)}),
        )
    seg_inputs = mode.seg_inputs(config)
    seg = build_model(
        network_name(mode.seg_model or config.seg_model, config.dims),
        **_options("seg_options", config.seg_options, {"in_channels": len(seg_inputs),
                                                        "num_classes": num_outputs(config)}),
    )
    return Pipeline(fusion, seg, config.fusion_inputs, seg_inputs, config.region_based)
