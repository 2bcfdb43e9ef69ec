"""``fuse4seg fuse``: apply a trained run to one BraTS-layout case, writing fused.nii.gz and seg.nii.gz.

Preprocessing matches ``build-benchmark``: the case is read and normalised by fuse4seg.data.release.brats,
and the benchmark's slice geometry rule (its root attribute ``slice_size``, recorded by training in
RUN/config.json as ``benchmark_slice_size``) is applied: with a ``--size`` S every axial slice is
cropped to the square around the brain mask's bounding box (union over slices) and resized to S x S
(:mod:`fuse4seg.data.release.geometry`, as ``build-benchmark --size`` does), even when the case is already
S x S; with 0 (volume size kept) slices are used as they are and must match the training size.
The outputs are mapped back: the fused image is resized
bilinearly, the segmentation logits are resized bilinearly before taking labels, and both are
pasted into a zero volume of the input's shape. Labels outside the brain mask are set to
background, and labels are written in the case's release scheme (e.g. 4 for ET in BraTS 2021).

A 3-D run (``--dims 3``) is applied to the whole volume instead: cropped to the brain's bounding box as
``build-benchmark --volumes`` crops it (:mod:`fuse4seg.data.package.h5volumes`), predicted window by window
(:func:`fuse4seg.train.predict.sliding_predict`, the training patch, overlap 0.5) and pasted back into the
release grid (zeros outside the box, background labels outside the brain).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from fuse4seg.errors import ConfigError
from fuse4seg.io import atomic_dir, check_separate
from fuse4seg.runkit.device import resolve_device
from fuse4seg.train.networks import Pipeline
from fuse4seg.train.run import load_run, pipeline_from_checkpoint, require_segmenter, run_derived


def _trained_size(derived: dict[str, Any], run: str | Path) -> tuple[int, int]:
    """(H, W) from RUN/config.json's "derived" facts; ConfigError naming the file if they lack it."""
    try:
        return int(derived["slice_height"]), int(derived["slice_width"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"cannot read the training slice size from {Path(run) / 'config.json'}: {exc}",
                          option="run") from None


def run_geometry(run: str | Path) -> tuple[tuple[int, int], int, str]:
    """((H, W) training slice size in px, the benchmark's slice_size rule (0: volume size kept), its fusion
    method) from RUN/config.json; ConfigError naming the file for a run without them."""
    derived = run_derived(run)
    size = _trained_size(derived, run)
    slice_size = derived.get("benchmark_slice_size")
    if isinstance(slice_size, bool) or not isinstance(slice_size, int) or slice_size < 0:
        raise ConfigError(f"{Path(run) / 'config.json'} has benchmark_slice_size {slice_size!r}, expected an "
                          f"integer >= 0 (a run trained on a format-1 benchmark: retrain on a rebuilt one)", option="run")
    return size, slice_size, str(derived.get("benchmark_fusion_method") or "laplacian")


def _paste(values: torch.Tensor, box: tuple[int, int, int, int], shape: tuple[int, int]) -> torch.Tensor:
    """Resize (Z, C, h, w) to the box's side (bilinear) and paste it into zeros (Z, C, X, Y), clipping."""
    x0, x1, y0, y1 = box
    resized = F.interpolate(values, size=(x1 - x0, y1 - y0), mode="bilinear", align_corners=False)
    out = values.new_zeros((values.shape[0], values.shape[1], *shape))
    ax0, ax1, ay0, ay1 = max(x0, 0), min(x1, shape[0]), max(y0, 0), min(y1, shape[1])
    out[:, :, ax0:ax1, ay0:ay1] = resized[:, :, ax0 - x0:ax1 - x0, ay0 - y0:ay1 - y0]
    return out


def uses_crop(shape: tuple[int, int], size: tuple[int, int], slice_size: int) -> bool:
    """Whether a case with (X, Y) slices ``shape`` is cropped and resized for a run trained on (H, W) ``size``
    slices of a benchmark with root attribute ``slice_size`` (0: volume size kept).

    ConfigError when the case cannot be brought to the training geometry.
    """
    shape, size = tuple(shape), tuple(size)
    if slice_size == 0:
        if shape != size:
            raise ConfigError(f"slices are {shape[0]} x {shape[1]} but the run's benchmark kept the volume "
                              f"size {size[0]} x {size[1]} (built without --size); rebuild it with --size to apply "
                              f"the run to other sizes", option="case")
        return False
    if size != (slice_size, slice_size):
        raise ConfigError(f"the benchmark's slice_size {slice_size} disagrees with the training slices {size}",
                          option="run")
    return True


def predict_volume(pipeline: Pipeline, images: np.ndarray, brain_mask: np.ndarray, size: tuple[int, int],
                   device: torch.device, fusion_method: str = "laplacian", batch_size: int = 16, *,
                   slice_size: int, texts: Sequence[str | None] | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """(4, X, Y, Z) sources in [0, 1] -> (fused (X, Y, Z) float32 in [0, 1] or None, labels (X, Y, Z) uint8).

    Runs slice by slice (axial, ``volume[:, :, z]``), with the benchmark's crop/resize to the training
    ``size`` when :func:`uses_crop` says so for ``slice_size`` (the benchmark's root attribute);
    labels are canonical {0..3}, background outside the brain. ``texts``: one per axial slice (None: no text),
    read by a text-guided fusion network.
    """
    from fuse4seg.data.release.geometry import crop_resize_images, square_box
    from fuse4seg.fusion import fuse_batch
    from fuse4seg.losses import predict_labels

    slices = np.ascontiguousarray(np.moveaxis(images, -1, 0), dtype=np.float32)  # (Z, 4, X, Y)
    shape = slices.shape[-2:]
    box = None
    if uses_crop(shape, size, slice_size):
        box = square_box(brain_mask.any(axis=2))
        slices = crop_resize_images(slices, box, size[0])
    needs_stored = pipeline.fusion is None and pipeline.seg_inputs == ("fused",)
    fused_parts, logit_parts = [], []
    with torch.no_grad():
        for start in range(0, len(slices), batch_size):
            source = torch.from_numpy(slices[start:start + batch_size]).to(device)
            stored = None
            if needs_stored:  # direct mode on the benchmark's classical fusion: recompute it here
                stored = torch.from_numpy(fuse_batch(source[:, pipeline.fusion_channels].cpu().numpy(),
                                                     fusion_method)[:, None]).to(device)
            fused, logits = pipeline.forward(source, stored,
                                             None if texts is None else texts[start:start + batch_size])
            shown = fused if fused is not None else stored
            if shown is not None:
                fused_parts.append(shown.float().cpu())
            logit_parts.append(logits.float().cpu())
    logits = torch.cat(logit_parts)
    fused = torch.cat(fused_parts) if fused_parts else None
    if box is not None:
        logits = _paste(logits, box, shape)
        fused = None if fused is None else _paste(fused, box, shape)
    labels = predict_labels(logits, pipeline.region_based).numpy().astype(np.uint8)  # (Z, X, Y)
    labels = np.moveaxis(labels, 0, -1) * brain_mask.astype(np.uint8)
    fused_vol = None if fused is None else np.clip(np.moveaxis(fused[:, 0].numpy(), 0, -1), 0.0, 1.0)
    return (None if fused_vol is None else fused_vol.astype(np.float32)), labels


def predict_volume_3d(pipeline: Pipeline, images: np.ndarray, brain_mask: np.ndarray, patch: tuple[int, ...],
                      device: torch.device, fusion_method: str = "laplacian") -> tuple[np.ndarray | None, np.ndarray]:
    """(4, X, Y, Z) sources in [0, 1] -> (fused (X, Y, Z) float32 in [0, 1] or None, labels (X, Y, Z) uint8) through a
    3-D pipeline: the brain box cropped as the volumes layout stores it, sliding windows of ``patch`` voxels, the
    result pasted into zeros of the release grid; labels canonical {0..3}, background outside the brain."""
    from fuse4seg.data.package.h5volumes import brain_box, crop_volume, fuse_volume
    from fuse4seg.losses import predict_labels
    from fuse4seg.train.predict import sliding_predict

    # The builder unites the brain mask with the tumour labels, which lie inside the brain for BraTS cases.
    box = brain_box(brain_mask)
    source = np.ascontiguousarray(crop_volume(images, box), dtype=np.float32)  # (4, D, H, W)
    if pipeline.fusion is None and pipeline.seg_inputs == ("fused",):  # direct mode on the classical fusion
        stored = fuse_volume(source, fusion_method, pipeline.fusion_inputs)
    else:  # read by no network: zeros keep the windows' channel layout
        stored = np.zeros((1, *source.shape[1:]), dtype=np.float32)
    with torch.no_grad():
        fused, logits = sliding_predict(pipeline, torch.from_numpy(source)[None].to(device),
                                        torch.from_numpy(stored)[None].to(device), patch)
    labels = predict_labels(logits, pipeline.region_based)[0].cpu().numpy().astype(np.uint8)
    shown = fused[0, 0].float().cpu().numpy() if fused is not None else (
        stored[0] if pipeline.seg_inputs == ("fused",) else None)
    (x0, x1), (y0, y1), (z0, z1) = box.tolist()
    inside = (slice(x0, x1), slice(y0, y1), slice(z0, z1))
    out_labels = np.zeros(brain_mask.shape, dtype=np.uint8)
    out_labels[inside] = np.moveaxis(labels, 0, -1)  # (D, H, W) = (z, x, y) back to (x, y, z)
    out_labels *= brain_mask.astype(np.uint8)
    if shown is None:
        return None, out_labels
    out_fused = np.zeros(brain_mask.shape, dtype=np.float32)
    out_fused[inside] = np.clip(np.moveaxis(shown, 0, -1), 0.0, 1.0)
    return out_fused, out_labels


#: (run geometry (training slice size, slice_size rule, fusion method), config, pipeline, loaded case, device,
#: texts or None) -> (fused (X, Y, Z) or None, labels (X, Y, Z) uint8 canonical).
CasePredictor = Callable[[tuple[tuple[int, int], int, str], Any, Pipeline, Any, torch.device,
                          Sequence[str | None] | None], tuple[np.ndarray | None, np.ndarray]]


def _predict_slices(geometry: tuple[tuple[int, int], int, str], config: Any, pipeline: Pipeline, case: Any,
                    device: torch.device, texts: Sequence[str | None] | None) -> tuple[np.ndarray | None, np.ndarray]:
    """A 2-D run: slice by slice in the benchmark's slice geometry (``texts``, one per axial slice, for a
    text-guided fusion net)."""
    size, slice_size, method = geometry
    return predict_volume(pipeline, case.images, case.brain_mask, size, device, method, slice_size=slice_size,
                          texts=texts)


def _predict_patches(geometry: tuple[tuple[int, int], int, str], config: Any, pipeline: Pipeline, case: Any,
                     device: torch.device, texts: Sequence[str | None] | None) -> tuple[np.ndarray | None, np.ndarray]:
    """A 3-D run: the whole volume by sliding windows of its training patch."""
    return predict_volume_3d(pipeline, case.images, case.brain_mask, config.patch, device, geometry[2])


#: How each segmentation variant predicts a whole case, by variant name (a classifier predicts no label maps).
PREDICTORS: dict[str, CasePredictor] = {"segment-2d": _predict_slices, "segment-3d": _predict_patches}


def predict_case(run: str | Path, config: Any, pipeline: Pipeline, case: Any, device: torch.device,
                 texts: Sequence[str | None] | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """(fused (X, Y, Z) or None, labels (X, Y, Z) uint8 canonical) of a loaded case (fuse4seg.data.release.brats.BraTSCase)
    through RUN's pipeline, by its variant's predictor (:data:`PREDICTORS`): whole-volume sliding windows for a 3-D
    run, slice by slice otherwise (with ``texts``, one per axial slice, for a text-guided fusion net)."""
    geometry = run_geometry(run)
    return PREDICTORS[pipeline.variant.name](geometry, config, pipeline, case, device, texts)


def case_texts(reports: str | Path | None, case_id: str, depth: int) -> list[str | None] | None:
    """One text per axial slice of a case of ``depth`` slices from a ``--reports`` CSV (its slice rows, else its
    whole-case row; None where it has neither), or None without a file."""
    if reports is None:
        return None
    from fuse4seg.data.package.describe import apply_reports, read_reports

    return apply_reports(read_reports(reports, [case_id]), case_id, range(depth), [None] * depth)


def _nifti(data: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header, dtype: type) -> nib.Nifti1Image:
    """A NIfTI image with the input's affine and header, stored as ``dtype`` without intensity scaling."""
    img = nib.Nifti1Image(data.astype(dtype), affine, header=header.copy())
    img.set_data_dtype(dtype)
    img.header.set_slope_inter(1.0, 0.0)
    return img


def _is_fuse_output(directory: Path) -> bool:
    """Whether ``directory`` holds only what ``fuse`` wrote before output markers (fused/seg NIfTI files)."""
    return all(p.name in ("fused.nii.gz", "seg.nii.gz") and p.is_file() for p in directory.iterdir())


def fuse_case(run: str | Path, case_dir: str | Path, out: str | Path, checkpoint: str = "best", device: str = "cpu",
              overwrite: bool = False, reports: str | Path | None = None) -> dict[str, Any]:
    """Apply RUN's networks to the case in ``case_dir``; writes OUT/fused.nii.gz and OUT/seg.nii.gz atomically.
    ``reports``: a CSV (case_id, slice_index, text) whose texts guide a text-guided fusion net, per axial slice."""
    from fuse4seg.data.release.brats import find_case, from_canonical_labels, load_case

    check_separate(out, {"case": case_dir, "run": run})
    config, pipeline, _ = load_run(run, checkpoint, device)
    require_segmenter(run, config, "fuse")
    if reports is not None and not pipeline.reads_text:
        raise ConfigError(f"{run}'s fusion network ({config.fusion_model if pipeline.fusion else config.mode}) reads "
                          "no text", option="reports")
    dev = next(pipeline.seg.parameters()).device
    size, slice_size, _ = run_geometry(run)
    case = load_case(find_case(case_dir), require_label=False)
    texts = case_texts(reports, case.case_id, case.images.shape[-1])
    fused, labels = predict_case(run, config, pipeline, case, dev, texts)
    seg = from_canonical_labels(labels, case.scheme)
    written = []
    with atomic_dir(out, "fuse", overwrite=overwrite, legacy=_is_fuse_output) as tmp:
        if fused is not None:
            nib.save(_nifti(fused, case.affine, case.header, np.float32), tmp / "fused.nii.gz")
            written.append("fused.nii.gz")
        nib.save(_nifti(seg, case.affine, case.header, np.uint8), tmp / "seg.nii.gz")
        written.append("seg.nii.gz")
    voxels = {name: int(np.count_nonzero(labels == v)) for v, name in ((1, "NCR"), (2, "ED"), (3, "ET"))}
    return {"case_id": case.case_id, "scheme": case.scheme, "out": str(out), "files": written,
            "shape": list(labels.shape), "voxels": voxels,
            "texts": 0 if texts is None else sum(t is not None for t in texts),
            "resized": pipeline.variant.slices and uses_crop(tuple(labels.shape[:2]), size, slice_size)}


def fusion_fn_from_checkpoint(path: str | Path, fusion_inputs: tuple[str, ...] | None = None, device: str = "cpu",
                              batch_size: int = 32) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """(fusion_fn, fusion_name) for build_benchmark from a training checkpoint (e.g. RUN/best.pt).

    ``fusion_fn`` maps (N, C, H, W) float32 sources in [0, 1] (C = the checkpoint's fusion inputs,
    in that order) to (N, H, W) float32 in [0, 1]. ConfigError if the checkpoint has no fusion
    network or ``fusion_inputs`` differs from the inputs it was trained on.
    """
    path = Path(path)
    config, pipeline, state = pipeline_from_checkpoint(path)
    if "fusion" not in state["models"]:
        raise ConfigError(f"{path} ({config.mode} mode) has no fusion network", option="fusion_checkpoint")
    if pipeline.reads_text:  # the build writes its texts after fusing; a text-blind fusion would be silently worse
        raise ConfigError(f"{path} holds a text-guided fusion network ({config.fusion_model}), which the build "
                          "cannot give texts to; use a run of fusion-cnn or fusion-freq", option="fusion_checkpoint")
    if fusion_inputs is not None and tuple(fusion_inputs) != tuple(config.fusion_inputs):
        raise ConfigError(f"the fusion network in {path} was trained on {','.join(config.fusion_inputs)}, "
                          f"not {','.join(fusion_inputs)}", option="fusion_inputs")
    dev = resolve_device(device)
    net = pipeline.fusion.to(dev).eval()

    def fusion_fn(sources: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 in [0, 1] -> (N, H, W) float32 in [0, 1] through the trained fusion network."""
        out = []
        with torch.no_grad():
            for start in range(0, len(sources), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(sources[start:start + batch_size], dtype=np.float32))
                out.append(net(x.to(dev))[:, 0].float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, *sources.shape[2:]), np.float32)

    name = f"{config.fusion_model} trained {config.mode} ({path.parent.name}/{path.name}, step {int(state['step'])})"
    return fusion_fn, name
