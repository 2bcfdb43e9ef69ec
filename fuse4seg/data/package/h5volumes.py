"""The optional volumetric layout of ``brats_fuse.h5`` (``build-benchmark --volumes``): extract, encode, write,
validate and scan whole brain volumes. The layout is declared in :mod:`fuse4seg.data.package.schema`
(:data:`~fuse4seg.data.package.schema.VOLUME_DATASETS`, :data:`~fuse4seg.data.package.schema.VOLUME_ATTRIBUTES`).

``/volumes/<split>/<case_id>`` holds every case of the slice split ``<split>`` (the tumour-bearing cases:
a case without tumour is left out of both layouts, so the two list the same patients).

Crop: the bounding box of the brain mask (any modality > 0, as the normalisation defines it) united with
the tumour labels (for BraTS the labels lie inside the brain, so this is the brain box), over all three
axes, without margin: the smallest box that loses no brain or tumour voxel. ``--size`` is not applied:
volumes keep the release's voxel grid, whose voxel size is the ``spacing`` attribute.

Axes: stored arrays are (D, H, W) = (z, x, y) extents of the box, depth first, so that a plane
``source[:, d]`` is an axial slice in the 2-D splits' own (x, y) order: without ``--size``, the slice of
``slice_index`` z in a split equals ``source[:, z - z0]`` padded back to the full plane (zeros outside the box).

Fusion: the build's rule is 2-D, so it is applied to each axial plane of the cropped fusion inputs
(:func:`fuse_volume`); mean and max are voxelwise, so plane by plane changes nothing for them, while the
Laplacian pyramid, the wavelet and PCA see the cropped plane, not the whole one, and differ from the 2-D
split's fused slices near the box's edges (PCA: in their weights).

Chunks: cubes of :data:`~fuse4seg.data.package.schema.VOLUME_CHUNK` voxels (clipped to the volume) per modality,
gzip level 1 as the slices, compressed in the builder's worker processes (:func:`encode_volume`) and
written as they are in the parent. Edge chunks are stored full size with zeros past the volume, as HDF5
itself stores them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from fuse4seg.conventions import modality_indices
from fuse4seg.data.package.h5primitives import (
    check_dataset,
    check_members,
    compress,
    reading_data,
    short_name,
    show_value,
    string_array,
)
from fuse4seg.data.package.schema import (
    COMPRESSION,
    MAX_TEXT_BYTES,
    MAX_VOLUME_CASES,
    MAX_VOLUME_VOXELS,
    SPLITS,
    VOLUME_ATTRIBUTES,
    VOLUME_DATASETS,
    VOLUMES_GROUP,
    resolve,
)
from fuse4seg.errors import DataError
from fuse4seg.fusion import fuse_batch

__all__ = ["brain_box", "crop_volume", "encode_volume", "extract_volume", "fuse_volume", "scan_volumes",
           "validate_volumes", "volume_case_ids", "volume_sizes", "write_volume"]

def volume_sizes(depth: int, height: int, width: int) -> dict[str, int]:
    """The schema's size symbols of a D x H x W volume ({"D", "H", "W"}; chunk symbols follow from them)."""
    return {"D": int(depth), "H": int(height), "W": int(width)}


def brain_box(mask: np.ndarray) -> np.ndarray:
    """(3, 2) int64 [[x0, x1], [y0, y1], [z0, z1]]: the half-open bounding box of the True voxels of an (X, Y, Z)
    mask (the whole array if there are none)."""
    if not mask.any():
        return np.array([[0, n] for n in mask.shape], dtype=np.int64)
    rows = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        rows.append((hit[0], hit[-1] + 1))
    return np.array(rows, dtype=np.int64)


def crop_volume(array: np.ndarray, box: np.ndarray) -> np.ndarray:
    """(..., X, Y, Z) -> (..., D, H, W), the (3, 2) ``box`` depth first: out[..., d, h, w] = array[..., x0 + h,
    y0 + w, z0 + d] (a view)."""
    (x0, x1), (y0, y1), (z0, z1) = np.asarray(box).tolist()
    return np.moveaxis(array[..., x0:x1, y0:y1, z0:z1], -1, -3)


def fuse_volume(source: np.ndarray, method: str, fusion_inputs: tuple[str, ...]) -> np.ndarray:
    """The classical rule ``method`` on each axial plane of the ``fusion_inputs`` of source (4, D, H, W) in
    [0, 1]: (1, D, H, W) float32 in [0, 1]."""
    planes = np.moveaxis(source[modality_indices(fusion_inputs)], 1, 0)  # (D, C, H, W): one 2-D image per plane
    return fuse_batch(planes, method)[None]


def _chunk_offsets(shape: tuple[int, ...], chunks: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    """The first voxel of every chunk of a ``shape`` dataset chunked as ``chunks``, in C order of the chunk grid."""
    grid = [-(-n // c) for n, c in zip(shape, chunks)]
    for index in np.ndindex(*grid):
        yield tuple(i * c for i, c in zip(index, chunks))


def _chunk_blocks(array: np.ndarray, chunks: tuple[int, ...]) -> np.ndarray:
    """(chunks in grid C order, *chunks): ``array`` cut into its chunks, edge chunks padded with zeros."""
    grid = [-(-n // c) for n, c in zip(array.shape, chunks)]
    padded = np.zeros([g * c for g, c in zip(grid, chunks)], dtype=array.dtype)
    padded[tuple(slice(0, n) for n in array.shape)] = array
    nd = array.ndim
    split = padded.reshape([x for g, c in zip(grid, chunks) for x in (g, c)])  # (g0, c0, g1, c1, ...)
    return split.transpose([*range(0, 2 * nd, 2), *range(1, 2 * nd, 2)]).reshape(-1, *chunks)


def encode_volume(source: np.ndarray, fused: np.ndarray, label: np.ndarray) -> dict[str, list[bytes]]:
    """The compressed chunks of one case's source (4, D, H, W) float32, fused (1, D, H, W) float32 and label
    (D, H, W) uint8, per dataset in chunk-grid order (:func:`write_volume` stores them as they are)."""
    arrays = {"source": source, "fused": fused, "label": label}
    sizes = volume_sizes(*label.shape)
    return {spec.name: [compress(block, spec.dtype) for block in
                        _chunk_blocks(np.asarray(arrays[spec.name], dtype=spec.dtype), resolve(spec.chunks, sizes))]
            for spec in VOLUME_DATASETS}


def extract_volume(loaded: object, fusion: str | None, fusion_inputs: tuple[str, ...]) -> dict[str, object]:
    """One loaded case (:class:`fuse4seg.data.release.brats.BraTSCase`) as the volumes layout stores it: "box" (3, 2),
    "shape" (3,), "affine" (4, 4), "spacing" (3,) mm, "dims" (D, H, W), and either "chunks"
    (:func:`encode_volume`, with the classical rule ``fusion``) or "source" (4, D, H, W) and "label" (D, H, W)
    for a fusion callable run by the caller (``fusion`` None)."""
    box = brain_box(loaded.brain_mask | (loaded.label > 0))
    source = np.ascontiguousarray(crop_volume(loaded.images, box), dtype=np.float32)
    label = np.ascontiguousarray(crop_volume(loaded.label, box), dtype=np.uint8)
    result = {"box": box, "shape": np.array(loaded.label.shape, dtype=np.int64),
              "affine": np.asarray(loaded.affine, dtype=np.float64),
              "spacing": np.asarray(loaded.header.get_zooms()[:3], dtype=np.float64), "dims": label.shape,
              "source": source, "label": label, "chunks": None}
    if fusion is not None:
        result["chunks"] = encode_volume(source, fuse_volume(source, fusion, fusion_inputs), label)
        result["source"] = result["label"] = None
    return result


def write_volume(split_group: h5py.Group, case_id: str, volume: dict[str, object]) -> None:
    """Create ``split_group``/``case_id`` from an :func:`extract_volume` result with its "chunks" set: the
    schema's datasets (chunks stored as they are) and attributes."""
    group = split_group.create_group(case_id)
    sizes = volume_sizes(*volume["dims"])
    for spec in VOLUME_DATASETS:
        shape, chunks = resolve(spec.shape, sizes), resolve(spec.chunks, sizes)
        dataset = group.create_dataset(spec.name, shape=shape, dtype=spec.dtype, chunks=chunks, track_times=False,
                                       **COMPRESSION)
        for key, values in spec.attrs:
            dataset.attrs[key] = string_array(values)
        encoded = volume["chunks"][spec.name]
        offsets = list(_chunk_offsets(shape, chunks))
        if len(encoded) != len(offsets):
            raise ValueError(f"{spec.name}: {len(encoded)} chunks for a grid of {len(offsets)}")
        for offset, chunk in zip(offsets, encoded):
            dataset.id.write_direct_chunk(offset, chunk)
    for spec in VOLUME_ATTRIBUTES:
        group.attrs[spec.name] = np.asarray(volume[spec.name], dtype=spec.dtype)


def volume_case_ids(h5: h5py.File, split: str) -> list[str]:
    """The case ids of ``split`` in a validated file's volumes layout, sorted (HDF5's name order)."""
    return list(h5[VOLUMES_GROUP][split])


def read_volume_attrs(case: h5py.Group) -> dict[str, np.ndarray]:
    """The attributes of a validated case group: box (3, 2), shape (3,) int64, affine (4, 4), spacing (3,) float64."""
    return {spec.name: np.asarray(case.attrs[spec.name], dtype=spec.dtype) for spec in VOLUME_ATTRIBUTES}


def validate_volumes(h5: h5py.File, where: str | Path) -> dict[str, list[str]]:
    """Check ``/volumes`` against the schema from the header and the case attributes only (no image data):
    hard links only, one group per split, at most MAX_VOLUME_CASES cases each, case ids unique across splits
    and at most MAX_TEXT_BYTES, each case with exactly the declared datasets (storage as for slices, one
    D x H x W of at most MAX_VOLUME_VOXELS) and attributes (shapes and dtypes checked before reading; box
    within shape and of the datasets' extents; affine finite; spacing finite > 0). Returns {split: case ids};
    DataError naming ``where`` and the object otherwise."""
    if VOLUMES_GROUP not in h5:
        raise DataError(f"{where}: missing group /{VOLUMES_GROUP} (root attribute volumes is 1)")
    root = h5[VOLUMES_GROUP]
    if not isinstance(root, h5py.Group):
        raise DataError(f"{where}: /{VOLUMES_GROUP} is not a group")
    check_members(root, SPLITS, where)
    seen: dict[str, str] = {}
    cases: dict[str, list[str]] = {}
    for split in SPLITS:
        if split not in root or not isinstance(root[split], h5py.Group):
            raise DataError(f"{where}: missing group /{VOLUMES_GROUP}/{split}")
        group = root[split]
        if len(group) > MAX_VOLUME_CASES:
            raise DataError(f"{where}: /{VOLUMES_GROUP}/{split} holds {len(group)} cases, over the limit of "
                            f"{MAX_VOLUME_CASES} per split")
        check_members(group, None, where)
        for case_id in group:
            path = short_name(f"/{VOLUMES_GROUP}/{split}/{case_id}")
            if len(case_id.encode("utf-8", "surrogateescape")) > MAX_TEXT_BYTES:
                raise DataError(f"{where}: {path}: case id over the limit of {MAX_TEXT_BYTES} bytes")
            if case_id in seen:
                raise DataError(f"{where}: case {short_name(case_id)} has volumes in both {seen[case_id]} and {split}; "
                                "splits must be by patient")
            seen[case_id] = split
            _check_case(group[case_id], path, where)
        cases[split] = list(group)
    return cases


def _check_case(case: h5py.Group | h5py.Dataset, path: str, where: str | Path) -> None:
    """DataError unless one case group holds exactly the schema's volume datasets and attributes (see
    :func:`validate_volumes`)."""
    if not isinstance(case, h5py.Group):
        raise DataError(f"{where}: {path} is not a group")
    check_members(case, tuple(spec.name for spec in VOLUME_DATASETS), where)
    sizes: dict[str, int] = {}
    for spec in VOLUME_DATASETS:  # binds D, H, W from the first, then holds the others to them
        check_dataset(case, spec, sizes, where)
    names = sorted(case.attrs)
    expected = sorted(spec.name for spec in VOLUME_ATTRIBUTES)
    if names != expected:
        raise DataError(f"{where}: {path} has attributes {show_value(names)}, expected {', '.join(expected)}")
    values = {}
    for spec in VOLUME_ATTRIBUTES:  # shape and dtype from the header first: a crafted attribute costs nothing
        attr = case.attrs.get_id(spec.name)
        if attr.shape != spec.shape or attr.dtype != np.dtype(spec.dtype):
            raise DataError(f"{where}: {path} attribute {spec.name} is {attr.dtype}{attr.shape}, expected "
                            f"{spec.dtype}{spec.shape}")
        values[spec.name] = case.attrs[spec.name]
    box, shape = values["box"], values["shape"]
    extents = (sizes["H"], sizes["W"], sizes["D"])  # x, y, z
    if (shape < 1).any() or math.prod(int(n) for n in shape) > MAX_VOLUME_VOXELS:
        raise DataError(f"{where}: {path} attribute shape {show_value(shape)} is not 1 to {MAX_VOLUME_VOXELS} voxels")
    if (box[:, 0] < 0).any() or (box[:, 1] > shape).any() or tuple((box[:, 1] - box[:, 0]).tolist()) != extents:
        raise DataError(f"{where}: {path} attribute box {show_value(box)} is not within shape {show_value(shape)} with extents "
                        f"(x, y, z) = {extents} (the datasets' H, W, D)")
    if not np.isfinite(values["affine"]).all():
        raise DataError(f"{where}: {path} attribute affine has values that are not finite")
    if not (np.isfinite(values["spacing"]).all() and (values["spacing"] > 0).all()):
        raise DataError(f"{where}: {path} attribute spacing {show_value(values['spacing'])} is not finite and > 0 mm")


def scan_volumes(h5: h5py.File, path: str | Path, split: str, block_bytes: int) -> list[str]:
    """Check the values of every volume of ``split`` of a validated file, in blocks of axial planes of at most
    ``block_bytes`` per dataset (one plane if larger): sources and fused finite in [0, 1], labels in
    {0..3}; returns the case ids. The validated header bounds the work (MAX_VOLUME_CASES, MAX_VOLUME_VOXELS)."""
    group = h5[VOLUMES_GROUP][split]
    for case_id in group:
        case = group[case_id]
        depth, height, width = case["label"].shape
        planes = max(1, block_bytes // (4 * height * width * 4))  # source planes: the largest
        for start in range(0, depth, planes):
            stop = min(depth, start + planes)
            where = f"/{VOLUMES_GROUP}/{split}/{short_name(case_id)}"
            for name in ("source", "fused"):
                with reading_data(path, f"{where}/{name}[:, {start}:{stop}]"):
                    values = case[name][:, start:stop]
                if not (values.min() >= 0 and values.max() <= 1):  # NaN fails both comparisons
                    raise DataError(f"{path}: {where}/{name}[:, {start}:{stop}] has values outside [0, 1] or NaN/Inf")
            with reading_data(path, f"{where}/label[{start}:{stop}]"):
                labels = case["label"][start:stop]
            if labels.max(initial=0) > 3:
                raise DataError(f"{path}: {where}/label[{start}:{stop}] has label {int(labels.max())} not in "
                                "{0,1,2,3}")
    return list(group)
