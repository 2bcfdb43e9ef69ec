"""Conventions shared by every part of fuse4seg: modality order, canonical labels, tumour regions."""

from __future__ import annotations

import numpy as np

#: Modality order of every (4, ...) source array and of the HDF5 ``source`` datasets.
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

#: Canonical label values inside fuse4seg (BraTS 2021 label 4 and BraTS 2023 label 3 both map to 3).
LABELS: dict[int, str] = {0: "background", 1: "NCR", 2: "ED", 3: "ET"}
NUM_CLASSES: int = len(LABELS)

#: BraTS evaluation regions as sets of canonical labels.
REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}

#: Default fusion inputs (the later Fuse4Seg versions fuse T1ce + FLAIR).
DEFAULT_FUSION_INPUTS: tuple[str, ...] = ("t1ce", "flair")


def region_masks(label: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean WT/TC/ET masks (same shape as ``label``) from a canonical label map in {0,1,2,3}."""
    label = np.asarray(label)
    return {name: np.isin(label, values) for name, values in REGIONS.items()}


def parse_modalities(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Parse 't1ce,flair' (or a sequence) into a tuple of known modality names, in the order given."""
    from fuse4seg.errors import ConfigError

    names = [t.strip().lower() for t in text.split(",")] if isinstance(text, str) else [str(t).lower() for t in text]
    names = [n for n in names if n]
    if not names:
        raise ConfigError("no modalities given: expected a comma-separated subset of " + ",".join(MODALITIES))
    unknown = [n for n in names if n not in MODALITIES]
    if unknown:
        raise ConfigError(f"unknown modality {unknown[0]!r}: expected a subset of " + ",".join(MODALITIES))
    if len(set(names)) != len(names):
        raise ConfigError(f"modality listed twice in {','.join(names)!r}")
    return tuple(names)


def modality_indices(names: tuple[str, ...]) -> list[int]:
    """Indices of ``names`` in :data:`MODALITIES` (for slicing (N, 4, H, W) source arrays)."""
    return [MODALITIES.index(n) for n in names]
