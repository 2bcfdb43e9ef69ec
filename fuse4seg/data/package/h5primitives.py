"""HDF5 primitives shared by the slice layout (:mod:`fuse4seg.data.package.h5format`) and the volume layout
(:mod:`fuse4seg.data.package.h5volumes`) of ``brats_fuse.h5``: UTF-8 string arrays and deflate chunks as the
writer stores them, read errors turned into one-line DataErrors, and the header checks of one declared
dataset (dtype, shape, size limits, storage, attributes) and of one group's members (hard links only).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from fuse4seg.data.package.schema import (
    COMPRESSION,
    MAX_SLICE_SIDE,
    MAX_SLICES,
    MAX_VOLUME_VOXELS,
    UTF8,
    DatasetSpec,
    resolve,
    shape_text,
)
from fuse4seg.errors import DataError
from fuse4seg.io import one_line

STRING = h5py.string_dtype("utf-8")
#: What h5py raises while reading the data of a damaged file: a corrupt chunk fails in the filter
#: pipeline or at a bad address (OSError), a corrupt string is undecodable (UnicodeDecodeError, a
#: ValueError), a broken heap or type surfaces as RuntimeError.
READ_ERRORS = (OSError, ValueError, RuntimeError)
#: The only filter the writer puts on a compressed dataset (gzip = HDF5's deflate filter).
_DEFLATE = h5py.h5z.FILTER_DEFLATE


@contextmanager
def reading_data(where: str | Path, what: str) -> Iterator[None]:
    """Turn a :data:`READ_ERRORS` raised in the block into a one-line DataError naming ``where`` (the file)
    and ``what`` (the dataset or slice being read)."""
    try:
        yield
    except READ_ERRORS as exc:
        raise DataError(f"{where}: {what}: unreadable data ({type(exc).__name__}: {one_line(exc)})") from None


def string_array(values: list[str] | tuple[str, ...]) -> np.ndarray:
    """A 1-D array of UTF-8 strings as h5py stores it (variable-length str)."""
    return np.array(list(values), dtype=STRING)


def compress(chunk: np.ndarray, dtype: str) -> bytes:
    """One chunk's bytes as HDF5's deflate filter stores them at the schema's level (a zlib stream)."""
    return zlib.compress(np.ascontiguousarray(chunk, dtype=dtype).tobytes(), int(COMPRESSION["compression_opts"]))


def attr_text(value: object) -> str:
    """An HDF5 attribute read back as Python str (h5py returns str or bytes for strings)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def show_value(value: object) -> str:
    """A short one-line rendering of an attribute value for an error message (at most 60 chars)."""
    return one_line(repr(value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value))[:60]


def short_name(text: str, limit: int = 120) -> str:
    """A name or path read from the file, on one line and at most ``limit`` characters (its end kept)."""
    text = one_line(text)
    return text if len(text) <= limit else "..." + text[3 - limit:]


def _bind(shape: tuple[int, ...], symbolic: tuple[int | str, ...], sizes: dict[str, int]) -> bool:
    """Whether ``shape`` fits ``symbolic`` given the sizes bound so far; binds new symbols on success."""
    if len(shape) != len(symbolic):
        return False
    bound = dict(sizes)
    for actual, want in zip(shape, symbolic):
        if isinstance(want, str):
            want = bound.setdefault(want, actual)
        if actual != want:
            return False
    sizes.update(bound)
    return True


def check_dataset(group: h5py.Group, spec: DatasetSpec, sizes: dict[str, int], where: str | Path) -> None:
    """DataError unless ``group`` holds ``spec``'s dataset in the file itself, with its dtype, shape (binding
    N, H, W or D, H, W in ``sizes``) within the limits, storage (:func:`_check_storage`) and attributes."""
    name = f"{group.name}/{spec.name}"
    if spec.name not in group or not isinstance(group[spec.name], h5py.Dataset):
        raise DataError(f"{where}: missing dataset {name}")
    dataset = group[spec.name]
    # Where the bytes live, before anything else: a virtual dataset or external storage makes every
    # reader read other files (or zeros, when they are missing) that no hash in croissant.json covers.
    if dataset.is_virtual:
        raise DataError(f"{where}: {name} is a virtual dataset (its data lives in other files); "
                        "a package stores its own data")
    if dataset.id.get_create_plist().get_external_count() > 0:
        raise DataError(f"{where}: {name} stores its data in external files; a package stores its own data")
    if spec.dtype == UTF8:
        info = h5py.check_string_dtype(dataset.dtype)
        dtype_ok = info is not None and info.encoding == "utf-8"
    else:
        dtype_ok = dataset.dtype == np.dtype(spec.dtype)
    if not (_bind(dataset.shape, spec.shape, sizes) and dtype_ok):
        want = shape_text(tuple(sizes.get(d, d) if isinstance(d, str) else d for d in spec.shape))
        got = f"{dataset.dtype}{dataset.shape}"
        # Images read "is X, expected Y", per-slice vectors "must be Y, got X": the format-1 wording, kept.
        if "H" in spec.shape:
            raise DataError(f"{where}: {name} is {got}, expected {spec.dtype}{want}")
        expected = f"{want} UTF-8 strings" if spec.dtype == UTF8 else f"{spec.dtype}{want}"
        raise DataError(f"{where}: {name} must be {expected}, got {got}")
    _check_limits(sizes, name, where)
    _check_storage(dataset, spec, sizes, where)
    for key, values in spec.attrs:
        found = tuple(attr_text(v) for v in np.atleast_1d(dataset.attrs.get(key, [])))
        if found != values:
            raise DataError(f"{where}: {name} attribute {key} is {found}, expected {values}")


def _check_limits(sizes: dict[str, int], name: str, where: str | Path) -> None:
    """DataError unless the sizes bound from ``name``'s header are within MAX_SLICES, MAX_SLICE_SIDE and (volumes)
    MAX_VOLUME_VOXELS (checked before any chunk is counted or read, so a crafted header costs nothing)."""
    if sizes.get("N", 0) > MAX_SLICES:
        raise DataError(f"{where}: {name} declares {sizes['N']} slices, over the limit of {MAX_SLICES} per split")
    if "H" in sizes and not (1 <= sizes["H"] <= MAX_SLICE_SIDE and 1 <= sizes["W"] <= MAX_SLICE_SIDE):
        raise DataError(f"{where}: {name} declares {sizes['H']} x {sizes['W']} pixel slices; the limit is 1 to "
                        f"{MAX_SLICE_SIDE} pixels per side")
    if "D" in sizes and not (sizes["D"] >= 1 and sizes["D"] * sizes["H"] * sizes["W"] <= MAX_VOLUME_VOXELS):
        raise DataError(f"{where}: {name} declares a {sizes['D']} x {sizes['H']} x {sizes['W']} volume; the limit is "
                        f"1 to {MAX_VOLUME_VOXELS} voxels")


def _check_storage(dataset: h5py.Dataset, spec: DatasetSpec, sizes: dict[str, int], where: str | Path) -> None:
    """DataError unless ``dataset`` is stored as the writer stores ``spec``: chunked with the declared chunk
    shape, gzip (deflate) alone when compressed and no filter otherwise, and every chunk written."""
    name = dataset.name
    chunks = resolve(spec.chunks, sizes)
    if dataset.chunks != chunks:
        layout = f"chunked as {dataset.chunks}" if dataset.chunks else "not chunked"
        raise DataError(f"{where}: {name} is {layout}, expected chunks {chunks}")
    plist = dataset.id.get_create_plist()
    filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    # Only the writer's filter: any other (lzf, shuffle, scale-offset, a plugin) is code the file
    # makes every reader run, and a file this version never writes.
    if [f[0] for f in filters] != ([_DEFLATE] if spec.compressed else []):
        found = ", ".join(attr_text(f[3]) or str(f[0]) for f in filters) or "none"
        raise DataError(f"{where}: {name} has filters ({found}), expected "
                        f"{'gzip only' if spec.compressed else 'none'}")
    # The writer stores every chunk; a missing one reads as zeros (a truncated build or a crafted header
    # that declares more slices than the file holds).
    expected = math.prod(-(-n // c) for n, c in zip(dataset.shape, chunks))
    stored = dataset.id.get_num_chunks()
    if stored != expected:
        raise DataError(f"{where}: {name} stores {stored} of its {expected} chunks (missing chunks would "
                        "read as zeros)")
    if spec.dtype == UTF8:
        _check_string_lengths(dataset, spec.max_bytes, where)


def _check_string_lengths(dataset: h5py.Dataset, limit: int, where: str | Path) -> None:
    """DataError unless every string of a validated 1-D string ``dataset`` (raw chunks, all stored) declares at
    most ``limit`` bytes, read from the chunks' raw bytes: HDF5 allocates a declared length before reading
    the string."""
    per_chunk = dataset.chunks[0]
    for start in range(0, dataset.shape[0], per_chunk):
        raw = dataset.id.read_direct_chunk((start,))[1]
        # HDF5 file format: each stored string is its length (4 bytes, little-endian) and a global heap id.
        if len(raw) % (4 * per_chunk):
            raise DataError(f"{where}: {dataset.name} has a malformed chunk at {start} ({len(raw)} bytes)")
        longest = int(np.frombuffer(raw, "<u4").reshape(per_chunk, -1)[:, 0].max())
        if longest > limit:
            raise DataError(f"{where}: {dataset.name} holds a string of {longest} bytes, over the limit of "
                            f"{limit}")


def check_members(group: h5py.Group, expected: tuple[str, ...] | None, where: str | Path) -> None:
    """DataError unless every member of ``group`` is a hard link named in ``expected`` (None: any name): a soft
    or external link would send readers to paths, or files, outside the schema (``visititems`` skips links,
    so each link is looked at itself)."""
    prefix = group.name.rstrip("/")
    for member in group:
        link = group.get(member, getlink=True)
        path = short_name(f"{prefix}/{member}")  # a crafted name may hold newlines or be huge
        if isinstance(link, h5py.SoftLink):
            raise DataError(f"{where}: {path} is a soft link (to {short_name(link.path)}); a package holds only its "
                            "own datasets and groups")
        if isinstance(link, h5py.ExternalLink):
            raise DataError(f"{where}: {path} is an external link (to {short_name(link.path)} in file "
                            f"{short_name(link.filename)}); a package holds only its own datasets and groups")
        if not isinstance(link, h5py.HardLink):
            raise DataError(f"{where}: {path} is a {type(link).__name__}, not a hard link")
        if expected is not None and member not in expected:
            raise DataError(f"{where}: unexpected object {path} (expected only {', '.join(expected)})")
