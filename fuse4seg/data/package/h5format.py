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
layout (``/volumes``) is written and checked by :mod:`fuse4seg.data.package.h5volumes` with the same rules.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from fuse4seg.conventions import parse_modalities
from fuse4seg.data.package.schema import (
    COMPRESSION,
    DATASETS,
    FORMAT_VERSION,
    H5_NAME,
    MAX_SLICE_SIDE,
    MAX_SLICES,
    MAX_VOLUME_VOXELS,
    ROOT_ATTRIBUTES,
    SPLITS,
    TEXT_ATTRIBUTE,
    UTF8,
    VOLUMES_GROUP,
    DatasetSpec,
    resolve,
    shape_text,
    split_datasets,
)
from fuse4seg.errors import ConfigError, DataError
from fuse4seg.io import one_line

__all__ = ["COMPRESSION", "FORMAT_VERSION", "H5_NAME", "READ_ERRORS", "SPLITS", "append_encoded", "compress",
           "create_split_group", "encode_slices", "has_text", "has_volumes", "open_validated", "read_root_attrs", "read_spacing",
           "reading_data", "slice_size", "string_array", "validate_schema"]

STRING = h5py.string_dtype("utf-8")
#: What to say about a file of an older format version that this version no longer reads.
REBUILD = "rebuild it with `fuse4seg build-benchmark`"
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


def _h5_dtype(spec: DatasetSpec) -> np.dtype:
    """The h5py dtype of a declared dataset."""
    return STRING if spec.dtype == UTF8 else np.dtype(spec.dtype)


def string_array(values: list[str] | tuple[str, ...]) -> np.ndarray:
    """A 1-D array of UTF-8 strings as h5py stores it (variable-length str)."""
    return np.array(list(values), dtype=STRING)


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


def compress(chunk: np.ndarray, dtype: str) -> bytes:
    """One chunk's bytes as HDF5's deflate filter stores them at the schema's level (a zlib stream)."""
    return zlib.compress(np.ascontiguousarray(chunk, dtype=dtype).tobytes(), int(COMPRESSION["compression_opts"]))


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


def _attr_text(value: object) -> str:
    """An HDF5 attribute read back as Python str (h5py returns str or bytes for strings)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _show(value: object) -> str:
    """A short one-line rendering of an attribute value for an error message (at most 60 chars)."""
    return one_line(repr(value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value))[:60]


def _name(text: str, limit: int = 120) -> str:
    """A name or path read from the file, on one line and at most ``limit`` characters (its end kept)."""
    text = one_line(text)
    return text if len(text) <= limit else "..." + text[3 - limit:]


def read_root_attrs(h5: h5py.File) -> dict[str, object]:
    """The root attributes as Python values (strings decoded, string arrays as tuples); call it on a
    file that passed :func:`validate_schema`, which checks that the schema's attributes decode."""
    out: dict[str, object] = {}
    for key, value in h5.attrs.items():
        if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
            out[key] = tuple(_attr_text(v) for v in value)
        elif isinstance(value, np.generic):
            out[key] = value.item()
        else:
            out[key] = _attr_text(value) if isinstance(value, (str, bytes)) else value
    return out


def _text_attr(h5: h5py.File, key: str, where: str | Path) -> str:
    """A root attribute that must be one UTF-8 string; DataError naming it otherwise."""
    value = h5.attrs[key]
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if not isinstance(value, (str, bytes)):
        raise DataError(f"{where}: root attribute {key} must be a string, got {type(value).__name__} {_show(value)}")
    try:
        # h5py hands invalid UTF-8 back as lone surrogates; encoding finds them before a print does.
        return _attr_text(value).encode("utf-8").decode("utf-8")
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
                        f"{value.dtype}{value.shape} {_show(value)}")
    return int(value)


def _modalities_attr(h5: h5py.File, key: str, where: str | Path) -> tuple[str, ...]:
    """A root attribute that must be a 1-D array of known modality names; DataError naming it otherwise."""
    value = h5.attrs[key]
    if not (isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "OSU"
            and all(isinstance(v, (str, bytes)) for v in value.tolist())):
        raise DataError(f"{where}: root attribute {key} must be a 1-D array of modality names, got "
                        f"{type(value).__name__} {_show(value)}")
    try:
        return parse_modalities(tuple(_attr_text(v) for v in value))
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


def _check_dataset(group: h5py.Group, spec: DatasetSpec, sizes: dict[str, int], where: str | Path) -> None:
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
        found = tuple(_attr_text(v) for v in np.atleast_1d(dataset.attrs.get(key, [])))
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
        found = ", ".join(_attr_text(f[3]) or str(f[0]) for f in filters) or "none"
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


def _check_members(group: h5py.Group, expected: tuple[str, ...] | None, where: str | Path) -> None:
    """DataError unless every member of ``group`` is a hard link named in ``expected`` (None: any name): a soft
    or external link would send readers to paths, or files, outside the schema (``visititems`` skips links,
    so each link is looked at itself)."""
    prefix = group.name.rstrip("/")
    for member in group:
        link = group.get(member, getlink=True)
        path = _name(f"{prefix}/{member}")  # a crafted name may hold newlines or be huge
        if isinstance(link, h5py.SoftLink):
            raise DataError(f"{where}: {path} is a soft link (to {_name(link.path)}); a package holds only its "
                            "own datasets and groups")
        if isinstance(link, h5py.ExternalLink):
            raise DataError(f"{where}: {path} is an external link (to {_name(link.path)} in file "
                            f"{_name(link.filename)}); a package holds only its own datasets and groups")
        if not isinstance(link, h5py.HardLink):
            raise DataError(f"{where}: {path} is a {type(link).__name__}, not a hard link")
        if expected is not None and member not in expected:
            raise DataError(f"{where}: unexpected object {path} (expected only {', '.join(expected)})")


def _validate_schema(h5: h5py.File, where: str | Path) -> dict[str, int]:
    """:func:`validate_schema` without the catch-all for unexpected h5py/NumPy errors."""
    _check_root_attrs(h5, where)
    volumes = has_volumes(h5)
    if VOLUMES_GROUP in h5 and not volumes:
        raise DataError(f"{where}: /{VOLUMES_GROUP} is present but root attribute volumes is not 1")
    _check_members(h5, SPLITS + ((VOLUMES_GROUP,) if volumes else ()), where)
    counts: dict[str, int] = {}
    size: tuple[int, int] | None = None
    for split in SPLITS:
        if split not in h5 or not isinstance(h5[split], h5py.Group):
            raise DataError(f"{where}: missing group /{split}")
        group = h5[split]
        declared = split_datasets(h5.attrs)  # the root attributes are checked: optional ones are 0 or 1
        _check_members(group, tuple(spec.name for spec in declared), where)
        sizes: dict[str, int] = {}  # N, H, W of this split, bound by the first dataset that has them
        for spec in declared:
            _check_dataset(group, spec, sizes, where)
        if size is not None and (sizes["H"], sizes["W"]) != size:
            raise DataError(f"{where}: /{split} slices are {(sizes['H'], sizes['W'])}, other splits {size}")
        size = (sizes["H"], sizes["W"])
        counts[split] = sizes["N"]
    side = slice_size(h5, where)
    if side and size != (side, side):
        raise DataError(f"{where}: root attribute slice_size is {side} but the slices are {size[0]} x {size[1]}")
    counts["height"], counts["width"] = size
    if volumes:
        from fuse4seg.data.package.h5volumes import validate_volumes  # builds on this module's checks

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
