"""Losses: fusion losses on (fused, sources) in [0, 1] and segmentation losses over canonical labels."""

from fuse4seg.losses.filters import gradient_magnitude, sobel_gradients, split_bands, ssim, ssim_window
from fuse4seg.losses.fusion import (
    DEFAULT_FUSION_WEIGHTS,
    FUSION_LOSSES,
    frequency_loss,
    fusion_loss,
    gradient_loss,
    intensity_loss,
    resolve_fusion_weights,
    spatial_gradient_loss,
    ssim_loss,
)
from fuse4seg.losses.segmentation import (
    DICE_SMOOTH,
    Reduce,
    at_least_fp32,
    predict_labels,
    reduce_together,
    region_logits,
    region_targets,
    regions_to_labels,
    segmentation_loss,
    soft_dice,
)

__all__ = [
    "DEFAULT_FUSION_WEIGHTS",
    "DICE_SMOOTH",
    "FUSION_LOSSES",
    "Reduce",
    "at_least_fp32",
    "frequency_loss",
    "fusion_loss",
    "gradient_loss",
    "gradient_magnitude",
    "intensity_loss",
    "predict_labels",
    "reduce_together",
    "region_logits",
    "region_targets",
    "regions_to_labels",
    "resolve_fusion_weights",
    "segmentation_loss",
    "sobel_gradients",
    "soft_dice",
    "spatial_gradient_loss",
    "split_bands",
    "ssim",
    "ssim_loss",
    "ssim_window",
]
