"""Exports of a BraTS-Fuse package for tools without an HDF5 reader: Parquet records inside the package and
per-case NIfTI stacks beside it.

Parquet (:func:`export_parquet`, ``build-benchmark --parquet``): ``DIR/parquet/<split>-NNNNN-of-MMMMM.parquet``,
one row per slice of ``/<split>`` in its order (every split has at least one shard, an empty split one with no
rows); the columns are :func:`fuse4seg.data.package.records.record_columns` (``index`` = N in ``/<split>``, ``case_id``, ``slice_index``,
``spacing``, one column per source modality, ``fused``, ``label``, and ``text`` when the package has texts).
Images are arrays, not PNG: each is an Arrow fixed-size list of H fixed-size lists of W values (float32 for
the modalities and ``fused``, uint8 for ``label``), so a reader gets the exact stored values and their shape
from the schema alone. A 16-bit PNG would quantise the float32 intensities to 65,536 levels (not lossless,
errors up to 7.7e-6) and saves space only by that loss: 40% of the image bytes of a phantom --size 192 build,
where the arrays are 12% smaller than brats_fuse.h5 (the README quotes the measured sizes). Float columns use
Parquet's BYTE_STREAM_SPLIT encoding and every column zstd (level 1): on that build 11% smaller than plain
zstd-3; only on native 240 x 240 slices, mostly zero background, is plain zstd-3 smaller (by 22%).
Shards hold about :data:`SHARD_BYTES` of records and row groups about :data:`ROW_GROUP_BYTES`.
croissant.json gains a FileSet and a RecordSet ``parquet-<split>`` per split and the dataset card a ``configs:``
entry (:func:`fuse4seg.data.package.croissant.write_parquet_metadata`), so mlcroissant, datasets and pandas read them.

NIfTI (:func:`export_nifti`): ``OUT/<split>/<case_id>/{t1,t1ce,t2,flair,fused,label}.nii.gz``, each the case's
stored slices stacked as (H, W, K) (float32; label uint8) with the voxel size (dy, dx, dz) mm in the header
(affine diag(dy, dx, dz): the stack's axes are the volume's voxel axes, not its original orientation), and
``slices.json`` with the slices' axial indices (the stack is not contiguous: slice k lies at
``slice_index[k] * dz``), their positions N in ``/<split>`` and their texts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fuse4seg.conventions import MODALITIES
from fuse4seg.data.package.croissant import write_parquet_metadata
from fuse4seg.data.package.h5format import has_text, open_validated
from fuse4seg.data.package.h5primitives import reading_data
from fuse4seg.data.package.records import Column, arrow_schema, record_columns
from fuse4seg.data.package.schema import (
    CARD_NAME,
    CROISSANT_NAME,
    H5_NAME,
    MAX_DESCRIPTION_BYTES,
    MAX_TEXT_BYTES,
    PARQUET_DIR,
    SPLITS,
)
from fuse4seg.data.package.staging import PARQUET_KIND, apply_staged, commit, recover, staged, staging
from fuse4seg.data.package.verify import verify
from fuse4seg.errors import ConfigError, DataError
from fuse4seg.io import atomic_dir, check_replace_dir, output_lock, write_failure

if TYPE_CHECKING:
    import h5py
    import pyarrow as pa

FORMATS: tuple[str, ...] = ("parquet", "nifti")
NIFTI_KIND = "nifti"
#: Record bytes per Parquet shard before compression (shards of about 0.1-0.3 GB on disk; one file per split
#: for every phantom or small build).
SHARD_BYTES = 512 * 1024**2
#: Record bytes per row group: the unit a reader decompresses at once (about 27 slices of 240 x 240).
ROW_GROUP_BYTES = 32 * 1024**2
COMPRESSION = "zstd"
#: Files of one NIfTI case folder besides the images.
SLICES_JSON = "slices.json"


def _row_bytes(columns: tuple[Column, ...], height: int, width: int) -> int:
    """Upper bound of one record's bytes before compression."""
    sizes = {"int64": 8, "int32": 4, "spacing": 12, "image": 4 * height * width, "label": height * width}
    strings = {"case_id": MAX_TEXT_BYTES, "text": MAX_DESCRIPTION_BYTES}
    return sum(sizes.get(c.kind, 0) + strings.get(c.name, 0) for c in columns)


def _read_block(h5: h5py.File, path: Path, split: str, start: int, stop: int, text: bool) -> dict[str, object]:
    """Slices [start, stop) of ``/<split>`` as the record columns (images (K, H, W), strings as str)."""
    group = h5[split]
    with reading_data(path, f"/{split}[{start}:{stop}]"):
        source = group["source"][start:stop]
        block: dict[str, object] = {
            "index": np.arange(start, stop, dtype=np.int64), "case_id": list(group["case_id"].asstr()[start:stop]),
            "slice_index": group["slice_index"][start:stop], "spacing": group["spacing"][start:stop],
            "fused": group["fused"][start:stop, 0], "label": group["label"][start:stop]}
        if text:
            block["text"] = list(group["text"].asstr()[start:stop])
    block.update({m: source[:, i] for i, m in enumerate(MODALITIES)})
    return block


def _table(block: dict[str, object], schema: pa.Schema) -> pa.Table:
    """One block of records as an Arrow table of ``schema`` (arrays wrapped without copying their values)."""
    import pyarrow as pa

    arrays = []
    for field in schema:
        value = block[field.name]
        if pa.types.is_fixed_size_list(field.type):
            flat = np.ascontiguousarray(value).reshape(-1)
            if pa.types.is_fixed_size_list(field.type.value_type):  # an (H, W) grid
                inner = field.type.value_type
                arrays.append(pa.FixedSizeListArray.from_arrays(
                    pa.FixedSizeListArray.from_arrays(pa.array(flat, inner.value_type), inner.list_size),
                    field.type.list_size))
            else:
                arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, field.type.value_type),
                                                                field.type.list_size))
        else:
            arrays.append(pa.array(value, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _float_leaves(schema: pa.Schema) -> list[str]:
    """Parquet leaf paths of the float columns (BYTE_STREAM_SPLIT encodes them)."""
    import pyarrow as pa

    leaves = []
    for field in schema:
        path, kind = field.name, field.type
        while pa.types.is_fixed_size_list(kind):
            path, kind = f"{path}.list.element", kind.value_type
        if pa.types.is_floating(kind):
            leaves.append(path)
    return leaves


def _write_shards(h5: h5py.File, path: Path, target: Path, counts: dict[str, int], columns: tuple[Column, ...],
                  shard_bytes: int) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Write every split's records into ``target`` as shards; returns ({split: [file names]}, {split: bytes of its
    records as Arrow tables})."""
    import pyarrow.parquet as pq

    height, width = counts["height"], counts["width"]
    row = _row_bytes(columns, height, width)
    per_shard = max(1, shard_bytes // row)
    per_group = max(1, min(per_shard, ROW_GROUP_BYTES // row))
    text = any(c.name == "text" for c in columns)
    names: dict[str, list[str]] = {}
    nbytes = dict.fromkeys(SPLITS, 0)
    for split in SPLITS:
        n = counts[split]
        shards = max(1, math.ceil(n / per_shard))
        names[split] = [f"{split}-{i:05d}-of-{shards:05d}.parquet" for i in range(shards)]
        for i, name in enumerate(names[split]):
            schema = arrow_schema(columns, height, width).with_metadata({"fuse4seg": json.dumps(
                {"split": split, "shard": i, "shards": shards, "height": height, "width": width})})
            with pq.ParquetWriter(target / name, schema, compression=COMPRESSION, use_dictionary=["case_id"],
                                  write_statistics=["index", "case_id", "slice_index"],
                                  use_byte_stream_split=_float_leaves(schema)) as writer:
                for start in range(i * per_shard, min(n, (i + 1) * per_shard), per_group):
                    stop = min(n, (i + 1) * per_shard, start + per_group)
                    table = _table(_read_block(h5, path, split, start, stop, text), schema)
                    writer.write_table(table, row_group_size=per_group)
                    nbytes[split] += table.nbytes
    return names, nbytes


def add_parquet(directory: str | Path, overwrite: bool = False, shard_bytes: int = SHARD_BYTES) -> dict:
    """Write ``directory``'s Parquet shards into ``directory/parquet`` (replacing one fuse4seg wrote only with
    ``overwrite``) together with the new croissant.json and card: all are staged and committed as one step
    (:mod:`fuse4seg.data.package.staging`), so a kill at any moment leaves the old package or the new one. The
    caller holds the package (a build's temporary folder, or :func:`export_parquet`'s lock and checks); a full
    disk is a one-line error. Returns {"files": [relative paths], "splits": {split: rows}}."""
    directory = Path(directory)
    check_replace_dir(directory / PARQUET_DIR, PARQUET_KIND, overwrite, option=None)
    h5, counts = open_validated(directory / H5_NAME)
    try:
        with h5, staging(directory) as stage:
            columns = record_columns(has_text(h5))
            shards, nbytes = _write_shards(h5, directory / H5_NAME, stage, counts, columns, shard_bytes)
            write_parquet_metadata(directory, stage, shards, columns, counts, nbytes, staged(stage, CARD_NAME),
                                   staged(stage, CROISSANT_NAME))
            commit(stage)
    except OSError as exc:
        raise write_failure(directory / PARQUET_DIR, exc) or exc from None
    apply_staged(directory, stage)
    return {"files": [f"{PARQUET_DIR}/{n}" for split in SPLITS for n in shards[split]],
            "splits": {s: counts[s] for s in SPLITS}}


def export_parquet(directory: str | Path, overwrite: bool = False, shard_bytes: int = SHARD_BYTES) -> dict:
    """Add Parquet records to a built package (see the module doc) after checking it as ``verify`` does (its
    existing Parquet files aside): :func:`add_parquet`'s summary plus "directory" and "format"."""
    directory = Path(directory)
    _check_shard_bytes(shard_bytes)
    with output_lock(_existing_package(directory)):
        recover(directory, locked=True)  # what a killed export left: finished if committed, removed if not
        check_replace_dir(directory / PARQUET_DIR, PARQUET_KIND, overwrite, option=None)  # before the long check
        verify(directory, parquet=False, recover=False)  # never re-hash (and so vouch for) a damaged package
        return {"directory": str(directory), "format": "parquet", **add_parquet(directory, overwrite, shard_bytes)}


def _check_shard_bytes(shard_bytes: int) -> None:
    """ConfigError unless ``shard_bytes`` is a positive integer."""
    if isinstance(shard_bytes, bool) or not isinstance(shard_bytes, int) or shard_bytes < 1:
        raise ConfigError(f"must be a positive number of bytes, got {shard_bytes!r}", option="shard_bytes")


def _existing_package(directory: Path) -> Path:
    """``directory`` when it is a folder holding brats_fuse.h5; DataError otherwise."""
    if not directory.is_dir():
        raise DataError(f"{directory}: no such package directory")
    if not (directory / H5_NAME).is_file():
        raise DataError(f"{directory}: no {H5_NAME} (not a BraTS-Fuse package directory?)")
    return directory


def _case_folder(case_id: str, path: Path, split: str) -> str:
    """``case_id`` as one folder name; DataError for an id that is not one (a path, '.', '..', hidden)."""
    if not case_id or case_id.startswith(".") or "/" in case_id or "\\" in case_id or "\0" in case_id:
        raise DataError(f"{path}: /{split}/case_id {case_id!r} cannot name a folder; export it as Parquet instead")
    return case_id


def _case_rows(h5: h5py.File, path: Path, split: str) -> Iterator[tuple[str, np.ndarray]]:
    """(case id, its slices' sorted positions in ``/<split>``) per case, in order of first appearance."""
    with reading_data(path, f"/{split}/case_id"):
        ids = np.asarray(h5[split]["case_id"].asstr()[()], dtype=object)
    if not len(ids):
        return
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    groups = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1])
    for code in np.argsort(first, kind="stable"):
        yield str(ids[first[code]]), groups[code]


def export_nifti(directory: str | Path, out: str | Path, overwrite: bool = False) -> dict:
    """Write each case's slices as NIfTI stacks under ``out`` (see the module doc) after checking the package
    as ``verify`` does; ``out`` may not lie inside the package (nor contain it) and is replaced only with
    ``overwrite`` when fuse4seg wrote it. Returns {"directory", "format", "out", "cases": {split: n},
    "files": n}."""
    import nibabel as nib

    directory, out = Path(directory), Path(out)
    resolved, inside = out.resolve(), _existing_package(directory).resolve()
    if resolved == inside or inside in resolved.parents or resolved in inside.parents:
        raise ConfigError(f"{out} is inside, or contains, the package {directory}; choose a folder outside it",
                          option="out")
    check_replace_dir(out, NIFTI_KIND, overwrite)  # before the long check
    verify(directory)
    path = directory / H5_NAME
    cases = dict.fromkeys(SPLITS, 0)
    files = 0
    h5, _ = open_validated(path)
    with h5, atomic_dir(out, NIFTI_KIND, overwrite=overwrite) as tmp:
        text = has_text(h5)
        for split in SPLITS:
            group = h5[split]
            for case_id, rows in _case_rows(h5, path, split):
                folder = tmp / split / _case_folder(case_id, path, split)
                folder.mkdir(parents=True)
                # one case's slices are consecutive in a build: a slice reads them at chunk speed
                at = slice(int(rows[0]), int(rows[-1]) + 1) if rows[-1] - rows[0] + 1 == len(rows) else rows
                with reading_data(path, f"/{split} slices of {case_id}"):
                    spacing = group["spacing"][at]
                    images = {"fused": group["fused"][at][:, 0], "label": group["label"][at]}
                    source = group["source"][at]
                    texts = list(group["text"].asstr()[at]) if text else None
                    slice_index = group["slice_index"][at]
                images.update({m: source[:, i] for i, m in enumerate(MODALITIES)})
                if not (spacing == spacing[0]).all():
                    raise DataError(f"{path}: /{split}/spacing differs between the slices of {case_id}; a NIfTI "
                                    "stack has one voxel size")
                affine = np.diag([*spacing[0].astype(np.float64), 1.0])
                for name in (*MODALITIES, "fused", "label"):
                    image = nib.Nifti1Image(np.ascontiguousarray(np.moveaxis(images[name], 0, -1)), affine)
                    image.header.set_xyzt_units("mm")
                    nib.save(image, folder / f"{name}.nii.gz")
                    files += 1
                (folder / SLICES_JSON).write_text(json.dumps({
                    "case_id": case_id, "split": split, "index": rows.tolist(),
                    "slice_index": slice_index.tolist(), "spacing_mm": spacing[0].tolist(), "text": texts,
                }, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
                cases[split] += 1
    return {"directory": str(directory), "format": "nifti", "out": str(out), "cases": cases, "files": files}


def export(directory: str | Path, format: str = "parquet", out: str | Path | None = None,
           overwrite: bool = False) -> dict:
    """``fuse4seg export``: :func:`export_parquet` (``out`` not allowed: the shards live in the package) or
    :func:`export_nifti` (``out`` required); ConfigError naming the option for a bad combination."""
    if format not in FORMATS:
        raise ConfigError(f"{format!r}: expected one of {', '.join(FORMATS)}", option="format")
    if format == "parquet":
        if out is not None:
            raise ConfigError("applies only with --format nifti (Parquet shards are written into the package, "
                              f"DIR/{PARQUET_DIR})", option="out")
        return export_parquet(directory, overwrite)
    if out is None:
        raise ConfigError("required with --format nifti: the folder to write the NIfTI stacks to", option="out")
    return export_nifti(directory, out, overwrite)


def format_export(summary: dict) -> str:
    """One line per split of an export summary, for the command line."""
    if summary["format"] == "parquet":
        rows = ", ".join(f"{s} {n}" for s, n in summary["splits"].items())
        return (f"wrote {len(summary['files'])} Parquet shard(s) to {summary['directory']}/{PARQUET_DIR} "
                f"(records: {rows}); croissant.json and README.md updated")
    cases = ", ".join(f"{s} {n}" for s, n in summary["cases"].items())
    return f"wrote {summary['files']} NIfTI files to {summary['out']} (cases: {cases})"
