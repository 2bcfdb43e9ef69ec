"""Writing ``brats_fuse.h5`` and validating it before use, both driven by :mod:`fuse4seg.data.package.schema`.

The datasets, their shapes, dtypes, chunking and the root attributes are declared once in
:mod:`fuse4seg.data.package.schema` (read it for the layout); this module turns that declaration into
h5py calls and checks.

``slice_size`` records the slice geometry rule: the ``--size`` of the build (every case cropped to
its brain box and resized to slice_size x slice_size, so H = W = slice_size), or 0 when slices keep
the volume's in-plane size. ``fuse4seg fuse`` applies the same rule to a new case.

``spacing`` makes distances physical: with ``--size`` S a case cropped to a brain box of side B
voxels has pixels of (zoom_x * B / S, zoom_y * B / S) mm (one box per case, so all its slices
agree), without it the volume's voxel size; dz is the volume's voxel size along z (consecutive
``slice_index`` values are dz mm apart).

Image datasets are chunked one slice per chunk (``chunks=(1, ...)``) so a random slice costs one
chunk read, and compressed with gzip level 1 without the shuffle filter: ``benchmarks/build.py``
compares gzip 1/4, lzf, with and without shuffle; gzip-1 was within 5% of the smallest file
(gzip-4), about 2x faster to read and write than gzip-4, and smaller and faster to read than lzf
(shuffle made these normalised float32 slices larger). Object modification
times are not stored (``track_times=False``) so a rebuild with the same inputs is byte-identical.

A package is self-contained and its sizes are bounded: :func:`validate_schema` refuses links, extra
objects, other files' data, other filters or chunking, unstored chunks and sizes over the limits of
:mod:`fuse4seg.data.package.schema`, from the header, before any data is read. The optional volumetric
layout (``/volumes``) is written and checked by :mod:`fuse4seg.data.package.h5volumes` with the same rules:
the per-dataset checks and the string and chunk encoders both layouts share are in
:mod:`fuse4seg.data.package.h5primitives`.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from fuse4seg.conventions import parse_modalities
from fuse4seg.data.package.h5primitives import (
    STRING,
    attr_text,
    check_dataset,
    check_members,
    compress,
    reading_data,
    show_value,
    string_array,
)
from fuse4seg.data.package.h5volumes import validate_volumes
from fuse4seg.data.package.schema import (
    COMPRESSION,
    DATASETS,
    FORMAT_VERSION,
    H5_NAME,
    ROOT_ATTRIBUTES,
    SPLITS,
    TEXT_ATTRIBUTE,
    UTF8,
    VOLUMES_GROUP,
    DatasetSpec,
    resolve,
    split_datasets,
)
from fuse4seg.errors import ConfigError, DataError
from fuse4seg.io import one_line

__all__ = ["COMPRESSION", "FORMAT_VERSION", "H5_NAME", "SPLITS", "append_encoded", "create_split_group",
           "encode_slices", "has_text", "has_volumes", "open_validated", "read_root_attrs", "read_spacing", "slice_size",
           "validate_schema"]

#: What to say about a file of an older format version that this version no longer reads.
REBUILD = "rebuild it with `fuse4seg build-benchmark`"


def _h5_dtype(spec: DatasetSpec) -> np.dtype:
    """The h5py dtype of a declared dataset."""
    return STRING if spec.dtype == UTF8 else np.dtype(spec.dtype)


def create_split_group(h5: h5py.File, split: str, height: int, width: int) -> h5py.Group:
    """Create one empty, appendable split group with every dataset of the schema (in declaration order) that the
    file's root attributes (written first) announce."""
    group = h5.create_group(split)
    sizes = {"N": 0, "H": height, "W": width}
    for spec in split_datasets(h5.attrs):
        shape = resolve(spec.shape, sizes)
        dataset = group.create_dataset(spec.name, shape=shape, maxshape=(None, *shape[1:]), dtype=_h5_dtype(spec),
                                       chunks=resolve(spec.chunks, sizes), track_times=False,
                                       **(COMPRESSION if spec.compressed else {}))
        for key, values in spec.attrs:
            dataset.attrs[key] = string_array(values)
    return group


def encode_slices(source: np.ndarray, fused: np.ndarray, label: np.ndarray) -> dict[str, list[bytes]]:
    """Compress each slice's chunk of source (K,4,H,W) float32, fused (K,1,H,W) float32 and label
    (K,H,W) uint8 (the schema's compressed datasets) exactly as HDF5's deflate filter would (a zlib
    stream at the same level).

    Done in the builder's worker processes so the compression runs in parallel; the writer then
    stores the chunks as they are (:func:`append_encoded`).
    """
    arrays = {"source": source, "fused": fused, "label": label}
    return {spec.name: [compress(item, spec.dtype) for item in arrays[spec.name]] for spec in DATASETS if spec.compressed}


def append_encoded(group: h5py.Group, chunks: dict[str, list[bytes]], case_id: str,
                   slice_index: np.ndarray, spacing: np.ndarray, text: list[str] | None = None) -> None:
    """Append K slices of one case from :func:`encode_slices` chunks, plus case_id, slice_index, spacing ((3,)
    or (K, 3) mm: dy, dx, dz; see the module doc) and, when the group holds ``text``, the K descriptions."""
    k = len(slice_index)
    start = group["source"].shape[0]
    for name, encoded in chunks.items():
        dataset = group[name]
        if len(encoded) != k:
            raise ValueError(f"{name}: {len(encoded)} chunks for {k} slices")
        dataset.resize(start + k, axis=0)
        zeros = (0,) * (dataset.ndim - 1)
        for i, chunk in enumerate(encoded):
            dataset.id.write_direct_chunk((start + i, *zeros), chunk)
    spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float32), (k, 3))
    columns = [("case_id", string_array([case_id] * k)), ("slice_index", slice_index), ("spacing", spacing)]
    if "text" in group:
        if text is None or len(text) != k:
            raise ValueError(f"text: {None if text is None else len(text)} descriptions for {k} slices")
        columns.append(("text", string_array(text)))
    for name, values in columns:
        dataset = group[name]
        dataset.resize(start + k, axis=0)
        dataset[start:start + k] = values


def read_root_attrs(h5: h5py.File) -> dict[str, object]:
    """The root attributes as Python values (strings decoded, string arrays as tuples); call it on a
    file that passed :func:`validate_schema`, which checks that the schema's attributes decode."""
    out: dict[str, object] = {}
    for key, value in h5.attrs.items():
        if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
            out[key] = tuple(attr_text(v) for v in value)
        elif isinstance(value, np.generic):
            out[key] = value.item()
        else:
            out[key] = attr_text(value) if isinstance(value, (str, bytes)) else value
    return out


def _text_attr(h5: h5py.File, key: str, where: str | Path) -> str:
    """A root attribute that must be one UTF-8 string; DataError naming it otherwise."""
    value = h5.attrs[key]
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if not isinstance(value, (str, bytes)):
        raise DataError(f"{where}: root attribute {key} must be a string, got {type(value).__name__} {show_value(value)}")
    try:
        # h5py hands invalid UTF-8 back as lone surrogates; encoding finds them before a print does.
        return attr_text(value).encode("utf-8").decode("utf-8")
    except UnicodeError:
        raise DataError(f"{where}: root attribute {key} is not valid UTF-8 text") from None


def _integer_attr(h5: h5py.File, key: str, where: str | Path, minimum: int | None = None,
                  maximum: int | None = None) -> int:
    """A root attribute that must be one integer (in [``minimum``, ``maximum``]); DataError naming it otherwise."""
    value = np.asarray(h5.attrs[key])
    if value.shape != () or value.dtype.kind not in "iu" or (minimum is not None and int(value) < minimum) \
            or (maximum is not None and int(value) > maximum):
        bound = (f" in [{minimum}, {maximum}]" if maximum is not None else
                 f" >= {minimum}" if minimum is not None else "")
        raise DataError(f"{where}: root attribute {key} must be one integer{bound}, got "
                        f"{value.dtype}{value.shape} {show_value(value)}")
    return int(value)


def _modalities_attr(h5: h5py.File, key: str, where: str | Path) -> tuple[str, ...]:
    """A root attribute that must be a 1-D array of known modality names; DataError naming it otherwise."""
    value = h5.attrs[key]
    if not (isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "OSU"
            and all(isinstance(v, (str, bytes)) for v in value.tolist())):
        raise DataError(f"{where}: root attribute {key} must be a 1-D array of modality names, got "
                        f"{type(value).__name__} {show_value(value)}")
    try:
        return parse_modalities(tuple(attr_text(v) for v in value))
    except ConfigError as exc:
        raise DataError(f"{where}: root attribute {key} is invalid ({exc})") from None


def _check_format_version(h5: h5py.File, where: str | Path) -> None:
    """DataError unless format_version is this module's; an older file is told to rebuild."""
    version = _integer_attr(h5, "format_version", where)
    if 0 < version < FORMAT_VERSION:
        raise DataError(f"{where}: format version {version} is no longer read; {REBUILD}")
    if version != FORMAT_VERSION:
        raise DataError(f"{where}: format_version {version} is not supported (expected {FORMAT_VERSION})")


def _check_root_attrs(h5: h5py.File, where: str | Path) -> None:
    """Check that the declared root attributes exist and have their declared kinds (never trusting the file)."""
    if "format_version" in h5.attrs:  # first: an old file is told to rebuild, not what it lacks
        _check_format_version(h5, where)
    missing = [a.name for a in ROOT_ATTRIBUTES if a.required and a.name not in h5.attrs]
    if missing:
        raise DataError(f"{where}: missing root attribute(s) {', '.join(missing)}")
    readers = {"integer": _integer_attr, "text": _text_attr, "modalities": _modalities_attr}
    for spec in ROOT_ATTRIBUTES:
        if spec.name in h5.attrs:  # an optional one, when absent, reads as its minimum
            extra = {"minimum": spec.minimum, "maximum": spec.maximum} if spec.kind == "integer" else {}
            readers[spec.kind](h5, spec.name, where, **extra)


def slice_size(h5: h5py.File, where: str | Path) -> int:
    """The root attribute slice_size (pixels; 0 = volume size kept); DataError naming ``where`` unless it
    is one non-negative integer."""
    return _integer_attr(h5, "slice_size", where, minimum=0)


def has_volumes(h5: h5py.File) -> bool:
    """Whether a file whose root attributes passed :func:`validate_schema` declares the volumes layout
    (root attribute ``volumes`` = 1; absent in files written before it: no volumes)."""
    return int(np.asarray(h5.attrs.get("volumes", 0))) == 1


def has_text(h5: h5py.File) -> bool:
    """Whether a file whose root attributes passed :func:`validate_schema` holds the per-slice descriptions
    ``text`` (root attribute ``text`` = 1; absent in files written before them)."""
    return int(np.asarray(h5.attrs.get(TEXT_ATTRIBUTE, 0))) == 1


def validate_schema(h5: h5py.File, where: str | Path) -> dict[str, int]:
    """Check attributes, groups, links, dtypes, shapes, size limits and storage against the schema without
    reading the data (only the raw length fields of the stored strings).

    Returns {split: number of slices} plus "height" and "width"; DataError naming ``where`` and the
    offending attribute or dataset on any mismatch, whatever types the file holds. The volumes layout,
    when declared, is checked too (:func:`fuse4seg.data.package.h5volumes.validate_volumes`).
    """
    try:
        return _validate_schema(h5, where)
    except DataError:
        raise
    # A crafted file can make h5py or NumPy fail in many ways (undecodable strings, empty dataspaces,
    # unsupported types, broken links); each is a bad data file, not a bug to show as a traceback.
    except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError, RuntimeError) as exc:
        raise DataError(f"{where}: malformed BraTS-Fuse HDF5 content ({type(exc).__name__}: {one_line(exc)})") \
            from None


def _validate_schema(h5: h5py.File, where: str | Path) -> dict[str, int]:
    """:func:`validate_schema` without the catch-all for unexpected h5py/NumPy errors."""
    _check_root_attrs(h5, where)
    volumes = has_volumes(h5)
    if VOLUMES_GROUP in h5 and not volumes:
        raise DataError(f"{where}: /{VOLUMES_GROUP} is present but root attribute volumes is not 1")
    check_members(h5, SPLITS + ((VOLUMES_GROUP,) if volumes else ()), where)
    counts: dict[str, int] = {}
    size: tuple[int, int] | None = None
    for split in SPLITS:
        if split not in h5 or not isinstance(h5[split], h5py.Group):
            raise DataError(f"{where}: missing group /{split}")
        group = h5[split]
        declared = split_datasets(h5.attrs)  # the root attributes are checked: optional ones are 0 or 1
        check_members(group, tuple(spec.name for spec in declared), where)
        sizes: dict[str, int] = {}  # N, H, W of this split, bound by the first dataset that has them
        for spec in declared:
            check_dataset(group, spec, sizes, where)
        if size is not None and (sizes["H"], sizes["W"]) != size:
            raise DataError(f"{where}: /{split} slices are {(sizes['H'], sizes['W'])}, other splits {size}")
        size = (sizes["H"], sizes["W"])
        counts[split] = sizes["N"]
    side = slice_size(h5, where)
    if side and size != (side, side):
        raise DataError(f"{where}: root attribute slice_size is {side} but the slices are {size[0]} x {size[1]}")
    counts["height"], counts["width"] = size
    if volumes:
        validate_volumes(h5, where)
    return counts


def read_spacing(h5: h5py.File, split: str, where: str | Path) -> np.ndarray:
    """(N, 3) float64 mm (dy, dx, dz) of a validated file's ``split``; DataError naming ``where`` unless every
    value is finite and > 0."""
    with reading_data(where, f"/{split}/spacing"):
        values = np.asarray(h5[split]["spacing"][()], dtype=np.float64).reshape(-1, 3)
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise DataError(f"{where}: /{split}/spacing has values that are not finite and > 0 mm")
    return values


def open_validated(path: str | Path) -> tuple[h5py.File, dict[str, int]]:
    """Open ``path`` read-only and validate its schema; DataError if unreadable or invalid (a file of an
    older format version is told to rebuild)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such HDF5 file")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({one_line(exc)})") from None
    try:
        return h5, validate_schema(h5, path)
    except BaseException:
        h5.close()
        raise
