"""Run variants (task x dims): what each one is and the option rules it imposes, one registry entry per variant.

Torch-free, so the option declarations and their checks (fuse4seg.train.config, fuse4seg.train.resolve) can
ask a variant without importing the networks; what a variant opens, predicts and scores lives in
fuse4seg.train.variants (``VARIANTS[facts.name]``). Outside the registries, code asks the variant of a
configuration (:func:`facts_of`) rather than compare ``task`` or ``dims``; the one exception is the terminal
summary of a finished run (fuse4seg.train.loop.format_train_summary), which words the summary dict it is given.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fuse4seg.errors import ConfigError

#: A training configuration (fuse4seg.train.config.TrainConfig, which declares its options from these facts).
Config = Any
#: Voxels in one batch of 3-D patches (batch_size * d * h * w): twice the default 4 x 64^3.
MAX_BATCH_VOXELS: int = 2**21


def _no_rule(c: Config, text_key: str | None) -> None:
    """No variant-specific rule."""


def _check_volumes(c: Config, text_key: str | None) -> None:
    """3-D patches: the 2-D slice transforms, the slices' texts and the per-slice consistency loss do not apply."""
    for key in ("augment", "degrade_inputs"):  # their transforms are 2-D (albumentations on slices)
        if getattr(c, key) != "none":
            raise ConfigError("is not supported with --dims 3 (its transforms work on 2-D slices)", option=key)
    if text_key is not None:
        raise ConfigError("reads the slices' texts, which describe axial slices: not available with --dims 3",
                          option=text_key)
    if c.label_fraction < 1:
        raise ConfigError("is not supported with --dims 3 (the consistency loss runs on slices)", option="label_fraction")
    voxels = c.batch_size * math.prod(c.patch)  # activation memory grows with it: 256^3 x 4 took 6.7 GB, then failed
    if voxels > MAX_BATCH_VOXELS:
        raise ConfigError(f"{c.batch_size} patches of {'x'.join(map(str, c.patch))} voxels are {voxels} voxels per "
                          f"batch, over the limit of {MAX_BATCH_VOXELS} (2^21; the default 4 x 64^3 is 2^20): use a "
                          "smaller --patch or --batch-size", option="patch")


def _check_presence(c: Config, text_key: str | None) -> None:
    """The generated texts state which regions are present: as a fusion net's inputs they would give the target away."""
    if text_key == "fusion_model":
        raise ConfigError("reads the slices' texts, which state which regions are present: the target of --task "
                          "classify", option=text_key)


@dataclass(frozen=True)
class VariantFacts:
    """A run variant: what the second network predicts (``task``) from which items (``dims``).

    ``slices``: items are the stored 2-D axial slices (batches of slices; slice-by-slice prediction, the 2-D
    degradations of ``robustness``), else whole cases whose patches are drawn per step; ``segments``: the second
    network predicts label maps (``fuse``, ``robustness`` and ``evaluate --volumes`` apply); ``sigmoid_outputs``:
    its outputs are independent sigmoids whatever ``--region-based`` says; ``selection_metric``: the validation
    score that chooses best.pt; ``network``: a fixed second network instead of the mode's or ``--seg-model``;
    ``network_suffix``: appended to a 2-D network name for this variant's registry name; ``check``:
    (config, the option that makes the run read texts or None) -> ConfigError for an option the variant refuses.
    """

    name: str
    task: str
    dims: int
    slices: bool
    segments: bool
    sigmoid_outputs: bool
    selection_metric: str
    network: str | None
    network_suffix: str
    check: Callable[[Config, str | None], None]


#: Every run variant, by name.
VARIANT_FACTS: dict[str, VariantFacts] = {f.name: f for f in (
    VariantFacts("segment-2d", "segment", 2, slices=True, segments=True, sigmoid_outputs=False,
                 selection_metric="dice_mean", network=None, network_suffix="", check=_no_rule),
    VariantFacts("segment-3d", "segment", 3, slices=False, segments=True, sigmoid_outputs=False,
                 selection_metric="dice_mean", network=None, network_suffix="-3d", check=_check_volumes),
    VariantFacts("classify-2d", "classify", 2, slices=True, segments=False, sigmoid_outputs=True,
                 selection_metric="auroc_mean", network="classifier", network_suffix="", check=_check_presence),
)}
#: --task values and --dims values, in registry order.
TASKS: tuple[str, ...] = tuple(dict.fromkeys(f.task for f in VARIANT_FACTS.values()))
DIMS: tuple[int, ...] = tuple(sorted({f.dims for f in VARIANT_FACTS.values()}))
#: The (task, dims) pairs no variant trains, with the reason (ConfigError naming --task).
UNSUPPORTED: dict[tuple[str, int], str] = {("classify", 3): "is not supported with --dims 3 (presence is a property "
                                                             "of a slice)"}
_BY_AXES: dict[tuple[str, int], VariantFacts] = {(f.task, f.dims): f for f in VARIANT_FACTS.values()}


def variant_name(task: str = "segment", dims: int = 2) -> str:
    """The name of the variant of ``task`` and ``dims`` (defaults: those of a run that records neither);
    ConfigError (option task) for a pair no variant trains."""
    found = _BY_AXES.get((task, dims))
    if found is None:
        raise ConfigError(UNSUPPORTED.get((task, dims), f"no run variant for task {task!r} with --dims {dims}"),
                          option="task")
    return found.name


def facts_of(config: Config) -> VariantFacts:
    """The variant of a configuration (its ``task`` and ``dims``); ConfigError for a pair no variant trains."""
    return VARIANT_FACTS[variant_name(config.task, config.dims)]


__all__ = ["DIMS", "TASKS", "VARIANT_FACTS", "VariantFacts", "facts_of", "variant_name"]
