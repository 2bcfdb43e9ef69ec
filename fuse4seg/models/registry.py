"""Model registry: a command line or config names a network and its options; build_model makes it.

3-D networks are the 2-D classes with their keyword-only ``dims`` fixed to 3 (``functools.partial``),
registered under the 2-D name plus ``-3d``; ``dims`` is therefore part of the name, not an option.

Three ways in, all ending in :data:`MODEL_REGISTRY`:

- built in: the networks of :mod:`fuse4seg.models` (never replaced);
- from Python: :func:`register_model` (``fuse4seg.register_model``), in the process that trains;
- from an installed package: an entry point of the group ``fuse4seg.models`` (:data:`ENTRY_POINT_GROUP`) whose
  name is the model name and whose object (``module:attr``) is the constructor, e.g. in ``setup.cfg``::

      [options.entry_points]
      fuse4seg.models =
          my-fusion = my_package.nets:MyFusion

  It is imported on first use of a name that is not registered, and by :func:`list_models` (``fuse4seg
  models``), so ``fuse4seg train --fusion-model my-fusion`` works once the package is installed; a plug-in
  that fails to import is a one-line ConfigError naming it.

A constructor's positional-or-keyword arguments are the model's options and each needs a default; the
training loop sets ``in_channels`` (and ``num_classes`` for a segmenter) itself. A fusion network maps
(N, in_channels, H, W) sources in [0, 1] to an (N, 1, H, W) image in [0, 1]; a segmenter maps
(N, in_channels, H, W) to (N, num_classes, H, W) logits. A keyword-only ``dims`` default of 3 marks a 3-D
network (its name should then end in ``-3d``). Avoid BatchNorm: the bi-level engine unrolls the follower
functionally.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from importlib import metadata
from typing import Any, overload

import torch
from torch import nn

from fuse4seg.errors import ConfigError
from fuse4seg.io import one_line
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
#: The names above: they cannot be replaced or removed.
BUILT_IN_MODELS: frozenset[str] = frozenset(MODEL_REGISTRY)
#: Entry-point group of plug-in networks: name = model name, object = its constructor.
ENTRY_POINT_GROUP = "fuse4seg.models"
# A forward pass of the default unet-3d on a 240^3 cube takes minutes and gigabytes on a CPU, so
# model_summary runs 3-D models only on cubes up to this edge (voxels).
SUMMARY_MAX_EDGE_3D = 32


ModelConstructor = Callable[..., nn.Module]


def _check_constructor(name: str, constructor: Any) -> None:
    """ConfigError unless ``name`` is a usable model name and ``constructor`` a callable whose options (its
    positional-or-keyword arguments) all have defaults."""
    if not isinstance(name, str) or not name or name != name.strip() or any(c.isspace() or c in "=,[]" for c in name):
        raise ConfigError(f"model name must be a non-empty word without spaces, '=', ',' or brackets, got {name!r}")
    if not callable(constructor):
        raise ConfigError(f"model {name!r}: the constructor must be callable (a class or function), got "
                          f"{type(constructor).__name__}")
    try:
        params = inspect.signature(constructor).parameters
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {name!r}: cannot read the constructor's options ({one_line(exc)})") from None
    for key, p in params.items():
        if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.default is inspect.Parameter.empty:
            raise ConfigError(f"model {name!r}: option {key!r} has no default; every option of a model needs one")


@overload
def register_model(name: str, constructor: None = None, *, replace: bool = False
                   ) -> Callable[[ModelConstructor], ModelConstructor]: ...
@overload
def register_model(name: str, constructor: ModelConstructor, *, replace: bool = False) -> ModelConstructor: ...
def register_model(name: str, constructor: ModelConstructor | None = None, *, replace: bool = False) -> Any:
    """Register ``constructor`` (an ``nn.Module`` class or factory) as model ``name``; returns it, so it also works
    as a decorator: ``@register_model("my-fusion")``.

    The constructor's positional-or-keyword arguments become the model's options (``fusion_options`` /
    ``seg_options`` in a config), each with a default; the training loop passes ``in_channels`` (and
    ``num_classes`` to a segmenter). Once registered, the name works everywhere a built-in one does in this
    process: ``TrainConfig(fusion_model=name)``, :func:`build_model`, evaluation of a run trained with it.
    ConfigError for a bad name or constructor, a built-in name, or a name already registered without
    ``replace=True``. To make a network available to the command line, publish it as an entry point of
    :data:`ENTRY_POINT_GROUP` instead (see the module docstring).
    """
    if constructor is None:
        return lambda c: register_model(name, c, replace=replace)
    _check_constructor(name, constructor)
    if name in BUILT_IN_MODELS:
        raise ConfigError(f"model {name!r} is built in and cannot be replaced; choose another name")
    if name in MODEL_REGISTRY and not replace and MODEL_REGISTRY[name] is not constructor:
        raise ConfigError(f"model {name!r} is already registered (pass replace=True to replace it)")
    MODEL_REGISTRY[name] = constructor
    return constructor


def unregister_model(name: str) -> None:
    """Remove model ``name`` registered by :func:`register_model` (or loaded from a plug-in); ConfigError for a
    built-in or unknown name."""
    if name in BUILT_IN_MODELS:
        raise ConfigError(f"model {name!r} is built in and cannot be removed")
    if MODEL_REGISTRY.pop(name, None) is None:
        raise ConfigError(f"model {name!r} is not registered")


def plugin_entry_points() -> dict[str, metadata.EntryPoint]:
    """The installed entry points of :data:`ENTRY_POINT_GROUP` by name (the first one per name), without loading
    them; names of built-in models are ignored (a plug-in cannot shadow one)."""
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in BUILT_IN_MODELS:
            found.setdefault(ep.name, ep)
    return found


def _load_plugin(ep: metadata.EntryPoint) -> ModelConstructor:
    """Import plug-in ``ep`` and register its object; a one-line ConfigError naming the plug-in if that fails."""
    dist = getattr(getattr(ep, "dist", None), "name", None)
    origin = f"plug-in model {ep.name!r} ({ENTRY_POINT_GROUP} entry point {ep.value}" + (
        f" of {dist})" if dist else ")")
    try:
        constructor = ep.load()
    except Exception as exc:  # noqa: BLE001 - any import-time failure of third-party code becomes one line
        raise ConfigError(f"{origin} failed to load: {type(exc).__name__}: {one_line(exc)}") from None
    try:
        _check_constructor(ep.name, constructor)
    except ConfigError as exc:
        raise ConfigError(f"{origin} is unusable: {exc.message}") from None
    MODEL_REGISTRY[ep.name] = constructor
    return constructor


def load_plugins() -> list[str]:
    """Load every installed plug-in model not yet registered; returns the names loaded. ConfigError (one line,
    naming it) at the first plug-in that fails to load."""
    return [ep.name for ep in plugin_entry_points().values()
            if ep.name not in MODEL_REGISTRY and _load_plugin(ep) is not None]


def model_dims(name: str) -> int:
    """Spatial dimensions (2 or 3) of the inputs model ``name`` takes: its keyword-only ``dims`` (2 without one)."""
    dims = inspect.signature(_constructor(name)).parameters.get("dims")
    return 2 if dims is None else int(dims.default)


def list_models(dims: int | None = None, plugins: bool = True) -> list[str]:
    """Registered model names in registry order (2-D first; fusion networks before segmenters; then those
    registered from Python or by plug-ins), all of them or those taking ``dims``-dimensional inputs (2 or 3).

    ``plugins``: first load the installed plug-ins (:func:`load_plugins`; ConfigError naming a broken one).
    """
    if dims is not None:
        check_dims(dims)
    if plugins:
        load_plugins()
    return [name for name in MODEL_REGISTRY if dims is None or model_dims(name) == dims]


def _constructor(name: str) -> ModelConstructor:
    """The constructor registered as ``name``, loading the installed plug-in of that name on first use;
    ConfigError listing the known names otherwise (or naming a plug-in that fails to load)."""
    if isinstance(name, str) and name in MODEL_REGISTRY:
        return MODEL_REGISTRY[name]
    ep = plugin_entry_points().get(name) if isinstance(name, str) else None
    if ep is not None:
        return _load_plugin(ep)
    known = [*MODEL_REGISTRY, *(n for n in plugin_entry_points() if n not in MODEL_REGISTRY)]
    raise ConfigError(f"unknown model {name!r}: expected one of {', '.join(known)}")


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
    return _constructor(name)(**options)


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
                channels = getattr(model, "in_channels", row["options"].get("in_channels", 1))
                out = model(torch.rand(1, channels, *(size,) * dims))
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
