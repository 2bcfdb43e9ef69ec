"""Access to a BraTS-Fuse package for training and evaluation: split facts and torch Datasets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from fuse4seg.errors import ConfigError, DataError

H5_NAME = "brats_fuse.h5"


@dataclass(frozen=True)
class BenchmarkInfo:
    """What training needs to know about a benchmark package before reading its slices."""

    path: Path
    counts: dict[str, int]  # slices per split
    height: int
    width: int
    fusion_inputs: tuple[str, ...]
    fusion_method: str
    train_case_ids: tuple[str, ...]  # one per train slice, in file order


def _text(value: object) -> str:
    """An HDF5 attribute or string element as str (h5py returns bytes or str depending on version)."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def benchmark_info(directory: str | Path) -> BenchmarkInfo:
    """Read split sizes, slice size, fusion attributes and train case ids; ConfigError/DataError if bad."""
    from fuse4seg.data.h5format import open_validated

    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"--benchmark: {directory} is not a directory")
    path = directory / H5_NAME
    if not path.is_file():
        raise ConfigError(f"--benchmark: {directory} has no {H5_NAME} (build one with `fuse4seg build-benchmark`)")
    h5, counts = open_validated(path)
    with h5:
        attr = h5.attrs.get("fusion_inputs", "")
        inputs = attr.tolist() if isinstance(attr, np.ndarray) else _text(attr).split(",")
        case_ids = tuple(_text(c) for c in h5["train/case_id"][()]) if counts.get("train", 0) else ()
        method = _text(h5.attrs.get("fusion_method", ""))
    if counts.get("train", 0) == 0:
        raise DataError(f"{path}: the train split is empty")
    return BenchmarkInfo(path, {s: int(counts.get(s, 0)) for s in ("train", "val", "test")},
                         int(counts["height"]), int(counts["width"]),
                         tuple(_text(i).strip() for i in inputs if _text(i).strip()), method, case_ids)


def open_split(directory: str | Path, split: str) -> Dataset:
    """The BraTSFuse torch Dataset of one split (all 4 sources; the pipeline selects channels)."""
    from fuse4seg.data import BraTSFuse

    return BraTSFuse(Path(directory), split)
