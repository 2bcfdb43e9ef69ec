"""``BraTSFuse``: the torch Dataset over a BraTS-Fuse package's ``brats_fuse.h5`` (read lazily or from memory)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from fuse4seg.conventions import MODALITIES, NUM_CLASSES, modality_indices, parse_modalities
from fuse4seg.data.package.h5format import has_text, open_validated, read_root_attrs, read_spacing
from fuse4seg.data.package.h5primitives import READ_ERRORS, reading_data
from fuse4seg.data.package.schema import H5_NAME, SPLITS
from fuse4seg.errors import ConfigError, DataError
from fuse4seg.io import one_line


def h5_path(path: str | os.PathLike, split: str) -> Path:
    """The brats_fuse.h5 of a package directory (or ``path`` itself, a file); ConfigError if ``split`` is unknown."""
    if split not in SPLITS:
        raise ConfigError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    path = Path(path)
    return path / H5_NAME if path.is_dir() else path


def check_slices(path: str | os.PathLike, split: str, first: int, case_ids: Sequence[str], source: np.ndarray,
                 fused: np.ndarray, label: np.ndarray, slice_index: np.ndarray) -> None:
    """DataError naming file, split, index and case of the first bad slice unless source (K,C,H,W) and fused
    (K,1,H,W) are finite in [0, 1], label (K,H,W) is in {0..3} and slice_index (K,) >= 0; rows are slices
    ``first``, ``first + 1``, ... of ``split``. One vectorised pass: a bad file is named here, not inside a
    loss or a CUDA kernel."""
    k = len(case_ids)
    if k == 0:
        return
    checks = []
    for name, values in (("source", source), ("fused", fused)):
        flat = np.asarray(values).reshape(k, -1)
        # min/max propagate NaN, and NaN fails both comparisons, so this also rejects NaN/Inf
        bad = ~((flat.min(axis=1) >= 0) & (flat.max(axis=1) <= 1))
        checks.append((bad, lambda i, name=name: f"{name} has values outside [0, 1] or NaN/Inf"))
    top = np.asarray(label).reshape(k, -1).max(axis=1)
    checks.append((top > NUM_CLASSES - 1, lambda i: f"label {int(top[i])} not in {{0,1,2,3}}"))
    z = np.asarray(slice_index).reshape(k)
    checks.append((z < 0, lambda i: f"negative slice_index {int(z[i])}"))
    for bad, message in checks:
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{path}: /{split}[{first + i}] (case {case_ids[i]}): {message(i)}")


#: Splits up to this many bytes of slices are held in memory with ``cache=True`` (training's --cache):
#: reading gzip-compressed HDF5 chunks per item otherwise costs a visible share of a small network's step.
CACHE_MAX_BYTES = 2 * 1024**3
#: Bytes of one pixel of one slice in memory: four source and one fused float32 plane, one uint8 label.
_BYTES_PER_PIXEL = 5 * 4 + 1


def apply_joint(transform: Callable[..., dict], source: np.ndarray, fused: np.ndarray, label: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An albumentations transform applied jointly: sources (C, H, W) and fused (1, H, W) float32 as the HWC
    image's channels (so spatial transforms move them together), labels (H, W) uint8 as the mask."""
    image = np.concatenate([source, fused], axis=0).transpose(1, 2, 0)
    out = transform(image=np.ascontiguousarray(image), mask=np.ascontiguousarray(label))
    image = np.asarray(out["image"], dtype=np.float32).transpose(2, 0, 1)
    return image[:-1], image[-1:], np.asarray(out["mask"])


def _read_split(h5: h5py.File, path: Path, split: str) -> dict[str, object]:
    """Every slice of ``split`` of the validated open file ``h5``: source (N,4,H,W) and fused (N,1,H,W) float32,
    label (N,H,W) uint8, case_id list of str, slice_index list of int, spacing (N,3) float64 mm, text list of
    str (None in files without texts); each value checked once (:func:`check_slices`)."""
    group = h5[split]
    arrays = {}
    for name, dtype in (("source", np.float32), ("fused", np.float32), ("label", np.uint8)):
        with reading_data(path, f"/{split}/{name}"):  # a corrupt chunk names the dataset, not a traceback
            arrays[name] = np.ascontiguousarray(group[name][()], dtype=dtype)
    with reading_data(path, f"/{split}/case_id"):
        case_id = list(group["case_id"].asstr()[()])
    with reading_data(path, f"/{split}/slice_index"):
        slice_index = group["slice_index"][()]
    text = None
    if has_text(h5):
        with reading_data(path, f"/{split}/text"):  # not UTF-8: a UnicodeDecodeError, a ValueError
            text = list(group["text"].asstr()[()])
    check_slices(path, split, 0, case_id, arrays["source"], arrays["fused"], arrays["label"], slice_index)
    return {**arrays, "case_id": case_id, "slice_index": [int(z) for z in slice_index],
            "spacing": read_spacing(h5, split, path), "text": text}


class ProcessFile(Dataset):
    """A Dataset reading one HDF5 file (``self.path``) through a handle opened lazily in each process: DataLoader
    workers must not share an h5py handle, so pickling drops it and the worker reopens the file."""

    path: Path
    _h5: h5py.File | None = None
    _pid: int | None = None

    def __getstate__(self) -> dict:
        """Pickle without the open file handle (workers reopen the file)."""
        state = self.__dict__.copy()
        state["_h5"], state["_pid"] = None, None
        return state

    def _file(self) -> h5py.File:
        """The HDF5 file, opened on first use in this process."""
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def close(self) -> None:
        """Close this process's file handle (reopened on the next access)."""
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None


class BraTSFuse(ProcessFile):
    """Slices of one split: {"source": (C, H, W) float32, "fused": (1, H, W) float32,
    "label": (H, W) int64, "case_id": str, "slice_index": int, and "text": str (the slice's description) when
    the file holds texts (``has_text``; files written before them do not)}; ``spacing`` is the split's (N, 3) mm.

    ``path`` is the package directory or the .h5 file itself; its layout is declared in
    :mod:`fuse4seg.data.package.schema` and validated on construction. ``modalities`` picks and orders the
    source channels (default all four, MODALITIES order). ``cache``: read the whole split into memory
    now (if it takes at most :data:`CACHE_MAX_BYTES`; ``cached`` says whether it did), checking every
    value once; otherwise the file is opened lazily, once per process (each DataLoader worker opens
    its own handle, and the handle is never pickled), and each slice is checked when read. Either way
    the items are the same. ``transform`` is an albumentations transform called as
    ``transform(image=HWC float32, mask=HW uint8)`` with the sources and the fused image stacked as
    channels, so spatial transforms move image and mask together.
    """

    def __init__(self, path: str | os.PathLike, split: str, modalities: Sequence[str] | str | None = None,
                 transform: Callable[..., dict] | None = None, cache: bool = False) -> None:
        """Validate the file's schema and remember (or, with ``cache``, read) the split; see the class docstring."""
        self.path = h5_path(path, split)
        self.split = split
        self.modalities = MODALITIES if modalities is None else parse_modalities(modalities)
        self._channels = modality_indices(self.modalities)
        self.transform = transform
        self._memory: dict[str, object] | None = None
        h5, counts = open_validated(self.path)
        with h5:
            self._length = counts[split]
            self.size = (counts["height"], counts["width"])
            self.attrs = read_root_attrs(h5)
            self.has_text = has_text(h5)
            if cache and 0 < self._length * self.size[0] * self.size[1] * _BYTES_PER_PIXEL <= CACHE_MAX_BYTES:
                self._memory = _read_split(h5, self.path, split)
        self._spacing = None if self._memory is None else self._memory["spacing"]
        self._h5 = None
        self._pid: int | None = None

    def __len__(self) -> int:
        """Number of slices in the split."""
        return self._length

    @property
    def cached(self) -> bool:
        """Whether the split is held in memory."""
        return self._memory is not None

    @property
    def spacing(self) -> np.ndarray:
        """(N, 3) float64 mm (dy, dx, dz) of the split's slices (read on first use when not cached)."""
        if self._spacing is None:
            self._spacing = read_spacing(self._file(), self.split, self.path)
        return self._spacing

    @property
    def case_ids(self) -> list[str]:
        """The split's patients: sorted unique case ids of its slices."""
        if self._memory is not None:
            return sorted(set(self._memory["case_id"]))
        try:
            return sorted(set(self._file()[self.split]["case_id"].asstr()[()]))
        except READ_ERRORS as exc:
            raise DataError(f"{self.path}: /{self.split}/case_id is unreadable ({one_line(exc)})") from None

    def texts(self) -> list[str] | None:
        """Every slice's text in file order, or None when the file holds none."""
        if not self.has_text:
            return None
        if self._memory is not None:
            return list(self._memory["text"])
        try:
            return list(self._file()[self.split]["text"].asstr()[()])
        except READ_ERRORS as exc:  # not UTF-8: a UnicodeDecodeError, a ValueError
            raise DataError(f"{self.path}: /{self.split}/text is unreadable ({one_line(exc)})") from None

    def _channels_of(self, source: np.ndarray) -> np.ndarray:
        """The chosen modality channels of a (4, H, W) source (itself when all four, in order)."""
        return source if self.modalities == MODALITIES else source[self._channels]

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str, int, str | None]:
        """Slice ``index`` (in range) as (source (C,H,W), fused (1,H,W), label (H,W) uint8, case id, slice index,
        text or None)."""
        if self._memory is not None:
            memory = self._memory
            text = None if memory["text"] is None else memory["text"][index]
            return (self._channels_of(memory["source"][index]), memory["fused"][index], memory["label"][index],
                    memory["case_id"][index], memory["slice_index"][index], text)
        try:
            group = self._file()[self.split]
            source = self._channels_of(group["source"][index])
            fused = group["fused"][index]
            label = group["label"][index]
            case_id = group["case_id"][index]
            case_id = case_id.decode() if isinstance(case_id, bytes) else str(case_id)
            slice_index = int(group["slice_index"][index])
            text = group["text"].asstr()[index] if self.has_text else None
        except READ_ERRORS as exc:  # corrupt chunk, file replaced since construction
            raise DataError(f"{self.path}: /{self.split}[{index}]: unreadable slice ({one_line(exc)})") from None
        check_slices(self.path, self.split, index, [case_id], source[None], fused[None], label[None],
                     np.array([slice_index]))
        return source, fused, label, case_id, slice_index, text

    def __getitem__(self, index: int) -> dict:
        """One slice as tensors (see the class docstring); negative indices count from the end."""
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} slices in {self.split}")
        source, fused, label, case_id, slice_index, text = self._read(int(index) % self._length)
        if self.transform is not None:
            source, fused, label = apply_joint(self.transform, source, fused, label)
        item = {
            "source": torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32)),
            "fused": torch.from_numpy(np.ascontiguousarray(fused, dtype=np.float32)),
            "label": torch.from_numpy(np.ascontiguousarray(label).astype(np.int64)),
            "case_id": case_id,
            "slice_index": slice_index,
        }
        return item if text is None else {**item, "text": text}

    def __repr__(self) -> str:
        """Short description: file, split, size and channels."""
        return (f"BraTSFuse({str(self.path)!r}, split={self.split!r}, n={self._length}, "
                f"size={self.size}, modalities={','.join(self.modalities)})")
