"""Training modes: one registry entry per mode (its networks, optimisers, rules and the kind of step it takes).

Torch-free, so the option declarations (fuse4seg.train.config) can name modes without importing the
networks; the step functions live in fuse4seg.train.steps (``STEPS[mode.step]``). Nothing outside this module
compares mode names: code asks the :class:`Mode` (``MODES[name]``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fuse4seg.bilevel import check_method
from fuse4seg.errors import ConfigError

#: A training configuration (fuse4seg.train.config.TrainConfig, which declares its options from this registry).
Config = Any


def _check_fusion_steps(c: Config, low: int) -> None:
    """--fusion-steps, when given: >= ``low`` and fewer than --steps (steps must be left for segmentation)."""
    if c.fusion_steps is not None:
        if c.fusion_steps < low:
            raise ConfigError(f"must be >= {low}, got {c.fusion_steps}", option="fusion_steps")
        if c.steps is not None and c.fusion_steps >= c.steps:
            raise ConfigError(f"must be < --steps ({c.steps}) to leave steps for segmentation", option="fusion_steps")


def _check_bilevel(c: Config) -> None:
    """The inner steps are what trains the segmenter: at least one; the method must suit the engine options;
    a warm-up leaves steps; --seg-fraction needs a fusion loss to balance against."""
    from fuse4seg.losses.fusion import resolve_fusion_weights
    from fuse4seg.train.declare import relabelled

    with relabelled(type(c), "engine"):
        if c.engine.steps < 1:
            raise ConfigError(f"must be >= 1 (the inner steps train the segmenter), got {c.engine.steps}",
                              option="steps")
        check_method(c.method, c.engine)
    _check_fusion_steps(c, 0)
    if c.precision == "fp16":
        raise ConfigError("fp16 is not supported with --mode bilevel (hypergradients through the inner steps would "
                          "need loss scaling inside the unrolled graph); use bf16", option="precision")
    if c.seg_fraction is not None and not any(resolve_fusion_weights(c.fusion_loss_weights).values()):
        raise ConfigError("balances against the fusion loss, but every fusion loss weight is 0", option="seg_fraction")
    if c.fusion_budget is not None and not any(resolve_fusion_weights(c.fusion_loss_weights).values()):
        raise ConfigError("constrains the fusion loss, but every fusion loss weight is 0", option="fusion_budget")
    if c.fusion_budget is not None and c.lambda_seg == 0:
        raise ConfigError("adapts the segmentation weight from --lambda-seg by a factor, so --lambda-seg must be > 0",
                          option="fusion_budget")


def _fusion_stage(c: Config, total: int, default: int) -> int:
    """Steps that train the fusion net alone first: --fusion-steps, or ``default``; fewer than ``total``."""
    steps = c.fusion_steps if c.fusion_steps is not None else default
    if steps and steps >= total:
        raise ConfigError(f"must be < the total steps ({total}, from --steps or --epochs)", option="fusion_steps")
    return steps


def _two_stages(c: Config, total: int) -> int:
    """Steps of two-stage's first stage: --fusion-steps, or half the total steps."""
    if total < 2:
        raise ConfigError("two-stage training needs at least 2 steps (one per stage)", option="steps")
    return _fusion_stage(c, total, total // 2)


def _check_feature_fusion(c: Config) -> None:
    """One encoder per modality: the inputs must be modalities."""
    if "fused" in MODES[c.mode].seg_inputs(c):
        raise ConfigError("feature-fusion needs modalities, not the fused image", option="inputs")


def _no_check(c: Config) -> None:
    """No mode-specific rule."""


def _fused(c: Config) -> tuple[str, ...]:
    """The segmenter reads the (learned or stored) fused image."""
    return ("fused",)


# ---- the registry -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    """A training mode: which networks it has and trains, with which optimisers, and its step.

    ``step``: the kind of step it takes (a key of fuse4seg.train.steps.STEPS);
    ``optimisers``: the torch optimisers it needs, "upper" (fusion net) and/or "lower" (segmenter);
    ``holds_out``: train cases are held out for the upper loss; ``hypergradient``: the fusion net
    learns from hypergradients through the segmenter's inner steps (``--hypergrad`` and the
    engine's options apply); ``seg_inputs``: the segmenter's input channels for a config;
    ``seg_model``: a fixed segmentation network instead of ``--seg-model``; ``fusion_stage``:
    (config, total steps) -> steps of a first stage that trains the fusion net alone; ``weighs_seg``:
    its objective weighs a segmentation loss against the fusion loss (``--lambda-seg``); ``check``:
    mode-specific validation of a config.
    """

    name: str
    step: str
    has_fusion: bool
    optimisers: tuple[str, ...]
    holds_out: bool = False
    hypergradient: bool = False
    seg_inputs: Callable[[Config], tuple[str, ...]] = _fused
    seg_model: str | None = None
    fusion_stage: Callable[[Config, int], int] | None = None
    weighs_seg: bool = False
    check: Callable[[Config], None] = _no_check


#: Every training mode, run by the same loop (fuse4seg.train.loop), by name.
MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("bilevel", "bilevel", has_fusion=True, optimisers=("upper",), holds_out=True, hypergradient=True,
         fusion_stage=lambda c, total: _fusion_stage(c, total, 0), weighs_seg=True, check=_check_bilevel),
    Mode("two-stage", "two-stage", has_fusion=True, optimisers=("upper", "lower"), fusion_stage=_two_stages,
         check=lambda c: _check_fusion_steps(c, 1)),
    Mode("joint", "joint", has_fusion=True, optimisers=("upper", "lower"), weighs_seg=True),
    Mode("direct", "segmentation", has_fusion=False, optimisers=("lower",),
         seg_inputs=lambda c: c.inputs or ("fused",)),
    Mode("feature-fusion", "segmentation", has_fusion=False, optimisers=("lower",),
         seg_inputs=lambda c: c.inputs or c.fusion_inputs, seg_model="feature-fusion", check=_check_feature_fusion),
)}


def names(where: Callable[[Mode], bool]) -> tuple[str, ...]:
    """Names of the modes for which ``where`` holds, in registry order (for option declarations)."""
    return tuple(name for name, mode in MODES.items() if where(mode))
