"""Access to a BraTS-Fuse package for training and evaluation: split facts and torch Datasets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from fuse4seg.data.h5format import H5_NAME, SPLITS
from fuse4seg.data.package import sha256_file
from fuse4seg.errors import ConfigError, DataError


@dataclass(frozen=True)
class BenchmarkInfo:
    """What training needs to know about a benchmark package before reading its slices."""

    path: Path
    counts: dict[str, int]  # slices per split
    height: int
    width: int
    fusion_method: str
    train_case_ids: tuple[str, ...]  # one per train slice, in file order
    slice_size: int | None = None  # build --size (0: volume size kept); None: file predates the attribute


def _facts(h5: h5py.File, counts: dict[str, int], path: Path) -> dict[str, object]:
    """Root attributes of a validated brats_fuse.h5 plus "height"/"width" (px) and the optional "slice_size"."""
    from fuse4seg.data.h5format import read_root_attrs, slice_size

    return {**read_root_attrs(h5), "height": counts["height"], "width": counts["width"],
            "slice_size": slice_size(h5, path)}


def read_benchmark_facts(path: str | Path) -> dict[str, object]:
    """What a benchmark file ``path`` "is" (root attributes, slice height/width, slice_size); DataError if bad."""
    from fuse4seg.data.h5format import open_validated

    h5, counts = open_validated(path)
    with h5:
        return _facts(h5, counts, Path(path))


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
        facts = _facts(h5, counts, path)
        case_ids = tuple(h5["train/case_id"].asstr()[()]) if counts.get("train", 0) else ()
    if counts.get("train", 0) == 0:
        raise DataError(f"{path}: the train split is empty")
    return BenchmarkInfo(path, {s: int(counts.get(s, 0)) for s in SPLITS},
                         int(facts["height"]), int(facts["width"]),
                         str(facts["fusion_method"]), case_ids, facts["slice_size"])


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


#: Splits up to this many bytes of slices are held in memory (--cache): reading gzip-compressed HDF5
#: chunks per item otherwise costs a visible share of a small network's step.
CACHE_MAX_BYTES = 2 * 1024**3


class InMemorySplit(Dataset):
    """One split read once into memory; items are the same dicts BraTSFuse returns."""

    def __init__(self, path: Path, split: str, h5: h5py.File | None = None) -> None:
        """Read source, fused, label, case_id, slice_index and spacing of ``split`` from the HDF5 file ``path``
        (``h5``: its already validated open handle, else it is opened and validated here); DataError naming the
        file, split and slice if a value is out of range (as BraTSFuse does per item)."""
        from fuse4seg.data.dataset import check_slices
        from fuse4seg.data.h5format import open_validated, read_root_attrs, read_spacing

        if h5 is None:
            h5 = open_validated(path)[0]
        with h5:
            g = h5[split]
            source = np.ascontiguousarray(g["source"][()], dtype=np.float32)
            fused = np.ascontiguousarray(g["fused"][()], dtype=np.float32)
            label = np.ascontiguousarray(g["label"][()], dtype=np.uint8)
            self.case_id = list(g["case_id"].asstr()[()])
            slice_index = g["slice_index"][()]
            self.attrs = read_root_attrs(h5)  # as BraTSFuse.attrs
            self.spacing = read_spacing(h5, split, path)  # (N, 3) mm, or None for older benchmarks
        check_slices(path, split, 0, self.case_id, source, fused, label, slice_index)
        self.source, self.fused, self.label = torch.from_numpy(source), torch.from_numpy(fused), torch.from_numpy(label)
        self.slice_index = [int(z) for z in slice_index]

    def __len__(self) -> int:
        """Number of slices."""
        return len(self.case_id)

    def __getitem__(self, i: int) -> dict:
        """{"source" (4,H,W), "fused" (1,H,W) float32, "label" (H,W) int64, "case_id", "slice_index"}."""
        return {"source": self.source[i], "fused": self.fused[i], "label": self.label[i].long(),
                "case_id": self.case_id[i], "slice_index": self.slice_index[i]}


def open_split(directory: str | Path, split: str, cache: bool = False) -> Dataset:
    """A torch Dataset of one split (all 4 sources; the pipeline selects channels).

    ``cache``: hold the split in memory when it is at most CACHE_MAX_BYTES, else read lazily (BraTSFuse).
    The file is opened and validated once for the in-memory path.
    """
    from fuse4seg.data import BraTSFuse
    from fuse4seg.data.dataset import h5_path
    from fuse4seg.data.h5format import open_validated

    if cache:
        path = h5_path(directory, split)
        h5, counts = open_validated(path)
        n = counts[split]
        if n and n * counts["height"] * counts["width"] * (5 * 4 + 1) <= CACHE_MAX_BYTES:
            return InMemorySplit(path, split, h5)
        h5.close()
    return BraTSFuse(Path(directory), split)
