"""Training augmentation and input degradation: the specs of ``--augment`` and ``--degrade-inputs``.

Transforms are albumentations pipelines called as ``t(image=(H, W, C) float32 in [0, 1], mask=(H, W) uint8)``
(the channels: the MR modalities, perhaps a fused image). Spatial transforms move image and mask together
(image bilinear, mask nearest, outside filled with 0); intensity transforms touch the image only.

``--augment`` (:func:`augmentation`): ``none``, ``light``, ``strong`` or an albumentations file.

- **light**: ``VerticalFlip`` p=0.5 (the left-right mirror, see below); ``Affine`` p=0.5 (rotation
  +-10 deg, scale 0.9-1.1, translation +-5 % of the size); :class:`ChannelIntensity` p=0.5 (per channel:
  gain 0.9-1.1, gamma 0.9-1.1).
- **strong**: ``VerticalFlip`` p=0.5; ``Affine`` p=0.7 (rotation +-15 deg, scale 0.85-1.15, translation
  +-8 %, shear +-5 deg); ``ElasticTransform`` p=0.25 (alpha 60, sigma 6 px: displacements of about 1 px,
  up to 2-3 px); :class:`ChannelIntensity` p=0.7 (gain 0.8-1.2, gamma 0.7-1.4); then every MR
  degradation of :mod:`fuse4seg.data.augment.degradations` with p=0.05 each, its strength drawn over the whole
  range, in :data:`~fuse4seg.data.augment.severity.ACQUISITION_ORDER` (one or more in 34 % of the calls).

Left-right mirrors only (the brain is nearly symmetric; an anterior-posterior flip makes no real scan).
The benchmark's slices are ``volume[:, :, z]`` of the NIfTI voxel array, so rows run along the scanner's
x (left-right) axis and columns along y (anterior-posterior): the left-right mirror reverses the rows,
which is albumentations' ``VerticalFlip``; ``HorizontalFlip`` would swap front and back.

``--degrade-inputs`` (:func:`input_degradation`): degradations of the network *inputs* only (the losses
keep the clean images), so only image-only transforms are allowed. ``none``; a comma list of degradation
names and group names (``noise,blur,kspace``: a group stands for its members, so ``noise`` is Gaussian and
Rician), each applied with p=0.5 over its whole range; ``light`` (every degradation with p=0.1, up to half
its largest strength: 43 % of inputs stay clean); ``strong`` (every degradation, p=0.25, whole range: 10 %
stay clean); or an albumentations file. Composed degradations apply in acquisition order.

Files (``.yaml``, ``.yml``, ``.json``) are what ``A.save`` writes. They are parsed with ``json`` or
``yaml.safe_load`` (no Python objects) and every ``__class_fullname__`` must name a transform of
albumentations or fuse4seg before anything is built. ``A.from_dict`` itself only instantiates classes
in albumentations' registry of imported transform classes, with the file's values as keyword arguments
(``Lambda`` needs code passed in and is refused); we narrow that to the two packages, require each
transform's ``p``, and treat albumentations' warnings (unknown arguments, fallbacks to defaults) as errors.
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import yaml
from albumentations.core.serialization import SERIALIZABLE_REGISTRY, serialize_enum, shorten_class_name
from albumentations.core.transforms_interface import BaseTransformInitSchema

from fuse4seg.data.augment.degradations import bounded_range
from fuse4seg.data.augment.severity import ACQUISITION_ORDER, DEGRADATIONS, GROUPS, random_degradation
from fuse4seg.errors import ConfigError
from fuse4seg.io import one_line
from fuse4seg.user_files import read_user_file

#: Largest augmentation file read, in bytes.
MAX_SPEC_BYTES = 1 << 20
#: Most transforms (and nesting levels) a file may declare.
MAX_SPEC_TRANSFORMS, MAX_SPEC_DEPTH = 1000, 16
#: Packages whose transforms a file may name.
SPEC_PACKAGES = ("albumentations", "fuse4seg")
#: Modules that held fuse4seg's transforms before data/ was split into sub-packages, and where they are now:
#: files saved then name the old module in their ``__class_fullname__`` and must keep loading.
MOVED_MODULES: dict[str, str] = {"fuse4seg.data.degradations": "fuse4seg.data.augment.degradations",
                                 "fuse4seg.data.augment": "fuse4seg.data.augment.specs"}
#: Spatial transforms' settings shared by the presets: image bilinear, mask nearest, 0 outside.
_SPATIAL = {"interpolation": cv2.INTER_LINEAR, "mask_interpolation": cv2.INTER_NEAREST,
            "border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": 0}


class ChannelIntensity(A.ImageOnlyTransform):
    """Per-channel brightness and contrast: x -> s m (x / m)^gamma, m the channel max, s from ``scale_range``
    and gamma from ``gamma_range`` drawn for each channel, clipped to [0, 1]. A gain and a gamma keep the
    zero background at zero (an additive brightness would not)."""

    class InitSchema(BaseTransformInitSchema):
        scale_range: bounded_range(0.0)
        gamma_range: bounded_range(1e-3)

    def __init__(self, scale_range: tuple[float, float] = (0.9, 1.1), gamma_range: tuple[float, float] = (0.9, 1.1),
                 p: float = 0.5) -> None:
        """``scale_range``: gain s; ``gamma_range``: exponent on the max-normalised channel."""
        super().__init__(p=p)
        self.scale_range = scale_range
        self.gamma_range = gamma_range

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """{"scale": (C,), "gamma": (C,)} for an image of params["shape"]."""
        shape = params["shape"]
        channels = shape[2] if len(shape) == 3 else 1
        return {"scale": self.random_generator.uniform(*self.scale_range, channels),
                "gamma": self.random_generator.uniform(*self.gamma_range, channels)}

    def apply(self, img: np.ndarray, scale: np.ndarray, gamma: np.ndarray, **params: Any) -> np.ndarray:
        """(H, W) or (H, W, C) float image -> float32 of the same shape."""
        hwc = np.atleast_3d(img).astype(np.float64)
        peak = hwc.max(axis=(0, 1))
        safe = np.where(peak > 0, peak, 1.0)  # an all-zero channel stays zero
        out = scale * peak * (hwc / safe) ** gamma
        return np.clip(out, 0.0, 1.0).reshape(img.shape).astype(np.float32)


def _degradations(names: tuple[str, ...] | list[str], p: float, max_level: float = 1.0) -> list[A.BasicTransform]:
    """random_degradation of each name, in acquisition order."""
    return [random_degradation(name, p, max_level) for name in ACQUISITION_ORDER if name in names]


def light_augmentation() -> A.Compose:
    """The ``light`` preset (see the module docstring)."""
    return A.Compose([
        A.VerticalFlip(p=0.5),  # left-right: rows are the x axis (module docstring)
        A.Affine(rotate=(-10, 10), scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), p=0.5, **_SPATIAL),
        ChannelIntensity(scale_range=(0.9, 1.1), gamma_range=(0.9, 1.1), p=0.5),
    ])


def strong_augmentation() -> A.Compose:
    """The ``strong`` preset (see the module docstring)."""
    return A.Compose([
        A.VerticalFlip(p=0.5),
        A.Affine(rotate=(-15, 15), scale=(0.85, 1.15), translate_percent=(-0.08, 0.08), shear=(-5, 5), p=0.7,
                 **_SPATIAL),
        A.ElasticTransform(alpha=60, sigma=6, p=0.25, **_SPATIAL),
        ChannelIntensity(scale_range=(0.8, 1.2), gamma_range=(0.7, 1.4), p=0.7),
        *_degradations(DEGRADATIONS, p=0.05),
    ])


def light_degradation() -> A.Compose:
    """The ``light`` --degrade-inputs preset: every degradation with p=0.1, up to half its largest strength."""
    return A.Compose(_degradations(DEGRADATIONS, p=0.1, max_level=0.5))


def strong_degradation() -> A.Compose:
    """The ``strong`` --degrade-inputs preset: every degradation with p=0.25 over its whole range."""
    return A.Compose(_degradations(DEGRADATIONS, p=0.25))


#: ``--augment`` presets by name (each call builds a fresh pipeline).
PRESETS: dict[str, Callable[[], A.Compose]] = {"light": light_augmentation, "strong": strong_augmentation}
#: ``--degrade-inputs`` presets by name.
DEGRADATION_PRESETS: dict[str, Callable[[], A.Compose]] = {"light": light_degradation,
                                                           "strong": strong_degradation}


def _is_file_spec(spec: str) -> bool:
    """Whether a spec names an albumentations file (by its suffix)."""
    return Path(spec).suffix.lower() in (".yaml", ".yml", ".json")


def current_class_name(name: str) -> str:
    """A serialised ``__class_fullname__`` with a module of :data:`MOVED_MODULES` replaced by its new path."""
    module, dot, cls = name.rpartition(".")
    return f"{MOVED_MODULES[module]}{dot}{cls}" if module in MOVED_MODULES else name


def _check_node(node: Any, where: str, option: str, depth: int, seen: list[int]) -> None:
    """Refuse a serialised transform (and its children) that is not a known albumentations/fuse4seg
    transform with a ``p``; ``seen`` counts the transforms visited (YAML aliases can repeat a subtree). A class
    named by its module before the move is renamed in ``node`` so that ``A.from_dict`` finds it."""
    seen[0] += 1
    if depth > MAX_SPEC_DEPTH or seen[0] > MAX_SPEC_TRANSFORMS:
        raise ConfigError(f"{where}: more than {MAX_SPEC_TRANSFORMS} transforms or {MAX_SPEC_DEPTH} levels",
                          option=option)
    name = node.get("__class_fullname__") if isinstance(node, dict) else None
    if not isinstance(name, str):
        raise ConfigError(f"{where}: every transform must be a mapping with a __class_fullname__", option=option)
    current = current_class_name(name)
    if current != name:
        node["__class_fullname__"] = current
    cls = SERIALIZABLE_REGISTRY.get(shorten_class_name(current))
    if cls is None or cls.__module__.split(".")[0] not in SPEC_PACKAGES:
        raise ConfigError(f"{where}: unknown transform {name!r} (only albumentations' and fuse4seg's)",
                          option=option)
    if issubclass(cls, A.BasicTransform) and "p" not in node:
        raise ConfigError(f"{where}: transform {name} has no 'p' (its probability)", option=option)
    children = node.get("transforms")
    if children is not None:
        if not isinstance(children, list):
            raise ConfigError(f"{where}: 'transforms' of {name} must be a list", option=option)
        for child in children:
            _check_node(child, where, option, depth + 1, seen)


def _leaves(transform: A.BasicTransform | A.BaseCompose) -> Iterator[A.BasicTransform]:
    """The transforms (not compositions) inside ``transform``, depth first."""
    if isinstance(transform, A.BaseCompose):
        for child in transform.transforms:
            yield from _leaves(child)
    else:
        yield transform


def load_spec(path: str, option: str) -> A.BaseCompose:
    """The pipeline of an ``A.save`` file (.yaml/.yml/.json) as a composition (a single transform is
    wrapped in ``A.Compose``); a one-line ConfigError naming ``option`` for anything wrong with it."""
    try:
        text = read_user_file(path, MAX_SPEC_BYTES, option=option, what="augmentation file").decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text", option=option) from None
    is_json = Path(path).suffix.lower() == ".json"
    try:
        data = json.loads(text) if is_json else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:  # json.JSONDecodeError is a ValueError
        raise ConfigError(f"{path}: not valid {'JSON' if is_json else 'YAML'} ({one_line(exc)})",
                          option=option) from None
    if not isinstance(data, dict) or not isinstance(data.get("transform"), dict):
        raise ConfigError(f"{path}: expected A.save's layout, a mapping with a 'transform' mapping", option=option)
    _check_node(data["transform"], path, option, 0, [0])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # albumentations warns, then falls back to defaults, on bad arguments
            transform = A.from_dict(data)
    except Exception as exc:  # noqa: BLE001 - the file's values reach arbitrary transform constructors
        raise ConfigError(f"{path}: {one_line(exc)}", option=option) from None
    return transform if isinstance(transform, A.BaseCompose) else A.Compose([transform])


def augmentation(spec: str) -> A.Compose | None:
    """``--augment SPEC``: "none" -> None, "light" / "strong" -> the preset, a .yaml/.yml/.json path ->
    the file's pipeline (see the module docstring)."""
    spec = spec.strip()
    if spec == "none":
        return None
    if spec in PRESETS:
        return PRESETS[spec]()
    if _is_file_spec(spec):
        return load_spec(spec, "augment")
    raise ConfigError(f"must be none, {', '.join(PRESETS)} or a .yaml/.yml/.json file, got {spec!r}",
                      option="augment")


def _degradation_names(spec: str) -> tuple[str, ...]:
    """The degradation names a comma list of degradation and group names stands for."""
    names: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        if item in GROUPS:
            names += GROUPS[item]
        elif item in DEGRADATIONS:
            names.append(item)
        else:
            choices = sorted(set(DEGRADATIONS) | set(GROUPS))
            raise ConfigError(f"unknown degradation {item!r}; choose from none, {', '.join(DEGRADATION_PRESETS)}, "
                              f"{', '.join(choices)} or a .yaml/.yml/.json file", option="degrade_inputs")
    return tuple(names)


def input_degradation(spec: str) -> A.Compose | None:
    """``--degrade-inputs SPEC``: "none" -> None; "light" / "strong"; a comma list of degradation / group
    names (each p=0.5, whole range); or a file of image-only transforms (see the module docstring)."""
    spec = spec.strip()
    if spec == "none":
        return None
    if spec in DEGRADATION_PRESETS:
        return DEGRADATION_PRESETS[spec]()
    if not _is_file_spec(spec):
        return A.Compose(_degradations(_degradation_names(spec), p=0.5))
    transform = load_spec(spec, "degrade_inputs")
    spatial = [type(t).__name__ for t in _leaves(transform) if not isinstance(t, A.ImageOnlyTransform)]
    if spatial:
        raise ConfigError(f"{spec}: {', '.join(spatial)} is not an image-only transform (the inputs must stay "
                          f"aligned with the clean targets)", option="degrade_inputs")
    return transform


def seeded(transform: A.BasicTransform | A.BaseCompose, seed: int, **data: Any) -> dict[str, Any]:
    """``transform(**data)`` with its randomness from ``seed`` (a non-negative int): the same seed, the
    same result. One generator pair is shared by the whole pipeline, which draws from it in turn
    (``set_random_seed`` would give every child the same seed, hence the same draws)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"must be a non-negative integer, got {seed!r}", option="seed")
    transform.set_random_state(np.random.default_rng(int(seed)), random.Random(int(seed)))
    return transform(**data)


def _json_value(value: Any) -> Any:
    """NumPy scalars and arrays as Python numbers and lists (for json.dumps)."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def spec_dict(transform: A.BasicTransform | A.BaseCompose | None) -> dict[str, Any] | None:
    """A JSON-ready ``A.to_dict`` of a transform (what ``A.save`` writes; ``A.from_dict`` rebuilds it), or None."""
    if transform is None:
        return None
    return json.loads(json.dumps(serialize_enum(A.to_dict(transform)), default=_json_value))


def spec_text(transform: A.BasicTransform | A.BaseCompose | None) -> str:
    """:func:`spec_dict` as one line of JSON with sorted keys ("null" for None), for config.json and logs."""
    return json.dumps(spec_dict(transform), sort_keys=True)
