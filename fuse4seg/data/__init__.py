"""BraTS reading (``release``), the phantom release (``phantom``), the BraTS-Fuse benchmark builder (``build``),
the package it writes and its torch Datasets (``package``), and augmentation (``augment``).

Names are imported lazily (PEP 562) so that ``import fuse4seg.data`` stays cheap and the
submodules (which import each other) cannot form an import cycle.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "BraTSFuse": "fuse4seg.data.package.dataset",
    "BraTSFuseVolumes": "fuse4seg.data.package.volumes",
    "BuildOptions": "fuse4seg.data.build.options",
    "build_benchmark": "fuse4seg.data.build.builder",
    "find_cases": "fuse4seg.data.release.brats",
    "find_case": "fuse4seg.data.release.brats",
    "load_case": "fuse4seg.data.release.brats",
    "verify": "fuse4seg.data.package.verify",
    "cite": "fuse4seg.data.package.citation",
    "write_phantom_release": "fuse4seg.data.phantom.generator",
}

__all__ = [
    "BraTSFuse",
    "BraTSFuseVolumes",
    "BuildOptions",
    "build_benchmark",
    "cite",
    "find_case",
    "find_cases",
    "load_case",
    "verify",
    "write_phantom_release",
]


def __getattr__(name: str) -> Any:
    """Import an exported name from its submodule on first access."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fuse4seg.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Module attributes including the lazily imported exports."""
    return sorted(set(globals()) | set(__all__))
