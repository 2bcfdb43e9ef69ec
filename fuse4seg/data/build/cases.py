"""One case of a BraTS-Fuse build, in a worker process: load it, pick its tumour slices, crop and resize them,
describe them, and compress their chunks (:func:`extract_case`); :mod:`fuse4seg.data.build.builder` writes the
results.

Slice rule (:func:`select_slices`): the whole-tumour (WT, labels 1-3) area of every axial slice
``volume[:, :, z]`` is counted; slices with an area of at least ``min_area_fraction`` (0.25) of the
case's largest slice area are candidates (this drops slices that only graze the tumour edge); K of
them are kept, evenly spaced over the candidates' range from the first to the last (so the kept
slices span the tumour instead of clustering around its widest part). Fewer candidates than K:
all are kept. No randomness is involved, so the choice depends only on the label map. A case
without any tumour voxel contributes no slices and is listed in the summary as skipped.

Geometry: slices keep the volume's in-plane axes (H = first voxel axis, W = second). With ``size``
each case is cropped to the square around the bounding box of its brain mask (the union over all
slices, so every slice of a case shares one crop) and resized to size x size: images with bilinear
interpolation, labels with nearest neighbour (:mod:`fuse4seg.data.release.geometry`, shared with ``fuse``).
The rule is recorded in the root attribute ``slice_size`` (``size``, 0 for none), and the physical
size of every slice's pixels in the dataset ``spacing`` (:func:`slice_spacing`).

Texts: every stored slice gets a description (:mod:`fuse4seg.data.package.describe`), written in the worker
beside the slice extraction from the stored (cropped, resized) arrays and spacing, worded by an RNG seeded
with the build's seed, the case id and the slice index; ``reports`` (a CSV) replaces the texts it names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from fuse4seg.conventions import modality_indices
from fuse4seg.data.release.geometry import crop_resize, square_box
from fuse4seg.fusion import fuse_batch

if TYPE_CHECKING:  # brats is imported lazily at run time (workers import it themselves)
    from fuse4seg.data.release.brats import CaseFiles

MIN_AREA_FRACTION = 0.25


def select_slices(label: np.ndarray, k: int, min_area_fraction: float = MIN_AREA_FRACTION) -> np.ndarray:
    """Axial slice indices (sorted, <= k) of a (X, Y, Z) canonical label map by the module's rule."""
    area = np.count_nonzero(label, axis=(0, 1))
    if area.max(initial=0) == 0:
        return np.zeros(0, dtype=np.int64)
    candidates = np.flatnonzero(area >= min_area_fraction * area.max())
    if len(candidates) <= k:
        return candidates
    picks = np.unique(np.round(np.linspace(0, len(candidates) - 1, k)).astype(np.int64))
    return candidates[picks]


def slice_spacing(zooms: Sequence[float], box: tuple[int, int, int, int] | None, size: int | None) -> np.ndarray:
    """(3,) float32 mm (dy, dx, dz) of a stored slice: the volume's voxel size ``zooms`` (x, y, z), with the
    in-plane sizes scaled by box side / ``size`` when the case was cropped to the square ``box`` and resized."""
    spacing = np.asarray(zooms[:3], dtype=np.float64)
    if box is not None and size is not None:
        spacing[:2] *= (box[1] - box[0]) / size
    return spacing.astype(np.float32)


def slice_texts(source: np.ndarray, label: np.ndarray, spacing: np.ndarray, slice_index: np.ndarray,
                brain_z: np.ndarray, axes: tuple[str, ...], seed: int, case_id: str) -> list[str]:
    """The descriptions (:func:`fuse4seg.data.package.describe.describe_slice`) of K stored slices: source (K,4,H,W),
    label (K,H,W), spacing (3,) mm, their axial indices, the case's brain-bearing axial indices ``brain_z``
    (sorted; their range sets the superior/inferior position, omitted when it is one slice) and axis codes."""
    from fuse4seg.data.package.describe import describe_slice, slice_rng

    low, high = (int(brain_z[0]), int(brain_z[-1])) if len(brain_z) else (0, 0)
    texts = []
    for source_k, label_k, z in zip(source, label, slice_index):
        position = None
        if high > low:
            position = float(np.clip((int(z) - low) / (high - low), 0.0, 1.0))
            position = 1.0 - position if axes[2] == "I" else position if axes[2] == "S" else None
        texts.append(describe_slice(label_k, source_k, (float(spacing[0]), float(spacing[1])), position,
                                    slice_rng(seed, case_id, int(z)), axes))
    return texts


def extract_case(case: CaseFiles, slices_per_case: int, size: int | None, fusion: str | None,
                 fusion_inputs: tuple[str, ...], volumes: bool = False, seed: int = 0) -> dict[str, object]:
    """Load one case and return its selected slices: label (K,H,W) uint8, slice_index (K,), spacing (3,)
    mm, text (K descriptions, :func:`slice_texts`, worded with ``seed``), and
    either ``chunks`` (the HDF5 chunks of source, fused and label, compressed here so that the
    workers share that cost) when ``fusion`` names a classical rule, or ``source`` (K,4,H,W) float32
    for a caller-side fusion_fn (``fusion`` None); with ``volumes``, a tumour-bearing case's ``volume``
    (:func:`fuse4seg.data.package.h5volumes.extract_volume`, else None)."""
    import nibabel as nib

    from fuse4seg.data.package.h5format import encode_slices
    from fuse4seg.data.package.h5volumes import extract_volume
    from fuse4seg.data.release.brats import load_case

    loaded = load_case(case, require_label=True)
    z = select_slices(loaded.label, slices_per_case)
    source = np.ascontiguousarray(np.moveaxis(loaded.images[..., z], -1, 0), dtype=np.float32)
    label = np.ascontiguousarray(np.moveaxis(loaded.label[..., z], -1, 0), dtype=np.uint8)
    box = square_box(loaded.brain_mask.any(axis=2)) if size is not None else None
    if box is not None and len(z):
        source, label = crop_resize(source, label, box, size)
    spacing = slice_spacing(loaded.header.get_zooms(), box, size)
    # Which way the array axes point (BraTS: L, P, S), so left/right and the rest follow the file's affine.
    axes = tuple(nib.aff2axcodes(loaded.affine))
    brain_z = np.flatnonzero(loaded.brain_mask.any(axis=(0, 1)))
    result = {"case_id": loaded.case_id, "scheme": loaded.scheme, "label": label, "shape": source.shape[-2:],
              "slice_index": z.astype(np.int32), "source": source, "chunks": None, "spacing": spacing,
              "text": slice_texts(source, label, spacing, z, brain_z, axes, seed, loaded.case_id),
              "volume": extract_volume(loaded, fusion, fusion_inputs) if volumes and len(z) else None}
    if fusion is not None and len(z):
        fused = fuse_batch(source[:, modality_indices(fusion_inputs)], fusion)[:, None]
        result["chunks"], result["source"] = encode_slices(source, fused, label), None
    return result
