"""The torch optimisers of a training mode: the fusion net's (upper), the segmenter's (lower), the fp16 loss scaler.

Not the bi-level inner optimisers: those are differentiable functions of the weights (fuse4seg.bilevel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fuse4seg.train.config import OUTER_OPTIMIZERS
from fuse4seg.train.modes import MODES

if TYPE_CHECKING:
    from fuse4seg.train.config import TrainConfig
    from fuse4seg.train.networks import Pipeline


@dataclass
class Optimisers:
    """Torch optimisers of the fusion net (upper) and the segmenter (lower), as the mode needs them."""

    upper: torch.optim.Optimizer | None
    lower: torch.optim.Optimizer | None
    inner_state: dict[str, Any] | None = None  # bilevel: inner optimiser state carried across steps
    scaler: torch.amp.GradScaler | None = None  # --precision fp16 (single-level modes): the loss scale
    seg_weight: float | None = None  # --fusion-budget: the segmentation loss's current (adaptive) weight


#: The torch optimiser of each --upper-optimizer / --lower-optimizer name (plain SGD: no momentum, so a step is
#: delta = -lr * grad exactly).
TORCH_OPTIMISERS: dict[str, type[torch.optim.Optimizer]] = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
assert set(TORCH_OPTIMISERS) == set(OUTER_OPTIMIZERS), "every declared optimiser name needs its torch class"


def torch_optimiser(name: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The torch optimiser ``name`` (a key of :data:`TORCH_OPTIMISERS`) over ``params`` at learning rate ``lr``."""
    return TORCH_OPTIMISERS[name](params, lr=lr)


def torch_optimisers(config: TrainConfig, pipeline: Pipeline) -> Optimisers:
    """The optimisers ``config``'s mode declares: upper over the fusion net, lower over the segmenter
    (the bi-level segmenter is trained by the inner steps instead, at the same learning rate), and the
    loss scaler of --precision fp16 (on the networks' device)."""
    wanted = MODES[config.mode].optimisers
    upper = lower = scaler = None
    if "upper" in wanted:
        upper = torch_optimiser(config.upper_optimizer, list(pipeline.fusion.parameters()), config.lr_upper)
    if "lower" in wanted:
        lower = torch_optimiser(config.lower_optimizer, list(pipeline.seg.parameters()), config.engine.lr)
    if config.precision == "fp16":  # fp16 gradients underflow without loss scaling; bf16 has fp32's range
        scaler = torch.amp.GradScaler(next(pipeline.seg.parameters()).device.type)
    return Optimisers(upper, lower, scaler=scaler)
