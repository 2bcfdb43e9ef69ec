"""Device choice shared by training, evaluation and inference (kept apart from the training loop)."""

from __future__ import annotations

import torch

from fuse4seg.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """torch.device for --device; ConfigError when CUDA is asked for but absent."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{name} asked for, but CUDA is not available on this machine", option="device")
    return torch.device(name)
