"""The slices pre-training reads: the sources of one or more splits of a package, and nothing else (no labels)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fuse4seg.data.package.dataset import ProcessFile, h5_path
from fuse4seg.data.package.h5format import open_validated
from fuse4seg.data.package.h5primitives import READ_ERRORS
from fuse4seg.errors import ConfigError, DataError
from fuse4seg.io import one_line


class SourceSlices(ProcessFile):
    """The (4, H, W) float32 sources in [0, 1] (MODALITIES order) of every slice of ``splits``, in split order
    then file order, as a Dataset of {"source": tensor, "case_id": str}; labels are never read.

    The file's schema is validated on construction; each item is checked (finite, in [0, 1]) when read, and
    the HDF5 handle is opened lazily once per process (DataLoader workers open their own)."""

    def __init__(self, path: str | os.PathLike, splits: Sequence[str]) -> None:
        """``path``: the package directory (or its .h5); ConfigError when it is missing, DataError when every
        chosen split is empty or the file is invalid."""
        directory = Path(path)
        if not directory.exists():
            raise ConfigError(f"{directory} does not exist (build one with `fuse4seg build-benchmark`)",
                              option="benchmark")
        self.path = h5_path(directory, splits[0])
        if not self.path.is_file():
            raise ConfigError(f"{directory} has no {self.path.name} (build one with `fuse4seg build-benchmark`)",
                              option="benchmark")
        h5, counts = open_validated(self.path)
        with h5:
            self.rows = [(split, i) for split in splits for i in range(counts[split])]
            self.case_ids = [str(c) for split in splits for c in h5[split]["case_id"].asstr()[()]]
            self.size = (int(counts["height"]), int(counts["width"]))
        if not self.rows:
            raise DataError(f"{self.path}: the split(s) {', '.join(splits)} hold no slices")
        self._h5 = None
        self._pid: int | None = None

    def __len__(self) -> int:
        """Number of slices over the chosen splits."""
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        """Slice ``index`` (0 <= index < len) as {"source": (4, H, W) float32 tensor, "case_id": str}."""
        split, row = self.rows[int(index)]
        try:
            source = np.asarray(self._file()[split]["source"][row], dtype=np.float32)
        except READ_ERRORS as exc:
            raise DataError(f"{self.path}: /{split}/source[{row}]: unreadable slice ({one_line(exc)})") from None
        if not (source.min() >= 0 and source.max() <= 1):  # NaN fails both comparisons
            raise DataError(f"{self.path}: /{split}/source[{row}] (case {self.case_ids[int(index)]}): values outside "
                            "[0, 1] or NaN/Inf")
        return {"source": torch.from_numpy(np.ascontiguousarray(source)), "case_id": self.case_ids[int(index)]}
