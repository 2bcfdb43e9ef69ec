"""Networks: fusion nets (sources -> one image in [0, 1]) and segmenters (image -> label logits),
in 2-D (N, C, H, W) and 3-D (N, C, D, H, W, registry names ending ``-3d``), and sliding-window
inference over whole volumes.

Every model is built by name from :data:`MODEL_REGISTRY` with :func:`build_model`; none uses
BatchNorm, so all of them unroll cleanly under ``torch.func.functional_call``. :func:`register_model` adds a
network from Python, an entry point of the group ``fuse4seg.models`` one from an installed package
(see :mod:`fuse4seg.models.registry`).
"""

from fuse4seg.models.feature_fusion import FeatureFusionSegmenter
from fuse4seg.models.fusion import FrequencyFusionNet, FusionCNN
from fuse4seg.models.registry import (
    ENTRY_POINT_GROUP,
    MODEL_REGISTRY,
    build_model,
    count_parameters,
    format_model_table,
    list_models,
    model_dims,
    model_options,
    model_summary,
    register_model,
    unregister_model,
)
from fuse4seg.models.sliding import importance_map, sliding_window
from fuse4seg.models.text_fusion import TextGuidedFusion
from fuse4seg.models.unet import UNet

__all__ = [
    "ENTRY_POINT_GROUP",
    "MODEL_REGISTRY",
    "FeatureFusionSegmenter",
    "FrequencyFusionNet",
    "FusionCNN",
    "TextGuidedFusion",
    "UNet",
    "build_model",
    "count_parameters",
    "format_model_table",
    "importance_map",
    "list_models",
    "model_dims",
    "model_options",
    "model_summary",
    "register_model",
    "sliding_window",
    "unregister_model",
]
