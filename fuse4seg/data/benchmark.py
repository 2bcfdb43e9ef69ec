"""Build the BraTS-Fuse benchmark: tumour slices, a fused image per slice, patient-level splits, HDF5.

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
interpolation, labels with nearest neighbour (:mod:`fuse4seg.data.geometry`, shared with ``fuse``).
The rule is recorded in the root attribute ``slice_size`` (``size``, 0 for none), and the physical
size of every slice's pixels in the dataset ``spacing`` (:func:`slice_spacing`).

Splits: the sorted case ids are shuffled with ``numpy.random.default_rng(seed)`` and cut into
train/val/test by the largest-remainder rounding of the fractions, every non-zero fraction getting
at least one case. No patient appears in two splits.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fuse4seg import __version__
from fuse4seg.conventions import DEFAULT_FUSION_INPUTS, modality_indices, parse_modalities
from fuse4seg.data.geometry import crop_resize, square_box
from fuse4seg.errors import ConfigError, DataError, Fuse4SegError
from fuse4seg.fusion import fuse_batch, get_rule
from fuse4seg.io import atomic_dir

if TYPE_CHECKING:  # brats is imported lazily at run time (workers import it themselves)
    from fuse4seg.data.brats import CaseFiles

DEFAULT_SLICES_PER_CASE = 8
DEFAULT_PHANTOM_CASES = 10
MIN_AREA_FRACTION = 0.25
#: Largest --size: 4096 x 4096 float32 slices are 320 MiB per 5 planes, already past any GPU batch.
MAX_SIZE = 4096
PHANTOM_SOURCE = "fuse4seg phantom BraTS (synthetic, MNI152-based; not patient data)"

FusionFn = Callable[[np.ndarray], np.ndarray]


def parse_split(split: str | Sequence[float]) -> tuple[float, float, float]:
    """Parse '0.7,0.1,0.2' (or a sequence) into train/val/test fractions >= 0 summing to 1 (+-1e-6)."""
    try:
        parts = [float(p) for p in (split.split(",") if isinstance(split, str) else split)]
    except ValueError:
        raise ConfigError(f"--split {split!r}: expected three numbers such as 0.7,0.1,0.2") from None
    if len(parts) != 3 or not all(np.isfinite(parts)) or min(parts) < 0:
        raise ConfigError(f"--split {split!r}: expected three non-negative fractions (train,val,test)")
    if abs(sum(parts) - 1.0) > 1e-6:
        raise ConfigError(f"--split {split!r}: fractions sum to {sum(parts):.6g}, not 1")
    return parts[0], parts[1], parts[2]


def split_cases(case_ids: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, list[str]]:
    """Assign whole cases to train/val/test (see module doc); ConfigError if too few cases."""
    from fuse4seg.data.h5format import SPLITS as names

    nonzero = [i for i, f in enumerate(fractions) if f > 0]
    if len(case_ids) < len(nonzero):
        raise ConfigError(f"--split needs at least {len(nonzero)} cases (one per non-zero split), "
                          f"found {len(case_ids)}")
    n = len(case_ids)
    exact = np.asarray(fractions, dtype=np.float64) * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in nonzero:  # every non-zero split gets a case, taken from the largest split
        if counts[i] == 0:
            counts[int(np.argmax(counts))] -= 1
            counts[i] = 1
    order = np.random.default_rng(seed).permutation(sorted(case_ids))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return {name: sorted(order[bounds[i]:bounds[i + 1]].tolist()) for i, name in enumerate(names)}


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


def extract_case(case: CaseFiles, slices_per_case: int, size: int | None, fusion: str | None,
                 fusion_inputs: tuple[str, ...]) -> dict[str, object]:
    """Load one case and return its selected slices: label (K,H,W) uint8, slice_index (K,), spacing (3,)
    mm, and
    either ``chunks`` (the HDF5 chunks of source, fused and label, compressed here so that the
    workers share that cost) when ``fusion`` names a classical rule, or ``source`` (K,4,H,W) float32
    for a caller-side fusion_fn (``fusion`` None)."""
    from fuse4seg.data.brats import load_case
    from fuse4seg.data.h5format import encode_slices

    loaded = load_case(case, require_label=True)
    z = select_slices(loaded.label, slices_per_case)
    source = np.ascontiguousarray(np.moveaxis(loaded.images[..., z], -1, 0), dtype=np.float32)
    label = np.ascontiguousarray(np.moveaxis(loaded.label[..., z], -1, 0), dtype=np.uint8)
    box = square_box(loaded.brain_mask.any(axis=2)) if size is not None else None
    if box is not None and len(z):
        source, label = crop_resize(source, label, box, size)
    result = {"case_id": loaded.case_id, "scheme": loaded.scheme, "label": label, "shape": source.shape[-2:],
              "slice_index": z.astype(np.int32), "source": source, "chunks": None,
              "spacing": slice_spacing(loaded.header.get_zooms(), box, size)}
    if fusion is not None and len(z):
        fused = fuse_batch(source[:, modality_indices(fusion_inputs)], fusion)[:, None]
        result["chunks"], result["source"] = encode_slices(source, fused, label), None
    return result


def _apply_fusion_fn(fusion_fn: FusionFn, sources: np.ndarray, case_id: str) -> np.ndarray:
    """Run a trained fusion callable on (K, C, H, W) and check it returns (K, H, W) finite values."""
    out = np.asarray(fusion_fn(sources), dtype=np.float32)
    if out.shape != (sources.shape[0],) + sources.shape[2:] or not np.isfinite(out).all():
        raise DataError(f"fusion_fn returned shape {out.shape} (or non-finite values) for case {case_id}; "
                        f"expected finite {(sources.shape[0],) + sources.shape[2:]}")
    return np.clip(out, 0.0, 1.0)[:, None]


def command_line(out: str | os.PathLike, brats: str | os.PathLike | None = None, phantom: int | None = None,
                 fusion_inputs: Sequence[str] | str = DEFAULT_FUSION_INPUTS, fusion: str = "laplacian",
                 size: int | None = None, slices_per_case: int = DEFAULT_SLICES_PER_CASE,
                 split: Sequence[float] | str = (0.7, 0.1, 0.2), seed: int = 0, phantom_scale: float = 1.0,
                 fusion_checkpoint: str | os.PathLike | None = None) -> str:
    """The ``fuse4seg build-benchmark`` command line (shell-quoted) that builds with these options, as the
    dataset card records it (workers and --overwrite are left out: they do not change the package)."""
    import shlex

    argv = ["fuse4seg", "build-benchmark", "--out", os.fspath(out)]
    argv += ["--brats", os.fspath(brats)] if brats is not None else []
    argv += ["--phantom", str(phantom)] if phantom is not None else []
    argv += ["--phantom-scale", f"{phantom_scale:g}"] if brats is None and phantom_scale != 1.0 else []
    argv += ["--fusion-inputs", ",".join(parse_modalities(fusion_inputs)), "--fusion", fusion]
    argv += ["--size", str(size)] if size is not None else []
    argv += ["--slices-per-case", str(slices_per_case), "--split", ",".join(f"{f:g}" for f in parse_split(split)),
             "--seed", str(seed)]
    argv += ["--fusion-checkpoint", os.fspath(fusion_checkpoint)] if fusion_checkpoint is not None else []
    return shlex.join(argv)


def created_timestamp() -> str:
    """ISO-8601 UTC build time; from SOURCE_DATE_EPOCH when set (reproducible builds), else now."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    seconds = int(epoch) if epoch and epoch.strip().isdigit() else int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _validate_options(brats: object, phantom: int | None, fusion: str, fusion_fn: FusionFn | None,
                      size: int | None, slices_per_case: int, workers: int, phantom_scale: float) -> None:
    """ConfigError naming the option for any invalid build option (checked before any work)."""
    if brats is not None and phantom is not None:
        raise ConfigError("--brats and --phantom are exclusive: give one source (or none for the phantom default)")
    if phantom is not None and phantom < 1:
        raise ConfigError(f"--phantom must be >= 1 case, got {phantom}")
    if not 0 < phantom_scale <= 1:
        raise ConfigError(f"--phantom-scale must be in (0, 1], got {phantom_scale}")
    if fusion_fn is None:
        get_rule(fusion)
    if size is not None and not 8 <= size <= MAX_SIZE:
        raise ConfigError(f"--size must be in [8, {MAX_SIZE}] pixels, got {size}")
    if slices_per_case < 1:
        raise ConfigError(f"--slices-per-case must be >= 1, got {slices_per_case}")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")


def check_out_outside_source(out: str | os.PathLike, brats: str | os.PathLike) -> None:
    """ConfigError if ``out`` and the ``brats`` release overlap (after resolving symlinks and '..'): the
    same folder or a parent of the release (--overwrite would delete it), or a folder inside it (the
    package would sit among the cases, where the next build from that release would find it)."""
    out_path, source = Path(out).resolve(), Path(brats).resolve()
    if out_path == source or out_path in source.parents or source in out_path.parents:
        where = "is inside" if source in out_path.parents else "contains"
        raise ConfigError(f"--out {out} {where} the --brats release {brats} (writing there, or --overwrite, "
                          f"could destroy it); choose an output folder outside the release")


def _os_error_message(exc: OSError, out: str | os.PathLike, written: Sequence[Path], reading: Path | None) -> str:
    """One-line message for an OS error during a build. An error naming a file under one of the
    ``written`` folders (the output, its temporary sibling, the phantom scratch folder) is a write
    error; one naming any other file is a read error. Without a file name, the stage decides:
    ``reading`` is the source folder while it is being read, else None (writing)."""
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    if exc.filename is not None:
        name = Path(os.fsdecode(exc.filename)).resolve()
        if not any(name == folder.resolve() or folder.resolve() in name.parents for folder in written):
            return f"cannot read {name}: {reason}"
        return f"cannot write {out}: {reason} ({name})"
    return f"cannot read {reading}: {reason}" if reading is not None else f"cannot write {out}: {reason}"


def _extracted_in_order(cases: list[CaseFiles], workers: int, progress: bool, **options: object) -> Iterator[dict]:
    """Yield :func:`extract_case` results in case order, computed by ``workers`` processes."""
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI), so errors stay one clean line.
    bar = tqdm(total=len(cases), desc="building", unit="case", disable=None if progress else True, leave=False)
    try:
        if workers == 1:
            for case in cases:
                yield extract_case(case, **options)
                bar.update()
            return
        # forkserver, not fork: the parent may hold OpenCV/OpenMP/torch thread pools that a forked
        # child would inherit in an undefined state.
        context = multiprocessing.get_context("forkserver")
        # Import the heavy modules once in the server; workers forked from it start in milliseconds.
        context.set_forkserver_preload(["fuse4seg.data.benchmark", "fuse4seg.data.brats", "fuse4seg.data.h5format"])
        with ProcessPoolExecutor(max_workers=min(workers, len(cases)), mp_context=context) as pool:
            futures = {pool.submit(extract_case, case, **options): i for i, case in enumerate(cases)}
            done: dict[int, dict] = {}
            next_index = 0
            try:
                for future in as_completed(futures):
                    done[futures[future]] = future.result()
                    bar.update()
                    while next_index in done:  # hand results on in case order: deterministic file
                        yield done.pop(next_index)
                        next_index += 1
            except BrokenProcessPool:
                raise Fuse4SegError(
                    "--workers: a worker process died (out of memory, or the calling script re-runs the build when "
                    "imported: guard it with `if __name__ == \"__main__\":`); retry with fewer workers") from None
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        bar.close()


def _write_h5(path: Path, results: Iterable[dict], splits: dict[str, list[str]], attrs: dict[str, object],
              fusion_fn: FusionFn | None, fusion_inputs: tuple[str, ...]) -> dict[str, object]:
    """Stream case results into ``path`` (schema in :mod:`fuse4seg.data.h5format`); returns counts."""
    import h5py

    from fuse4seg.data.h5format import SPLITS, append_encoded, create_split_group, encode_slices, string_array

    split_of = {case_id: name for name, ids in splits.items() for case_id in ids}
    counts = {name: {"cases": 0, "slices": 0} for name in SPLITS}
    skipped: list[str] = []
    schemes: set[str] = set()
    shape: tuple[int, int] | None = None
    with h5py.File(path, "w") as h5:
        for key, value in attrs.items():
            h5.attrs[key] = string_array(value) if isinstance(value, tuple) else value
        for result in results:
            case_id, k = result["case_id"], len(result["slice_index"])
            schemes.add(result["scheme"])
            if k == 0:
                skipped.append(case_id)
                continue
            if shape is None:
                shape = tuple(result["shape"])
                for name in SPLITS:
                    create_split_group(h5, name, *shape)
            elif tuple(result["shape"]) != shape:
                raise DataError(f"case {case_id}: slices are {tuple(result['shape'])} but earlier cases are "
                                f"{shape}; pass --size to resample every case to one size")
            chunks = result["chunks"]
            if chunks is None:  # trained fusion: runs here, in the parent process, on the raw sources
                source = result["source"]
                fused = _apply_fusion_fn(fusion_fn, source[:, modality_indices(fusion_inputs)], case_id)
                chunks = encode_slices(source, fused, result["label"])
            split = split_of[case_id]
            append_encoded(h5[split], chunks, case_id, result["slice_index"], result["spacing"])
            counts[split]["cases"] += 1
            counts[split]["slices"] += k
    if shape is None:
        raise DataError("no case has a tumour-bearing slice: nothing to build")
    return {"splits": counts, "skipped_cases": skipped, "schemes": sorted(schemes),
            "height": int(shape[0]), "width": int(shape[1])}


def build_benchmark(out: str | os.PathLike, brats: str | os.PathLike | None = None, phantom: int | None = None,
                    fusion_inputs: Sequence[str] | str = DEFAULT_FUSION_INPUTS, fusion: str = "laplacian",
                    size: int | None = None, slices_per_case: int = DEFAULT_SLICES_PER_CASE,
                    split: Sequence[float] | str = (0.7, 0.1, 0.2), workers: int = 1, seed: int = 0,
                    overwrite: bool = False, fusion_fn: FusionFn | None = None, fusion_name: str | None = None,
                    progress: bool = True, phantom_scale: float = 1.0, command: str | None = None) -> dict:
    """Build the BraTS-Fuse dataset package in ``out`` (atomically) and return a summary dict.

    Source: the BraTS release ``brats``, else a phantom release of ``phantom`` cases (default
    :data:`DEFAULT_PHANTOM_CASES`) written to a temporary directory. ``fusion_fn`` (N, C, H, W) ->
    (N, H, W) in [0, 1], if given, replaces the classical rule ``fusion`` and is recorded as
    ``fusion_name``. ``command`` is the command line recorded in the dataset card (default: the
    :func:`command_line` of these options when no ``fusion_fn`` is given). ``out`` must lie
    outside ``brats`` (neither the same folder, nor a parent, nor inside it: :func:`check_out_outside_source`).

    Reproducible: the same source, options and seed give byte-identical files when
    SOURCE_DATE_EPOCH is set (it fixes the ``created`` time); without it only ``created`` and the
    dates derived from it differ, the HDF5 datasets are identical.
    """
    from fuse4seg.data import package
    from fuse4seg.data.brats import find_cases
    from fuse4seg.data.h5format import FORMAT_VERSION, H5_NAME, SPLITS

    started = time.perf_counter()
    fusion_inputs = parse_modalities(fusion_inputs)
    fractions = parse_split(split)
    _validate_options(brats, phantom, fusion, fusion_fn, size, slices_per_case, workers, phantom_scale)
    if brats is not None:
        check_out_outside_source(out, brats)
    method = (fusion_name or getattr(fusion_fn, "__name__", "custom")) if fusion_fn is not None else fusion
    if command is None and fusion_fn is None:
        command = command_line(out, brats, phantom, fusion_inputs, fusion, size, slices_per_case, fractions, seed,
                               phantom_scale)
    use_phantom = brats is None
    n_phantom = (phantom or DEFAULT_PHANTOM_CASES) if use_phantom else 0
    reading: Path | None = None  # the source folder while it is being listed (OS errors there are reads)
    outputs = [Path(out)]  # folders this build writes to, for telling read errors from write errors
    try:
        with atomic_dir(out, overwrite=overwrite) as tmp, tempfile.TemporaryDirectory(
                prefix="fuse4seg-phantom-") as scratch:
            outputs += [tmp, Path(scratch)]
            if use_phantom:
                from fuse4seg.data.phantom import write_phantom_release

                root = write_phantom_release(Path(scratch) / "release", cases=n_phantom, seed=seed,
                                             scale=phantom_scale, workers=workers)
            else:
                root = Path(brats)
            reading = root
            cases = find_cases(root)
            reading = None
            splits = split_cases([c.case_id for c in cases], fractions, seed)
            created = created_timestamp()
            source_dataset = PHANTOM_SOURCE if use_phantom else f"BraTS, {cases[0].scheme} release layout"
            attrs = {
                "format_version": FORMAT_VERSION, "fusion_inputs": fusion_inputs, "fusion_method": method,
                "source_dataset": source_dataset,
                "label_scheme": f"canonical 0 background, 1 NCR, 2 ED, 3 ET (from {cases[0].scheme})",
                "builder_version": f"fuse4seg {__version__}", "created": created, "slice_size": size or 0,
            }
            results = _extracted_in_order(cases, workers, progress, slices_per_case=slices_per_case, size=size,
                                          fusion=None if fusion_fn is not None else fusion,
                                          fusion_inputs=fusion_inputs)
            with contextlib.closing(results):  # a write error stops the worker pool at once
                written = _write_h5(tmp / H5_NAME, results, splits, attrs, fusion_fn, fusion_inputs)
            empty = [s for s, f in zip(SPLITS, fractions) if f > 0
                     and written["splits"][s]["slices"] == 0]
            if empty:
                raise DataError(f"split {empty[0]} has no tumour-bearing case (cases without tumour: "
                                f"{', '.join(written['skipped_cases'])}); use more cases or change --split")
            summary = {
                "out": str(Path(out)), "source": "phantom" if use_phantom else str(root),
                "phantom_default": use_phantom, "phantom_cases": n_phantom, "source_dataset": source_dataset,
                "brats_derived": not use_phantom, "label_scheme": attrs["label_scheme"],
                "fusion_method": method, "fusion_inputs": list(fusion_inputs), "seed": seed,
                "slices_per_case": slices_per_case, "size": size, "cases": len(cases), "created": created,
                "builder_version": attrs["builder_version"], "command": command, **written,
            }
            package.write_package_files(tmp, summary)
    except OSError as exc:
        raise Fuse4SegError(_os_error_message(exc, out, outputs, reading)) from None
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def format_summary(summary: dict) -> str:
    """Human-readable summary of a build: source, counts per split, size, fusion, time."""
    if summary["phantom_default"]:
        source = (f"phantom release of {summary['phantom_cases']} synthetic cases (the embedded phantom BraTS; "
                  f"pass --brats DIR to build from a real BraTS download)")
    else:
        source = f"BraTS release {summary['source']}"
    lines = [f"built {summary['out']} from {source}",
             (f"fusion {summary['fusion_method']} of {'+'.join(summary['fusion_inputs'])}; slices "
              f"{summary['height']}x{summary['width']}; seed {summary['seed']}")]
    for name, count in summary["splits"].items():
        lines.append(f"  {name:5s} {count['cases']:5d} cases {count['slices']:7d} slices")
    if summary["skipped_cases"]:
        lines.append(f"  left out (no tumour): {', '.join(summary['skipped_cases'])}")
    lines.append(f"time {summary['seconds']:.1f} s")
    return "\n".join(lines)
