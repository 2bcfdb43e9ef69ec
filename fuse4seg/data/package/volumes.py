"""``BraTSFuseVolumes``: the torch Dataset over the whole volumes of a BraTS-Fuse package (``build-benchmark
--volumes``), whole or by patch. The layout is declared in :mod:`fuse4seg.data.package.schema` and documented in
:mod:`fuse4seg.data.package.h5volumes`."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import h5py
import numpy as np
import torch

from fuse4seg.data.package.dataset import CACHE_MAX_BYTES, ProcessFile, check_slices, h5_path
from fuse4seg.data.package.h5format import has_volumes, open_validated, read_root_attrs
from fuse4seg.data.package.h5primitives import READ_ERRORS, reading_data
from fuse4seg.data.package.h5volumes import read_volume_attrs, volume_case_ids
from fuse4seg.data.package.schema import MAX_VOLUME_VOXELS, VOLUMES_GROUP
from fuse4seg.errors import ConfigError, DataError
from fuse4seg.io import one_line

#: Bytes of one voxel in memory: four source and one fused float32 value, one uint8 label.
_BYTES_PER_VOXEL = 5 * 4 + 1

Region = tuple[slice, slice, slice]


def _triple(value: Sequence[int], name: str, minimum: int | None) -> np.ndarray:
    """(3,) int64 from three integers (each >= ``minimum`` unless None); ConfigError naming ``name`` otherwise."""
    items = list(value) if isinstance(value, (tuple, list, np.ndarray)) else []
    if len(items) != 3 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items) \
            or (minimum is not None and min(items) < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ConfigError(f"{name}: expected three integers{bound} (d, h, w), got {value!r}")
    return np.array(items, dtype=np.int64)


class BraTSFuseVolumes(ProcessFile):
    """The volumes of one split, one item per case (sorted case ids): {"source": (4, D, H, W) float32,
    "fused": (1, D, H, W) float32, "label": (D, H, W) int64, "case_id": str, "box": (3, 2) int64
    [[x0, x1], [y0, y1], [z0, z1]] of the crop in the original volume, "shape": (3,) int64 (X, Y, Z) of
    that volume, "affine": (4, 4) float64, "spacing": (3,) float64 mm (x, y, z)}; (D, H, W) are the crop's
    (z, x, y) extents. :meth:`read_patch` returns the same keys (plus "start") for a box of the volume.

    ``path`` is the package directory or its .h5 file, validated on construction (DataError if it holds no
    volumes). ``cache``: read every volume of the split into memory now when they take at most
    :data:`~fuse4seg.data.package.dataset.CACHE_MAX_BYTES` (``cached`` says whether they did); otherwise the file is
    opened lazily once per process (DataLoader workers open their own; the handle is never pickled) and a
    patch reads only the chunks it touches. Values are checked when read (sources and fused finite in
    [0, 1], labels in {0..3}).
    """

    def __init__(self, path: str | os.PathLike, split: str, cache: bool = False) -> None:
        """Validate the file and read the split's case list and per-case attributes; see the class docstring."""
        self.path = h5_path(path, split)
        self.split = split
        h5, _ = open_validated(self.path)
        with h5:
            if not has_volumes(h5):
                raise DataError(f"{self.path}: holds no volumes; build it with `fuse4seg build-benchmark --volumes`")
            group = h5[VOLUMES_GROUP][split]
            self._case_ids = volume_case_ids(h5, split)
            self._attrs = [read_volume_attrs(group[c]) for c in self._case_ids]
            #: (D, H, W) voxels of each case's volume, in item order.
            self.dims: list[tuple[int, int, int]] = [tuple(group[c]["label"].shape) for c in self._case_ids]
            self.attrs = read_root_attrs(h5)
            total = sum(math.prod(d) for d in self.dims) * _BYTES_PER_VOXEL
            self._memory: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
            if cache and 0 < total <= CACHE_MAX_BYTES:
                self._memory = [self._read_region(group, i, (slice(None),) * 3) for i in range(len(self))]
        self._h5: h5py.File | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        """Number of cases (volumes) in the split."""
        return len(self._case_ids)

    @property
    def case_ids(self) -> list[str]:
        """The split's case ids, in item order (sorted)."""
        return list(self._case_ids)

    @property
    def cached(self) -> bool:
        """Whether the split's volumes are held in memory."""
        return self._memory is not None

    def _group(self) -> h5py.Group:
        """The split's volumes group of the HDF5 file, opened on first use in this process."""
        return self._file()[VOLUMES_GROUP][self.split]

    def _read_region(self, group: h5py.Group, index: int, region: Region) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(source (4, d, h, w) float32, fused (1, d, h, w) float32, label (d, h, w) uint8) of case ``index`` over
        ``region`` of its (D, H, W) grid, read from ``group`` (only the chunks it touches) and checked."""
        case_id = self._case_ids[index]
        with reading_data(self.path, f"/{VOLUMES_GROUP}/{self.split}/{case_id}"):
            case = group[case_id]
            source = case["source"][(slice(None), *region)]
            fused = case["fused"][(slice(None), *region)]
            label = case["label"][region]
        check_slices(self.path, f"{VOLUMES_GROUP}/{self.split}", index, [case_id], source[None], fused[None],
                     label[None], np.zeros(1, dtype=np.int64))
        return source, fused, label

    def _region(self, index: int, region: Region) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_read_region` from memory when cached, else from the file."""
        if self._memory is not None:
            source, fused, label = self._memory[index]
            return source[(slice(None), *region)], fused[(slice(None), *region)], label[region]
        try:
            return self._read_region(self._group(), index, region)
        except READ_ERRORS as exc:  # the file replaced or gone since construction
            raise DataError(f"{self.path}: /{VOLUMES_GROUP}/{self.split}: unreadable ({one_line(exc)})") from None

    def _index(self, index: int) -> int:
        """``index`` in range (negative counts from the end); IndexError otherwise."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} volumes in {self.split}")
        return int(index) % len(self)

    def read_patch(self, index: int, start: Sequence[int], size: Sequence[int]) -> dict:
        """The box of ``size`` (d, h, w) voxels from ``start`` (d, h, w; may be negative) of volume ``index``:
        the item's keys with source (4, d, h, w), fused (1, d, h, w), label (d, h, w) zero where the box
        leaves the volume, plus "start" (3,) int64; only the chunks the box touches are read. ConfigError for
        a malformed start or size, or a box over MAX_VOLUME_VOXELS."""
        index = self._index(index)
        start, size = _triple(start, "start", None), _triple(size, "size", 1)
        if math.prod(size.tolist()) > MAX_VOLUME_VOXELS:
            raise ConfigError(f"size: {tuple(size.tolist())} is over the limit of {MAX_VOLUME_VOXELS} voxels")
        dims = np.array(self.dims[index], dtype=np.int64)
        lo, hi = np.clip(start, 0, dims), np.clip(start + size, 0, dims)
        source = np.zeros((4, *size.tolist()), dtype=np.float32)
        fused = np.zeros((1, *size.tolist()), dtype=np.float32)
        label = np.zeros(size.tolist(), dtype=np.uint8)
        if (hi > lo).all():  # some of the box lies inside the volume
            inside = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            target = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start))
            parts = self._region(index, inside)
            source[(slice(None), *target)], fused[(slice(None), *target)], label[target] = parts
        attrs = self._attrs[index]
        return {
            "source": torch.from_numpy(source), "fused": torch.from_numpy(fused),
            "label": torch.from_numpy(label.astype(np.int64)), "case_id": self._case_ids[index],
            "box": attrs["box"].copy(), "shape": attrs["shape"].copy(), "affine": attrs["affine"].copy(),
            "spacing": attrs["spacing"].copy(), "start": start,
        }

    def __getitem__(self, index: int) -> dict:
        """Volume ``index`` whole (see the class docstring; "start" is (0, 0, 0))."""
        index = self._index(index)
        return self.read_patch(index, (0, 0, 0), self.dims[index])

    def __repr__(self) -> str:
        """Short description: file, split, number of volumes."""
        return f"BraTSFuseVolumes({str(self.path)!r}, split={self.split!r}, n={len(self)})"
