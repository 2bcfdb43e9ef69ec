"""Access to a BraTS-Fuse package for training and evaluation: split facts and torch Datasets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from fuse4seg.data.package.dataset import CACHE_MAX_BYTES, BraTSFuse
from fuse4seg.data.package.h5format import open_validated, read_root_attrs, slice_size
from fuse4seg.data.package.schema import H5_NAME, SPLITS
from fuse4seg.errors import ConfigError, DataError
from fuse4seg.io import sha256_file

__all__ = [
    "CACHE_MAX_BYTES",
    "BenchmarkInfo",
    "SplitArrays",
    "benchmark_identity",
    "benchmark_info",
    "open_split",
    "read_benchmark_facts",
    "read_split",
]


@dataclass(frozen=True)
class BenchmarkInfo:
    """What training needs to know about a benchmark package before reading its slices."""

    path: Path
    counts: dict[str, int]  # slices per split
    height: int
    width: int
    fusion_method: str
    train_case_ids: tuple[str, ...]  # one per train slice, in file order
    slice_size: int = 0  # build --size (0: volume size kept)
    fusion_inputs: tuple[str, ...] = ()  # the modalities the stored fused image fuses
    volumes: bool = False  # built with --volumes (whole brain-cropped volumes beside the slices)


def _facts(h5: h5py.File, counts: dict[str, int], path: Path) -> dict[str, object]:
    """Root attributes of a validated brats_fuse.h5 plus "height"/"width" (px) and "slice_size" (px, 0 = none)."""
    return {**read_root_attrs(h5), "height": counts["height"], "width": counts["width"],
            "slice_size": slice_size(h5, path)}


def read_benchmark_facts(path: str | Path) -> dict[str, object]:
    """What a benchmark file ``path`` "is" (root attributes, slice height/width, slice_size); DataError if bad."""
    h5, counts = open_validated(path)
    with h5:
        return _facts(h5, counts, Path(path))


def benchmark_info(directory: str | Path) -> BenchmarkInfo:
    """Read split sizes, slice size, fusion attributes and train case ids; ConfigError/DataError if bad."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"--benchmark: {directory} is not a directory")
    path = directory / H5_NAME
    if not path.is_file():
        raise ConfigError(f"--benchmark: {directory} has no {H5_NAME} (build one with `fuse4seg build-benchmark`)")
    h5, counts = open_validated(path)
    with h5:
        facts = _facts(h5, counts, path)
        case_ids = tuple(h5["train/case_id"].asstr()[()]) if counts.get("train", 0) else ()
    if counts.get("train", 0) == 0:
        raise DataError(f"{path}: the train split is empty")
    return BenchmarkInfo(path, {s: int(counts.get(s, 0)) for s in SPLITS},
                         int(facts["height"]), int(facts["width"]),
                         str(facts["fusion_method"]), case_ids, facts["slice_size"], tuple(facts["fusion_inputs"]),
                         int(facts.get("volumes", 0)) == 1)


def benchmark_identity(info: BenchmarkInfo) -> dict[str, object]:
    """What a run was trained on: sha256 (hex) of brats_fuse.h5, slices per split, slice height/width (px).

    A resumed run must see the same content; the path alone is not enough (a package can be moved,
    or rebuilt in place with other cases or sizes).
    """
    try:
        digest = sha256_file(info.path)
    except OSError as exc:
        raise DataError(f"{info.path}: cannot read: {exc.strerror}") from None
    return {"sha256": digest, "counts": dict(info.counts), "height": info.height, "width": info.width}



def open_split(directory: str | Path, split: str, cache: bool = False) -> BraTSFuse:
    """A torch Dataset of one split (all 4 sources; the pipeline selects channels).

    ``cache``: hold the split in memory when it is at most CACHE_MAX_BYTES, else read lazily (see BraTSFuse).
    """
    return BraTSFuse(Path(directory), split, cache=cache)


@dataclass(frozen=True)
class SplitArrays:
    """A split held in memory: sources (N, 4, H, W), stored fused (N, 1, H, W), labels (N, H, W) int64."""

    source: np.ndarray
    fused: np.ndarray
    label: np.ndarray
    keys: tuple[tuple[str, int], ...]  # (case id, slice index) per slice
    fusion_method: str
    fusion_inputs: tuple[str, ...]
    text: tuple[str, ...] | None = None  # the slices' texts, when the package has them


def read_split(benchmark: Path, split: str) -> SplitArrays:
    """Every slice of one split of a benchmark, in file order."""
    dataset = open_split(benchmark, split, cache=True)
    if len(dataset) == 0:
        raise DataError(f"{benchmark}: split {split!r} has no slices")
    items = [dataset[i] for i in range(len(dataset))]
    attrs = dataset.attrs
    return SplitArrays(np.stack([it["source"].numpy() for it in items]), np.stack([it["fused"].numpy() for it in items]),
                       np.stack([it["label"].numpy() for it in items]),
                       tuple((str(it["case_id"]), int(it["slice_index"])) for it in items),
                       str(attrs.get("fusion_method", "")), tuple(attrs.get("fusion_inputs", ())),
                       tuple(str(it["text"]) for it in items) if dataset.has_text else None)
