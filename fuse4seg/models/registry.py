"""Model registry: a command line or config names a network and its options; build_model makes it."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fuse4seg.errors import ConfigError
from fuse4seg.models.feature_fusion import FeatureFusionSegmenter
from fuse4seg.models.fusion import FrequencyFusionNet, FusionCNN
from fuse4seg.models.unet import UNet

#: name -> constructor; each constructor's keyword arguments are that model's options.
MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "fusion-cnn": FusionCNN,
    "fusion-freq": FrequencyFusionNet,
    "unet": UNet,
    "feature-fusion": FeatureFusionSegmenter,
}


def list_models() -> list[str]:
    """Registered model names, in registry order (fusion networks first)."""
    return list(MODEL_REGISTRY)


def _constructor(name: str) -> Callable[..., nn.Module]:
    """The constructor registered as ``name``; ConfigError listing the known names otherwise."""
    try:
        return MODEL_REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown model {name!r}: expected one of {', '.join(MODEL_REGISTRY)}") from None


def model_options(name: str) -> dict[str, Any]:
    """Option names of model ``name`` with their default values."""
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
    """One row per registered model at default options: name, kind, options, parameters, output shapes.

    ``sizes``: square input sizes (pixels) at which to run one forward pass on a batch of one and
    record the output shape as "C x H x W".
    """
    rows = []
    for name in list_models():
        model = build_model(name).eval()
        row: dict[str, Any] = {
            "name": name,
            "kind": getattr(model, "kind", "?"),
            "options": model_options(name),
            "parameters": count_parameters(model),
        }
        for size in sizes:
            with torch.no_grad():
                out = model(torch.rand(1, model.in_channels, size, size))
            row[f"output@{size}"] = " x ".join(str(s) for s in out.shape[1:])
        rows.append(row)
    return rows


def format_model_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of :func:`model_summary` rows, one model per line."""
    shape_keys = [k for k in rows[0] if k.startswith("output@")] if rows else []
    header = ["model", "kind", "parameters", *shape_keys, "default options"]
    lines = [
        [
            r["name"],
            r["kind"],
            f"{r['parameters']:,}",
            *[r[k] for k in shape_keys],
            " ".join(f"{k}={v}" for k, v in r["options"].items()),
        ]
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*line).rstrip() for line in [header, *lines])
