"""Model registry: a command line or config names a network and its options; build_model makes it.

3-D networks are the 2-D classes with their keyword-only ``dims`` fixed to 3 (``functools.partial``),
registered under the 2-D name plus ``-3d``; ``dims`` is therefore part of the name, not an option.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from fuse4seg.errors import ConfigError
from fuse4seg.models.blocks import check_dims
from fuse4seg.models.classifier import MultimodalClassifier
from fuse4seg.models.feature_fusion import FeatureFusionSegmenter
from fuse4seg.models.fusion import FrequencyFusionNet, FusionCNN
from fuse4seg.models.text_fusion import TextGuidedFusion
from fuse4seg.models.unet import UNet

_MODELS_2D: dict[str, Callable[..., nn.Module]] = {
    "fusion-cnn": FusionCNN,
    "fusion-freq": FrequencyFusionNet,
    "unet": UNet,
    "feature-fusion": FeatureFusionSegmenter,
}
#: name -> constructor; each constructor's positional-or-keyword arguments are that model's options.
MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "fusion-cnn": FusionCNN,
    "fusion-freq": FrequencyFusionNet,
    # Texts describe axial slices, so the text-guided network has no 3-D variant.
    "fusion-text": TextGuidedFusion,
    "unet": UNet,
    "feature-fusion": FeatureFusionSegmenter,
    # --task classify: presence is a property of a slice, so no 3-D variant either.
    "classifier": MultimodalClassifier,
    **{f"{name}-3d": partial(cls, dims=3) for name, cls in _MODELS_2D.items()},
}
# A forward pass of the default unet-3d on a 240^3 cube takes minutes and gigabytes on a CPU, so
# model_summary runs 3-D models only on cubes up to this edge (voxels).
SUMMARY_MAX_EDGE_3D = 32


def model_dims(name: str) -> int:
    """Spatial dimensions (2 or 3) of the inputs model ``name`` takes: its keyword-only ``dims`` (2 without one)."""
    dims = inspect.signature(_constructor(name)).parameters.get("dims")
    return 2 if dims is None else int(dims.default)


def list_models(dims: int | None = None) -> list[str]:
    """Registered model names in registry order (2-D first; fusion networks before segmenters), all of them
    or those taking ``dims``-dimensional inputs (2 or 3)."""
    if dims is not None:
        check_dims(dims)
    return [name for name in MODEL_REGISTRY if dims is None or model_dims(name) == dims]


def _constructor(name: str) -> Callable[..., nn.Module]:
    """The constructor registered as ``name``; ConfigError listing the known names otherwise."""
    try:
        return MODEL_REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown model {name!r}: expected one of {', '.join(MODEL_REGISTRY)}") from None


def model_options(name: str) -> dict[str, Any]:
    """Option names of model ``name`` with their default values (``dims`` is fixed by the name, not listed)."""
    params = inspect.signature(_constructor(name)).parameters
    return {k: p.default for k, p in params.items() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD}


def build_model(name: str, **options: Any) -> nn.Module:
    """Instantiate model ``name`` with ``options``; ConfigError for unknown names, options or values."""
    known = model_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown option {unknown[0]!r} for model {name!r}: expected some of {', '.join(known)}"
        )
    return MODEL_REGISTRY[name](**options)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalar parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_summary(sizes: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """One row per registered model at default options: name, kind, dims, options, parameters, output shapes.

    ``sizes``: edge lengths (pixels/voxels) of the square (2-D models) or cubic (3-D models) inputs on
    which to run one forward pass on a batch of one and record the output shape as "C x H x W" or
    "C x D x H x W"; "-" for 3-D models above :data:`SUMMARY_MAX_EDGE_3D`.
    """
    rows = []
    for name in list_models():
        model = build_model(name).eval()
        dims = model_dims(name)
        row: dict[str, Any] = {
            "name": name,
            "kind": getattr(model, "kind", "?"),
            "dims": dims,
            "options": model_options(name),
            "parameters": count_parameters(model),
        }
        for size in sizes:
            if dims == 3 and size > SUMMARY_MAX_EDGE_3D:
                row[f"output@{size}"] = "-"
                continue
            with torch.no_grad():
                out = model(torch.rand(1, model.in_channels, *(size,) * dims))
            row[f"output@{size}"] = " x ".join(str(s) for s in out.shape[1:])
        rows.append(row)
    return rows


def format_model_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of :func:`model_summary` rows, one model per line."""
    shape_keys = [k for k in rows[0] if k.startswith("output@")] if rows else []
    header = ["model", "kind", "dims", "parameters", *shape_keys, "default options"]
    lines = [
        [
            r["name"],
            r["kind"],
            f"{r['dims']}-D",
            f"{r['parameters']:,}",
            *[r[k] for k in shape_keys],
            " ".join(f"{k}={v}" for k, v in r["options"].items()),
        ]
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*line).rstrip() for line in [header, *lines])
