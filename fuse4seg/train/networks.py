"""The trained pipeline: an optional fusion network feeding a segmentation network, built from a config.

The same object serves training (all modes), evaluation and inference, so the input channels a
network sees are chosen in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fuse4seg.conventions import NUM_CLASSES, REGIONS, modality_indices
from fuse4seg.errors import ConfigError
from fuse4seg.train.config import FUSION_MODES, TrainConfig

#: Region-based training predicts WT, TC, ET sigmoids instead of 4-class softmax logits.
NUM_REGIONS = len(REGIONS)


@dataclass
class Pipeline:
    """Fusion network (None for direct/feature-fusion) and segmentation network, with input selection."""

    config: TrainConfig
    fusion: nn.Module | None
    seg: nn.Module

    @property
    def fusion_channels(self) -> list[int]:
        """Indices into the 4 MODALITIES of the fusion network's inputs."""
        return modality_indices(self.config.fusion_inputs)

    def fusion_sources(self, source: torch.Tensor) -> torch.Tensor:
        """(N, 4, H, W) sources in MODALITIES order -> (N, C, H, W) fusion inputs."""
        return source[:, self.fusion_channels]

    def fuse(self, source: torch.Tensor) -> torch.Tensor | None:
        """(N, 4, H, W) sources in [0, 1] -> (N, 1, H, W) learned fused image, or None without a fusion net."""
        if self.fusion is None:
            return None
        return self.fusion(self.fusion_sources(source))

    def seg_input(self, source: torch.Tensor, stored_fused: torch.Tensor | None, fused: torch.Tensor | None
                  ) -> torch.Tensor:
        """The segmentation network's input (N, S, H, W): learned fused, stored fused or chosen modalities."""
        inputs = self.config.seg_inputs()
        if self.config.mode in FUSION_MODES:
            assert fused is not None
            return fused
        if inputs == ("fused",):
            if stored_fused is None:
                raise ConfigError("--inputs fused: this data has no stored fused image; choose modalities")
            return stored_fused
        return source[:, modality_indices(inputs)]

    def forward(self, source: torch.Tensor, stored_fused: torch.Tensor | None = None
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(N, 4, H, W) sources -> (fused (N, 1, H, W) or None, segmentation logits (N, K, H, W))."""
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
    """Merge user model options with the ones the pipeline fixes; ConfigError if the user set those."""
    clash = sorted(set(options) & set(fixed))
    if clash:
        raise ConfigError(f"{name}: option {clash[0]!r} is set by the training mode, remove it")
    return {**options, **fixed}


def build_pipeline(config: TrainConfig, seed: int | None = None) -> Pipeline:
    """Build the networks of ``config`` with initial weights drawn from ``seed`` (default config.seed)."""
    from fuse4seg.models import build_model

    torch.manual_seed(config.seed if seed is None else seed)
    fusion = None
    if config.mode in FUSION_MODES:
        fusion = build_model(
            config.fusion_model,
            **_options("--fusion-options", config.fusion_options, {"in_channels": len(config.fusion_inputs)}),
        )
        seg_in = 1
    else:
        seg_in = len(config.seg_inputs())
    seg_name = "feature-fusion" if config.mode == "feature-fusion" else config.seg_model
    seg = build_model(
        seg_name,
        **_options("--seg-options", config.seg_options, {"in_channels": seg_in, "num_classes": num_outputs(config)}),
    )
    return Pipeline(config, fusion, seg)
