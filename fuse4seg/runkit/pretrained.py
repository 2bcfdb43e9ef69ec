"""A pre-trained encoder (PRE/encoder.pt of ``fuse4seg pretrain``), copied into the networks that have one.

It lives in the run kit because pretrain writes the file and train reads it: neither imports the other.

What gets it: every 1-channel UNet encoder inside the model, i.e. ``UNet(in_channels=1).encoder`` (the
segmenter of a fused image, 2-D or 3-D) and each ``encoders[i]`` (one per modality) of a
``FeatureFusionSegmenter`` or of the ``MultimodalClassifier`` of ``--task classify``;
the model itself or any module inside it (a training pipeline holding a fusion net and a segmenter).
What does not: the fusion networks (``FusionCNN``, ``FrequencyFusionNet``) have no UNet encoder, and their first
convolution reads all modalities at once; copying a 1-channel filter into it (split or repeated over the
inputs) would be a guess, not the pre-trained function, so they are left as they are. A UNet with more than one
input channel is refused for the same reason.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from torch import nn

from fuse4seg.errors import ConfigError
from fuse4seg.io import one_line

#: ``meta["kind"]`` of PRE/encoder.pt: what :func:`load_pretrained_encoder` accepts.
ENCODER_KIND = "pretrain-encoder"


def read_pretrained_encoder(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, meta) of a PRE/encoder.pt, loaded with weights_only=True; ConfigError naming the file when
    it is missing or not a pretrain encoder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found (write one with `fuse4seg pretrain`)", option="init")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a pretrain encoder ({one_line(exc)[:160]})", option="init") from None
    meta = payload.get("meta") if isinstance(payload, dict) else None
    tensors = payload.get("encoder") if isinstance(payload, dict) else None
    if (not isinstance(meta, dict) or meta.get("kind") != ENCODER_KIND or not isinstance(tensors, dict)
            or not all(isinstance(v, torch.Tensor) for v in tensors.values())):
        raise ConfigError(f"{path} is not a pretrain encoder (written by `fuse4seg pretrain` as PRE/encoder.pt)",
                          option="init")
    return tensors, meta


def encoder_facts(encoder: nn.ModuleList) -> dict[str, object]:
    """width, depth, norm, dims and in_channels of a UNet encoder (a ModuleList of DoubleConv stages)."""
    conv, norm = encoder[0][0][0], encoder[0][0][1]
    kind = "group" if isinstance(norm, nn.GroupNorm) else "instance" if "InstanceNorm" in type(norm).__name__ \
        else "none"
    return {"width": conv.out_channels, "depth": len(encoder) - 1, "norm": kind, "dims": conv.weight.dim() - 2,
            "in_channels": conv.in_channels}


def _describe(facts: dict[str, object]) -> str:
    """'width 16, depth 4, norm group, 2-D, 1 input channel(s)'."""
    return (f"width {facts.get('width')}, depth {facts.get('depth')}, norm {facts.get('norm')}, {facts.get('dims')}-D, "
            f"{facts.get('in_channels')} input channel(s)")


def encoder_slots(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """(qualified name, encoder) of every UNet-style encoder inside ``model`` (itself included): ``encoder`` of a
    UNet, ``encoders.i`` of a FeatureFusionSegmenter or a MultimodalClassifier; fusion networks have none."""
    from fuse4seg.models.classifier import MultimodalClassifier
    from fuse4seg.models.feature_fusion import FeatureFusionSegmenter
    from fuse4seg.models.unet import UNet

    slots = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, UNet):
            slots.append((f"{prefix}encoder", module.encoder))
        elif isinstance(module, (FeatureFusionSegmenter, MultimodalClassifier)):
            slots += [(f"{prefix}encoders.{i}", enc) for i, enc in enumerate(module.encoders)]
    return slots


def load_pretrained_encoder(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Copy PRE/encoder.pt into every UNet encoder of ``model`` (see the module docstring); returns the names of
    the modules initialised ([] for a model without one, e.g. a fusion network). ConfigError (one line) when
    the file is not a pretrain encoder or an encoder's width, depth, norm, dims or input channels differ; then
    nothing is copied."""
    tensors, meta = read_pretrained_encoder(path)
    slots = encoder_slots(model)
    for name, encoder in slots:
        facts = encoder_facts(encoder)
        wanted = {k: meta.get(k) for k in facts}
        shapes_fit = set(encoder.state_dict()) == set(tensors) and all(
            v.shape == tensors[k].shape for k, v in encoder.state_dict().items())
        if facts != wanted or not shapes_fit:
            raise ConfigError(f"{path} holds an encoder of {_describe(wanted)}, but {name} has {_describe(facts)}; "
                              "pre-train with the segmenter's --width/--depth/--norm", option="init")
    for _, encoder in slots:
        with torch.no_grad():
            encoder.load_state_dict(tensors)
    return [name for name, _ in slots]
