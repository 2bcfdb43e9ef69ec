"""Fusion metrics of any method's fused images on disk (``fuse4seg fusion-metrics``).

Images are 2-D slices, PNG (or JPEG, BMP, TIFF) or NIfTI (``.nii``/``.nii.gz``, shape (H, W) or
(H, W, 1)), matched by file name without its extension: ``FUSED/0001.png`` is scored against
``SOURCE_1/0001.png``, ``SOURCE_2/0001.nii.gz`` and so on, in the order the source folders are given.
Greyscale raster images keep their stored values (8 or 16 bit); colour images become their luma as
CDDFuse's evaluator computes it (float32 ``COLOR_BGR2GRAY``; CDDFuse also passes greyscale files through
that conversion, which moves their values by float32 rounding, ~1e-5 relative). NIfTI slices are read
as stored. Every image is multiplied by ``scale`` (255 for images in [0, 1])
before :func:`fuse4seg.metrics.fusion.fusion_metrics`, which expects the 0-255 scale. A fused image
without a match in some source folder is an error naming it; source images with no fused image are
not scored. The result, written atomically to FILE.json (NaN and inf as null)::

    {"fused": DIR, "sources": [DIR, ...], "data_range", "scale", "metrics": [names],
     "images": [{"name", "EN", ..., "CC"}], "mean": {"EN", ..., "CC", "count"}}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuse4seg.data.release.nifti import MAX_SLICE_PIXELS, load_nifti
from fuse4seg.errors import ConfigError, DataError
from fuse4seg.io import atomic_path, check_replaceable, file_output, one_line
from fuse4seg.metrics.fusion import FUSION_METRIC_NAMES, fusion_metrics
from fuse4seg.metrics.options import MAX_DATA_RANGE, MAX_SCALE, FusionMetricsOptions

RASTER_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")
#: Largest slice read (pixels), raster or NIfTI: a header claiming more is refused before anything is allocated.
MAX_PIXELS: int = MAX_SLICE_PIXELS
#: Memory the metrics of one fused image may take (bytes, per worker process), and what they take per pixel of
#: each image (fused and sources: float64 copies and the metrics' intermediates, ~100 bytes measured; 128 kept).
#: An image pair over :func:`pixel_limit` is refused from its header: 1 GiB is 2.8 M pixels with two sources.
MEMORY_BYTES: int = 2**30
BYTES_PER_PIXEL: int = 128


def pixel_limit(sources: int) -> int:
    """Largest image (pixels) scored with ``sources`` source images within :data:`MEMORY_BYTES` (and :data:`MAX_PIXELS`)."""
    return min(MAX_PIXELS, MEMORY_BYTES // (BYTES_PER_PIXEL * (sources + 1)))


def _split_name(path: Path) -> tuple[str, str] | None:
    """(stem, extension) of an image file name in lower-case extension terms, or None for other files."""
    lower = path.name.lower()
    for ext in (*NIFTI_EXTENSIONS, *RASTER_EXTENSIONS):
        if lower.endswith(ext) and len(lower) > len(ext):
            return path.name[:-len(ext)], ext
    return None


def image_files(folder: str | Path, option: str) -> dict[str, Path]:
    """Stem -> image file of every image in ``folder`` (hidden files ignored); DataError for two files of one stem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a directory", option=option)
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        named = _split_name(path)
        if named is None or path.name.startswith(".") or not path.is_file():
            continue
        if named[0] in found:
            raise DataError(f"{named[0]}: both {found[named[0]].name} and {path.name} are in {folder}; keep one")
        found[named[0]] = path
    return found


def read_slice(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A 2-D image file as (H, W) float64: greyscale and NIfTI as stored, colour as its luma (BGR -> grey); one
    whose header claims more than ``max_pixels`` is refused before its pixels are read."""
    if path.name.lower().endswith(NIFTI_EXTENSIONS):
        return load_nifti(path, ndim=2, max_voxels=max_pixels, dtype=np.float64)[1]
    import cv2
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as header:  # reads the header only
            width, height = header.size
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: corrupt or unreadable image ({one_line(exc)})") from None
    if width * height > max_pixels:
        raise DataError(f"{path}: header claims {height} x {width} pixels, over the limit of {max_pixels} (the "
                        f"metrics' memory, {MEMORY_BYTES // 2**20} MiB per worker, with these sources)")
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise DataError(f"{path}: corrupt or unreadable image")
    if data.ndim == 3 and data.shape[2] in (3, 4):
        code = cv2.COLOR_BGR2GRAY if data.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        data = cv2.cvtColor(data.astype(np.float32), code)
    elif data.ndim != 2:
        raise DataError(f"{path}: an image of shape {data.shape}; expected greyscale, BGR or BGRA")
    return data.astype(np.float64)


@dataclass(frozen=True)
class FusionJob:
    """One fused image and its sources, with the SSIM data range and the intensity scale."""

    name: str
    fused: Path
    sources: tuple[Path, ...]
    data_range: float
    scale: float
    max_pixels: int = MAX_PIXELS


def score_image(job: FusionJob) -> dict[str, float | str]:
    """{"name", metric: value} of one fused image; DataError naming the file on bad input."""
    fused = read_slice(job.fused, job.max_pixels) * job.scale
    sources = [read_slice(p, job.max_pixels) * job.scale for p in job.sources]
    for path, image in zip(job.sources, sources):
        if image.shape != fused.shape:
            raise DataError(f"{job.name}: source {path} is {image.shape[0]} x {image.shape[1]} but the fused "
                            f"image {job.fused.name} is {fused.shape[0]} x {fused.shape[1]}")
    try:
        values = fusion_metrics(fused, sources, data_range=job.data_range)
    except DataError as exc:
        raise DataError(f"{job.name}: {exc}") from None
    return {"name": job.name, **values}


def _finite_or_none(value: float) -> float | None:
    """``value`` as a JSON number, None where it is NaN or infinite (PSNR of identical images)."""
    return float(value) if math.isfinite(value) else None


def fusion_metrics_directory(fused: str | Path, sources: list[str | Path], out: str | Path, data_range: float = 255.0,
                             scale: float = 1.0, workers: int = 1, progress: bool = True,
                             overwrite: bool = False) -> dict:
    """Score every image of ``fused`` against its namesakes in the ``sources`` folders; writes ``out`` (.json)."""
    sources = list(sources)
    if len(sources) < 2:
        raise ConfigError(f"fusion metrics need at least two source folders, got {len(sources)}", option="sources")
    for value, option, high in ((data_range, "data_range", MAX_DATA_RANGE), (scale, "scale", MAX_SCALE)):
        if not (math.isfinite(value) and 0 < value <= high):
            raise ConfigError(f"must be a positive finite number up to {high:g}, got {value!r}", option=option)
    if int(workers) < 1:
        raise ConfigError(f"must be at least 1, got {workers}", option="workers")
    out = Path(out)
    if out.suffix.lower() != ".json":
        raise ConfigError(f"must be a .json file, got {str(out)!r}", option="out")
    check_replaceable(out, overwrite, {"images", "mean", "sources"})
    fused_files = image_files(fused, "fused")
    if not fused_files:
        raise DataError(f"{fused}: no PNG, JPEG, BMP, TIFF or NIfTI images")
    source_files = [image_files(folder, "sources") for folder in sources]
    jobs = []
    for name, path in fused_files.items():
        matched = []
        for folder, files in zip(sources, source_files):
            if name not in files:
                raise DataError(f"{name}: fused image {path.name} has no source image named {name}.* in {folder}")
            matched.append(files[name])
        jobs.append(FusionJob(name, path, tuple(matched), float(data_range), float(scale), pixel_limit(len(sources))))
    with file_output(out):  # one writer: a second run on ``out`` is refused at once
        check_replaceable(out, overwrite, {"images", "mean", "sources"})  # again, now under the lock
        return _score_and_write(jobs, out, fused, sources, data_range, scale, workers, progress)


def _score_and_write(jobs: list[FusionJob], out: Path, fused: str | Path, sources: list[str | Path],
                     data_range: float, scale: float, workers: int, progress: bool) -> dict:
    """Score ``jobs`` and write the result to ``out`` atomically; returns it."""
    from fuse4seg.parallel import ordered_map

    rows = list(ordered_map(score_image, jobs, int(workers), desc="fusion metrics", unit="image", progress=progress,
                            preload=("fuse4seg.metrics.fusion_files",)))
    mean = {k: float(np.mean([r[k] for r in rows])) for k in FUSION_METRIC_NAMES}
    result = {"fused": str(fused), "sources": [str(s) for s in sources], "data_range": float(data_range),
              "scale": float(scale), "metrics": list(FUSION_METRIC_NAMES),
              "images": [{k: (v if k == "name" else _finite_or_none(v)) for k, v in r.items()} for r in rows],
              "mean": {**{k: _finite_or_none(v) for k, v in mean.items()}, "count": len(rows)}}
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return result


def format_fusion_summary(result: dict, out: str | Path) -> str:
    """Terminal lines: how many images, and the mean of every metric."""
    names = result["metrics"]
    cells = ("n/a" if result["mean"][k] is None else f"{result['mean'][k]:.4g}" for k in names)
    head = (f"scored {result['mean']['count']} fused images against {len(result['sources'])} sources "
            f"(SSIM data_range {result['data_range']:g}); mean:")
    return "\n".join([head,
                      " ".join(f"{k:>9}" for k in names), " ".join(f"{c:>9}" for c in cells), f"wrote {out}"])


def fusion_metrics_from_options(options: FusionMetricsOptions) -> dict:
    """``fuse4seg fusion-metrics``: :func:`fusion_metrics_directory` with the command's declared options."""
    o = options
    return fusion_metrics_directory(o.fused, o.sources, o.out, data_range=o.data_range, scale=o.scale,
                                    workers=o.workers, overwrite=o.overwrite)
