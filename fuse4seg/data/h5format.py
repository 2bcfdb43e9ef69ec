"""The BraTS-Fuse HDF5 schema (``brats_fuse.h5``): writing it and validating it before use.

Layout (format version 1)::

    /                 attrs: format_version, fusion_inputs, fusion_method, source_dataset,
                             label_scheme, builder_version, created, slice_size (optional)
    /{train,val,test}/source       (N, 4, H, W) float32 in [0, 1], attr modalities = t1,t1ce,t2,flair
                     /fused        (N, 1, H, W) float32 in [0, 1]
                     /label        (N, H, W)    uint8 in {0, 1, 2, 3} (canonical: 0 bg, 1 NCR, 2 ED, 3 ET)
                     /case_id      (N,)         UTF-8 str
                     /slice_index  (N,)         int32, axial index z into the case's volume
                     /spacing      (N, 3)       float32 mm (optional): (dy, dx, dz) = physical size of a
                                                pixel along H and along W, and the original slice thickness

``slice_size`` records the slice geometry rule: the ``--size`` of the build (every case cropped to
its brain box and resized to slice_size x slice_size, so H = W = slice_size), or 0 when slices keep
the volume's in-plane size. Files written before it existed lack it (still format 1): readers then
know only H and W. ``fuse4seg fuse`` applies the same rule to a new case.

``spacing`` makes distances physical: with ``--size`` S a case cropped to a brain box of side B
voxels has pixels of (zoom_x * B / S, zoom_y * B / S) mm (one box per case, so all its slices
agree), without it the volume's voxel size; dz is the volume's voxel size along z (consecutive
``slice_index`` values are dz mm apart). Files written before it existed lack it (still format 1):
readers then have distances in pixels only (:func:`read_spacing` returns None).

Image datasets are chunked one slice per chunk (``chunks=(1, ...)``) so a random slice costs one
chunk read, and compressed with gzip level 1 without the shuffle filter: ``benchmarks/build.py``
compares gzip 1/4, lzf, with and without shuffle; gzip-1 was within 5% of the smallest file
(gzip-4), about 2x faster to read and write than gzip-4, and smaller and faster to read than lzf
(shuffle made these normalised float32 slices larger). Object modification
times are not stored (``track_times=False``) so a rebuild with the same inputs is byte-identical.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import h5py
import numpy as np

from fuse4seg.conventions import MODALITIES, parse_modalities
from fuse4seg.errors import ConfigError, DataError

FORMAT_VERSION = 1
H5_NAME = "brats_fuse.h5"
SPLITS: tuple[str, ...] = ("train", "val", "test")
ROOT_ATTRS: tuple[str, ...] = (
    "format_version", "fusion_inputs", "fusion_method", "source_dataset", "label_scheme",
    "builder_version", "created",
)
#: Optional root attributes (absent in files written before they existed), checked when present.
OPTIONAL_ROOT_ATTRS: tuple[str, ...] = ("slice_size",)
STRING = h5py.string_dtype("utf-8")
COMPRESSION: dict[str, object] = {"compression": "gzip", "compression_opts": 1}


def string_array(values: list[str] | tuple[str, ...]) -> np.ndarray:
    """A 1-D array of UTF-8 strings as h5py stores it (variable-length str)."""
    return np.array(list(values), dtype=STRING)


def create_split_group(h5: h5py.File, split: str, height: int, width: int) -> h5py.Group:
    """Create one empty, appendable split group with the five datasets of the schema."""
    group = h5.create_group(split)
    common = {"track_times": False}
    source = group.create_dataset("source", shape=(0, 4, height, width), maxshape=(None, 4, height, width),
                                  dtype=np.float32, chunks=(1, 4, height, width), **COMPRESSION, **common)
    source.attrs["modalities"] = string_array(MODALITIES)
    group.create_dataset("fused", shape=(0, 1, height, width), maxshape=(None, 1, height, width),
                         dtype=np.float32, chunks=(1, 1, height, width), **COMPRESSION, **common)
    group.create_dataset("label", shape=(0, height, width), maxshape=(None, height, width),
                         dtype=np.uint8, chunks=(1, height, width), **COMPRESSION, **common)
    group.create_dataset("case_id", shape=(0,), maxshape=(None,), dtype=STRING, chunks=(256,), **common)
    group.create_dataset("slice_index", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(256,), **common)
    group.create_dataset("spacing", shape=(0, 3), maxshape=(None, 3), dtype=np.float32, chunks=(256, 3), **common)
    return group


def encode_slices(source: np.ndarray, fused: np.ndarray, label: np.ndarray) -> dict[str, list[bytes]]:
    """Compress each slice's chunk of source (K,4,H,W) float32, fused (K,1,H,W) float32 and label
    (K,H,W) uint8 exactly as HDF5's deflate filter would (a zlib stream at the same level).

    Done in the builder's worker processes so the compression runs in parallel; the writer then
    stores the chunks as they are (:func:`append_encoded`).
    """
    level = int(COMPRESSION["compression_opts"])
    arrays = {"source": (source, np.float32), "fused": (fused, np.float32), "label": (label, np.uint8)}
    return {name: [zlib.compress(np.ascontiguousarray(item, dtype=dtype).tobytes(), level) for item in values]
            for name, (values, dtype) in arrays.items()}


def append_encoded(group: h5py.Group, chunks: dict[str, list[bytes]], case_id: str,
                   slice_index: np.ndarray, spacing: np.ndarray) -> None:
    """Append K slices of one case from :func:`encode_slices` chunks, plus case_id, slice_index and
    spacing ((3,) or (K, 3) mm: dy, dx, dz; see the module doc)."""
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
    for name, values in (("case_id", string_array([case_id] * k)), ("slice_index", slice_index),
                         ("spacing", spacing)):
        dataset = group[name]
        dataset.resize(start + k, axis=0)
        dataset[start:start + k] = values


def _attr_text(value: object) -> str:
    """An HDF5 attribute read back as Python str (h5py returns str or bytes for strings)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def one_line(exc: object) -> str:
    """An exception's (or any object's) text on one line (HDF5 and decoder messages may hold newlines)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _show(value: object) -> str:
    """A short one-line rendering of an attribute value for an error message (at most 60 chars)."""
    return one_line(repr(value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value))[:60]


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


def _check_root_attrs(h5: h5py.File, where: str | Path) -> None:
    """Check that the root attributes exist and have the schema's types (never trusting the file)."""
    missing = [a for a in ROOT_ATTRS if a not in h5.attrs]
    if missing:
        raise DataError(f"{where}: missing root attribute(s) {', '.join(missing)}")
    version = np.asarray(h5.attrs["format_version"])
    if version.shape != () or version.dtype.kind not in "iu":
        raise DataError(f"{where}: root attribute format_version must be one integer, got "
                        f"{version.dtype}{version.shape} {_show(version)}")
    if int(version) != FORMAT_VERSION:
        raise DataError(f"{where}: format_version {int(version)} is not supported (expected {FORMAT_VERSION})")
    inputs = h5.attrs["fusion_inputs"]
    if not (isinstance(inputs, np.ndarray) and inputs.ndim == 1 and inputs.dtype.kind in "OSU"
            and all(isinstance(v, (str, bytes)) for v in inputs.tolist())):
        raise DataError(f"{where}: root attribute fusion_inputs must be a 1-D array of modality names, got "
                        f"{type(inputs).__name__} {_show(inputs)}")
    try:
        parse_modalities(tuple(_attr_text(v) for v in inputs))
    except ConfigError as exc:
        raise DataError(f"{where}: root attribute fusion_inputs is invalid ({exc})") from None
    for key in ROOT_ATTRS[2:]:
        _text_attr(h5, key, where)
    slice_size(h5, where)


def slice_size(h5: h5py.File, where: str | Path) -> int | None:
    """The root attribute slice_size (pixels; 0 = volume size kept), or None when the file predates it.

    DataError naming ``where`` unless it is one non-negative integer.
    """
    if "slice_size" not in h5.attrs:
        return None
    value = np.asarray(h5.attrs["slice_size"])
    if value.shape != () or value.dtype.kind not in "iu" or int(value) < 0:
        raise DataError(f"{where}: root attribute slice_size must be one integer >= 0 (pixels, 0 = volume size), "
                        f"got {value.dtype}{value.shape} {_show(value)}")
    return int(value)


def validate_schema(h5: h5py.File, where: str | Path) -> dict[str, int]:
    """Check attributes, groups, dtypes and shapes against the schema without reading the data.

    Returns {split: number of slices} plus "height" and "width"; DataError naming ``where`` and the
    offending attribute or dataset on any mismatch, whatever types the file holds.
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
    counts: dict[str, int] = {}
    size: tuple[int, int] | None = None
    for split in SPLITS:
        if split not in h5 or not isinstance(h5[split], h5py.Group):
            raise DataError(f"{where}: missing group /{split}")
        group = h5[split]
        for name in ("source", "fused", "label", "case_id", "slice_index"):
            if name not in group or not isinstance(group[name], h5py.Dataset):
                raise DataError(f"{where}: missing dataset /{split}/{name}")
        source, fused, label = group["source"], group["fused"], group["label"]
        n = source.shape[0] if source.ndim == 4 else -1
        expected = {
            "source": ((n, 4) + source.shape[2:], np.float32),
            "fused": ((n, 1) + source.shape[2:], np.float32),
            "label": ((n,) + source.shape[2:], np.uint8),
        }
        if source.ndim != 4 or source.shape[1] != 4:
            raise DataError(f"{where}: /{split}/source has shape {source.shape}, expected (N, 4, H, W)")
        for name, (shape, dtype) in expected.items():
            dataset = group[name]
            if dataset.shape != shape or dataset.dtype != dtype:
                raise DataError(f"{where}: /{split}/{name} is {dataset.dtype}{dataset.shape}, "
                                f"expected {np.dtype(dtype)}{shape}")
        if fused.shape[0] != n or label.shape[0] != n:
            raise DataError(f"{where}: /{split} datasets disagree on the number of slices")
        string_info = h5py.check_string_dtype(group["case_id"].dtype)
        if group["case_id"].shape != (n,) or string_info is None or string_info.encoding != "utf-8":
            raise DataError(f"{where}: /{split}/case_id must be ({n},) UTF-8 strings, got "
                            f"{group['case_id'].dtype}{group['case_id'].shape}")
        if group["slice_index"].shape != (n,) or group["slice_index"].dtype.kind not in "iu":
            raise DataError(f"{where}: /{split}/slice_index must be ({n},) integers, got "
                            f"{group['slice_index'].dtype}{group['slice_index'].shape}")
        if "spacing" in group:
            spacing = group["spacing"]
            if not isinstance(spacing, h5py.Dataset) or spacing.shape != (n, 3) or spacing.dtype != np.float32:
                raise DataError(f"{where}: /{split}/spacing must be float32({n}, 3) (mm: dy, dx, dz), got "
                                f"{getattr(spacing, 'dtype', type(spacing).__name__)}{getattr(spacing, 'shape', '')}")
        modalities = tuple(_attr_text(m) for m in np.atleast_1d(source.attrs.get("modalities", [])))
        if modalities != MODALITIES:
            raise DataError(f"{where}: /{split}/source attribute modalities is {modalities}, "
                            f"expected {MODALITIES}")
        if size is not None and source.shape[2:] != size:
            raise DataError(f"{where}: /{split} slices are {source.shape[2:]}, other splits {size}")
        size = source.shape[2:]
        counts[split] = n
    present = [split for split in SPLITS if "spacing" in h5[split]]
    if present and len(present) != len(SPLITS):
        raise DataError(f"{where}: /{present[0]}/spacing exists but not in every split")
    side = slice_size(h5, where)
    if side and size != (side, side):
        raise DataError(f"{where}: root attribute slice_size is {side} but the slices are {size[0]} x {size[1]}")
    counts["height"], counts["width"] = size
    return counts


def read_spacing(h5: h5py.File, split: str, where: str | Path) -> np.ndarray | None:
    """(N, 3) float64 mm (dy, dx, dz) of a validated file's ``split``, or None when the file predates it.

    DataError naming ``where`` unless every value is finite and > 0.
    """
    if "spacing" not in h5[split]:
        return None
    values = np.asarray(h5[split]["spacing"][()], dtype=np.float64).reshape(-1, 3)
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise DataError(f"{where}: /{split}/spacing has values that are not finite and > 0 mm")
    return values


def open_validated(path: str | Path) -> tuple[h5py.File, dict[str, int]]:
    """Open ``path`` read-only and validate its schema; DataError if unreadable or invalid."""
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
