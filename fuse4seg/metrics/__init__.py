"""Fusion metrics (MMIF convention, as CDDFuse) and BraTS segmentation metrics on NumPy arrays.

Scoring conventions (monai, brats2023, brats2025) in :mod:`fuse4seg.metrics.conventions`; scoring a
directory of predictions (``fuse4seg score``) in :mod:`fuse4seg.metrics.scoring`.
"""

from fuse4seg.metrics.conventions import CHALLENGES, CONVENTIONS
from fuse4seg.metrics.fusion import FUSION_METRIC_NAMES, average_fusion_metrics, fusion_metrics
from fuse4seg.metrics.segmentation import (
    SEGMENTATION_METRIC_NAMES,
    average_segmentation_metrics,
    dice,
    hd95,
    image_diagonal,
    segmentation_metrics,
    sensitivity,
    specificity,
)

__all__ = [
    "CHALLENGES",
    "CONVENTIONS",
    "FUSION_METRIC_NAMES",
    "SEGMENTATION_METRIC_NAMES",
    "average_fusion_metrics",
    "average_segmentation_metrics",
    "dice",
    "fusion_metrics",
    "hd95",
    "image_diagonal",
    "segmentation_metrics",
    "sensitivity",
    "specificity",
]
