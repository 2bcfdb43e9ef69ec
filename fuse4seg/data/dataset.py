"""``BraTSFuse``: a torch Dataset over a BraTS-Fuse package's ``brats_fuse.h5``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fuse4seg.conventions import MODALITIES, modality_indices, parse_modalities
from fuse4seg.data.h5format import H5_NAME, SPLITS, open_validated
from fuse4seg.errors import ConfigError


class BraTSFuse(Dataset):
    """Slices of one split: {"source": (C, H, W) float32, "fused": (1, H, W) float32,
    "label": (H, W) int64, "case_id": str, "slice_index": int}.

    ``path`` is the package directory or the .h5 file itself. ``modalities`` picks and orders the
    source channels (default all four, MODALITIES order). The schema is validated on construction;
    the file is then opened lazily, once per process (each DataLoader worker opens its own handle,
    and the handle is never pickled). ``transform`` is an albumentations transform called as
    ``transform(image=HWC float32, mask=HW uint8)`` with the sources and the fused image stacked as
    channels, so spatial transforms move image and mask together.
    """

    def __init__(self, path: str | os.PathLike, split: str, modalities: Sequence[str] | str | None = None,
                 transform: Callable[..., dict] | None = None) -> None:
        """Validate the file's schema and remember what to read; see the class docstring."""
        if split not in SPLITS:
            raise ConfigError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
        path = Path(path)
        self.path = path / H5_NAME if path.is_dir() else path
        self.split = split
        self.modalities = MODALITIES if modalities is None else parse_modalities(modalities)
        self._channels = modality_indices(self.modalities)
        self.transform = transform
        h5, counts = open_validated(self.path)
        with h5:
            self._length = counts[split]
            self.size = (counts["height"], counts["width"])
            self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()}
        self._h5 = None
        self._pid: int | None = None

    def __len__(self) -> int:
        """Number of slices in the split."""
        return self._length

    def __getstate__(self) -> dict:
        """Pickle without the open file handle (workers reopen the file)."""
        state = self.__dict__.copy()
        state["_h5"], state["_pid"] = None, None
        return state

    def _group(self):
        """The split's h5py group, opening the file on first use in this process."""
        if self._h5 is None or self._pid != os.getpid():
            import h5py

            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5[self.split]

    def __getitem__(self, index: int) -> dict:
        """One slice as tensors (see the class docstring); negative indices count from the end."""
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} slices in {self.split}")
        index = int(index) % self._length
        group = self._group()
        source = group["source"][index][self._channels]
        fused = group["fused"][index]
        label = group["label"][index]
        if self.transform is not None:
            image = np.concatenate([source, fused], axis=0).transpose(1, 2, 0)
            out = self.transform(image=np.ascontiguousarray(image), mask=label)
            image, label = np.asarray(out["image"]), np.asarray(out["mask"])
            image = image.transpose(2, 0, 1)
            source, fused = image[:-1], image[-1:]
        case_id = group["case_id"][index]
        return {
            "source": torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32)),
            "fused": torch.from_numpy(np.ascontiguousarray(fused, dtype=np.float32)),
            "label": torch.from_numpy(np.ascontiguousarray(label).astype(np.int64)),
            "case_id": case_id.decode() if isinstance(case_id, bytes) else str(case_id),
            "slice_index": int(group["slice_index"][index]),
        }

    def close(self) -> None:
        """Close this process's file handle (reopened on the next access)."""
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __repr__(self) -> str:
        """Short description: file, split, size and channels."""
        return (f"BraTSFuse({str(self.path)!r}, split={self.split!r}, n={self._length}, "
                f"size={self.size}, modalities={','.join(self.modalities)})")
