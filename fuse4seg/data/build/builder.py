"""Build the BraTS-Fuse benchmark: tumour slices, a fused image per slice, patient-level splits, HDF5.

Each case is read, its slices picked, cropped, described and compressed in a worker process
(:mod:`fuse4seg.data.build.cases`: the slice rule, the geometry and the texts); this module lists the release
(or writes a phantom one), splits the cases, streams the workers' results into ``brats_fuse.h5`` and writes the
package's metadata files.

Volumes (``volumes``): each tumour-bearing case is also stored whole, cropped to its brain box at its
native voxel grid, under ``/volumes/<split>/<case_id>`` (:mod:`fuse4seg.data.package.h5volumes`), extracted
and compressed in the same worker as its slices and written by the parent.

Splits: the sorted case ids are shuffled with ``numpy.random.default_rng(seed)`` and cut into
train/val/test by the largest-remainder rounding of the fractions, every non-zero fraction getting
at least one case. No patient appears in two splits.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fuse4seg import __version__
from fuse4seg.conventions import modality_indices
from fuse4seg.data.build.cases import extract_case
from fuse4seg.data.build.options import DEFAULT_PHANTOM_CASES, BuildOptions
from fuse4seg.data.package.schema import FORMAT_VERSION, H5_NAME, ROOT_ATTRIBUTES, SPLITS, VOLUMES_GROUP
from fuse4seg.errors import ConfigError, DataError, Fuse4SegError
from fuse4seg.io import atomic_dir

if TYPE_CHECKING:  # brats is imported lazily at run time (workers import it themselves)
    from fuse4seg.data.release.brats import CaseFiles

PHANTOM_SOURCE = "fuse4seg phantom BraTS (synthetic, MNI152-based; not patient data)"

FusionFn = Callable[[np.ndarray], np.ndarray]


def split_cases(case_ids: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, list[str]]:
    """Assign whole cases to train/val/test (see module doc); ConfigError if too few cases."""
    nonzero = [i for i, f in enumerate(fractions) if f > 0]
    if len(case_ids) < len(nonzero):
        raise ConfigError(f"needs at least {len(nonzero)} cases (one per non-zero split), found {len(case_ids)}",
                          option="split")
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
    return {name: sorted(order[bounds[i]:bounds[i + 1]].tolist()) for i, name in enumerate(SPLITS)}


def _apply_fusion_fn(fusion_fn: FusionFn, sources: np.ndarray, case_id: str) -> np.ndarray:
    """Run a trained fusion callable on (K, C, H, W) and check it returns (K, H, W) finite values."""
    out = np.asarray(fusion_fn(sources), dtype=np.float32)
    if out.shape != (sources.shape[0],) + sources.shape[2:] or not np.isfinite(out).all():
        raise DataError(f"fusion_fn returned shape {out.shape} (or non-finite values) for case {case_id}; "
                        f"expected finite {(sources.shape[0],) + sources.shape[2:]}")
    return np.clip(out, 0.0, 1.0)[:, None]


def command_line(out: str | os.PathLike, **options: object) -> str:
    """``BuildOptions(out, **options).command_line()``: the command the dataset card records."""
    return BuildOptions(out=out, **options).command_line()


def created_timestamp() -> str:
    """ISO-8601 UTC build time; from SOURCE_DATE_EPOCH when set (reproducible builds), else now."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    seconds = int(epoch) if epoch and epoch.strip().isdigit() else int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


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
    from fuse4seg.parallel import ordered_map

    return ordered_map(extract_case, cases, workers, desc="building", progress=progress, **options,
                       preload=("fuse4seg.data.build.cases", "fuse4seg.data.release.brats",
                                "fuse4seg.data.package.h5format", "fuse4seg.data.package.h5volumes",
                                "fuse4seg.data.package.describe"))


def write_h5(path: Path, results: Iterable[dict], splits: dict[str, list[str]], attrs: dict[str, object],
             fusion_fn: FusionFn | None, fusion_inputs: tuple[str, ...],
             reports: dict[tuple[str, int | None], str] | None = None) -> dict[str, object]:
    """Stream case results (:func:`extract_case`) into ``path`` (schema in :mod:`fuse4seg.data.package.schema`; the volumes
    layout when ``attrs["volumes"]``), each slice's text replaced by its ``reports`` entry if any
    (:func:`fuse4seg.data.package.describe.apply_reports`); returns {"splits": {split: {"cases", "slices"}}, "skipped_cases",
    "schemes", "height", "width" (px)}."""
    import h5py

    from fuse4seg.data.package.describe import apply_reports
    from fuse4seg.data.package.h5format import append_encoded, create_split_group, encode_slices
    from fuse4seg.data.package.h5primitives import string_array
    from fuse4seg.data.package.h5volumes import encode_volume, write_volume

    split_of = {case_id: name for name, ids in splits.items() for case_id in ids}
    counts = {name: {"cases": 0, "slices": 0} for name in SPLITS}
    skipped: list[str] = []
    schemes: set[str] = set()
    shape: tuple[int, int] | None = None
    with h5py.File(path, "w") as h5:
        for key, value in attrs.items():
            h5.attrs[key] = string_array(value) if isinstance(value, tuple) else value
        if attrs["volumes"]:
            for name in SPLITS:
                h5.create_group(f"{VOLUMES_GROUP}/{name}")
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
                                f"{shape}; set it to resample every case to one size", option="size")
            chunks = result["chunks"]
            if chunks is None:  # trained fusion: runs here, in the parent process, on the raw sources
                source = result["source"]
                fused = _apply_fusion_fn(fusion_fn, source[:, modality_indices(fusion_inputs)], case_id)
                chunks = encode_slices(source, fused, result["label"])
            split = split_of[case_id]
            texts = apply_reports(reports or {}, case_id, result["slice_index"], result["text"])
            append_encoded(h5[split], chunks, case_id, result["slice_index"], result["spacing"], texts)
            volume = result.get("volume")
            if volume is not None:
                if volume["chunks"] is None:  # trained fusion, here, on the axial planes (D, C, H, W) as on slices
                    source = volume["source"]
                    fused = _apply_fusion_fn(fusion_fn, np.moveaxis(source[modality_indices(fusion_inputs)], 1, 0),
                                             case_id)
                    volume["chunks"] = encode_volume(source, np.moveaxis(fused, 0, 1), volume["label"])
                write_volume(h5[VOLUMES_GROUP][split], case_id, volume)
            counts[split]["cases"] += 1
            counts[split]["slices"] += k
    if shape is None:
        raise DataError("no case has a tumour-bearing slice: nothing to build")
    return {"splits": counts, "skipped_cases": skipped, "schemes": sorted(schemes),
            "height": int(shape[0]), "width": int(shape[1])}


def _is_package(directory: Path) -> bool:
    """Whether ``directory`` is a package written before output markers (croissant.json and the HDF5 file)."""
    return (directory / "croissant.json").is_file() and (directory / H5_NAME).is_file()


def resolve_source(options: BuildOptions, scratch: Path) -> tuple[Path, int]:
    """(release folder, phantom cases): ``options.brats`` (0 phantom cases), or a phantom release of
    ``options.phantom`` cases (default :data:`DEFAULT_PHANTOM_CASES`) written under ``scratch``."""
    if options.brats is not None:
        return Path(options.brats), 0
    from fuse4seg.data.phantom.generator import write_phantom_release

    cases = options.phantom or DEFAULT_PHANTOM_CASES
    return write_phantom_release(scratch / "release", cases=cases, seed=options.seed, scale=options.phantom_scale,
                                 workers=options.workers), cases


def resolve_fusion(options: BuildOptions, fusion_fn: FusionFn | None,
                   fusion_name: str | None) -> tuple[FusionFn | None, str]:
    """(fusion callable or None for the classical rule, recorded fusion_method): ``fusion_fn``, else the rule
    ``options.fusion``. A ``fusion_checkpoint`` is refused here: :func:`fuse4seg.inference.build.build_benchmark`
    loads its network and passes it as ``fusion_fn``."""
    if options.fusion_checkpoint is not None:
        if fusion_fn is not None:
            raise ConfigError("give fusion_checkpoint or fusion_fn, not both", option="fusion_checkpoint")
        # Loading a trained network needs the training side, which data never imports.
        raise ConfigError("needs a trained network loaded: build through fuse4seg.inference.build.build_benchmark "
                          "(as `fuse4seg build-benchmark` does), or pass the network as fusion_fn",
                          option="fusion_checkpoint")
    if fusion_fn is None:
        return None, options.fusion
    return fusion_fn, fusion_name or getattr(fusion_fn, "__name__", "custom")


def root_attributes(options: BuildOptions, method: str, scheme: str) -> dict[str, object]:
    """The root attributes of brats_fuse.h5 in the schema's order, for cases of the release ``scheme``."""
    values = {
        "format_version": FORMAT_VERSION, "fusion_inputs": options.fusion_inputs, "fusion_method": method,
        "source_dataset": PHANTOM_SOURCE if options.brats is None else f"BraTS, {scheme} release layout",
        "label_scheme": f"canonical 0 background, 1 NCR, 2 ED, 3 ET (from {scheme})",
        "builder_version": f"fuse4seg {__version__}", "created": created_timestamp(), "slice_size": options.size or 0,
        "volumes": int(options.volumes), "text": 1,
    }
    return {spec.name: values[spec.name] for spec in ROOT_ATTRIBUTES}


def summarise(options: BuildOptions, root: Path, phantom_cases: int, cases: int, attrs: dict[str, object],
              written: dict[str, object], command: str) -> dict[str, object]:
    """The build summary (what the dataset card, CITATION.cff and croissant.json describe); DataError if a
    split with a non-zero fraction received no tumour-bearing case."""
    empty = [s for s, f in zip(SPLITS, options.split) if f > 0 and written["splits"][s]["slices"] == 0]
    if empty:
        raise DataError(f"split {empty[0]} has no tumour-bearing case (cases without tumour: "
                        f"{', '.join(written['skipped_cases'])}); use more cases or change the fractions", option="split")
    phantom = options.brats is None
    return {
        "out": str(Path(options.out)), "source": "phantom" if phantom else str(root), "phantom_default": phantom,
        "phantom_cases": phantom_cases, "source_dataset": attrs["source_dataset"], "brats_derived": not phantom,
        "label_scheme": attrs["label_scheme"], "fusion_method": attrs["fusion_method"],
        "fusion_inputs": list(options.fusion_inputs), "seed": options.seed, "slices_per_case": options.slices_per_case,
        "size": options.size, "volumes": options.volumes, "reports": options.reports, "cases": cases, "created": attrs["created"],
        "builder_version": attrs["builder_version"],
        "command": command, **written, "attrs": attrs,
    }


def build_options(out: str | os.PathLike | BuildOptions, options: dict[str, object]) -> BuildOptions:
    """``out`` when it is a BuildOptions (TypeError if ``options`` come beside it), else BuildOptions(out, **options)."""
    if isinstance(out, BuildOptions) and options:
        raise TypeError(f"build_benchmark: options {', '.join(options)} given beside a BuildOptions")
    return out if isinstance(out, BuildOptions) else BuildOptions(out=out, **options)


def build_benchmark(out: str | os.PathLike | BuildOptions, *, fusion_fn: FusionFn | None = None,
                    fusion_name: str | None = None, progress: bool = True, command: str | None = None,
                    **options: object) -> dict:
    """Build the BraTS-Fuse dataset package atomically and return its summary (:func:`summarise`).

    ``out``: a :class:`BuildOptions`, or the output folder with the other options as keywords
    (``build_benchmark("pkg", brats="BraTS2021", size=192)``). Steps: :func:`resolve_source` (the
    release, or a phantom release written to a scratch folder), :func:`split_cases`,
    :func:`extract_case` per case (``workers`` processes), :func:`write_h5`, :func:`summarise`, then the
    card, CITATION.cff and croissant.json, and with ``parquet`` the Parquet shards
    (:func:`fuse4seg.data.package.export.add_parquet`, listed in the summary's "parquet"). ``fusion_fn``
    (N, C, H, W) -> (N, H, W) in [0, 1], if given, replaces the classical rule and is recorded as ``fusion_name``
    (a run checkpoint's network: :func:`fuse4seg.inference.build.build_benchmark`). ``command`` replaces the
    command line recorded in the card (default :meth:`BuildOptions.command_line`).

    Reproducible: the same source, options and seed give byte-identical files when
    SOURCE_DATE_EPOCH is set (it fixes the ``created`` time); without it only ``created`` and the
    dates derived from it differ, the HDF5 datasets are identical.
    """
    from fuse4seg.data.package import croissant
    from fuse4seg.data.package.describe import read_reports
    from fuse4seg.data.release import brats

    opts = build_options(out, options).validate(fusion_fn is not None)
    started = time.perf_counter()
    custom = fusion_fn is not None and opts.fusion_checkpoint is None
    fusion_fn, method = resolve_fusion(opts, fusion_fn, fusion_name)
    if command is None:  # a Python callable has no flag: say so beside the options that were given
        command = opts.command_line() + (f"  # fused by the Python callable {method!r}, not --fusion" if custom else "")
    reading: Path | None = None  # the source folder while it is being listed (OS errors there are reads)
    outputs = [Path(opts.out)]  # folders this build writes to, for telling read errors from write errors
    try:
        # The scratch phantom release lives inside the temporary package, so an interrupted build leaves
        # nothing elsewhere: the next build of this --out sweeps it with the rest.
        with atomic_dir(opts.out, "package", overwrite=opts.overwrite, legacy=_is_package) as tmp, \
                tempfile.TemporaryDirectory(prefix=".scratch-", dir=tmp) as scratch:
            outputs += [tmp, Path(scratch)]
            root, phantom_cases = resolve_source(opts, Path(scratch))
            reading = root
            cases = brats.find_cases(root)
            reading = None
            splits = split_cases([c.case_id for c in cases], opts.split, opts.seed)
            reports = None if opts.reports is None else read_reports(opts.reports, [c.case_id for c in cases])
            attrs = root_attributes(opts, method, cases[0].scheme)
            results = _extracted_in_order(cases, opts.workers, progress, slices_per_case=opts.slices_per_case,
                                          size=opts.size, fusion=None if fusion_fn is not None else opts.fusion,
                                          fusion_inputs=opts.fusion_inputs, volumes=opts.volumes, seed=opts.seed)
            with contextlib.closing(results):  # a write error stops the worker pool at once
                written = write_h5(tmp / H5_NAME, results, splits, attrs, fusion_fn, opts.fusion_inputs, reports)
            summary = summarise(opts, root, phantom_cases, len(cases), attrs, written, command)
            croissant.write_package_files(tmp, summary)
            if opts.parquet:  # inside the temporary package: it appears complete, records and all, or not at all
                from fuse4seg.data.package.export import add_parquet

                summary["parquet"] = add_parquet(tmp)["files"]
    except OSError as exc:
        raise Fuse4SegError(_os_error_message(exc, opts.out, outputs, reading)) from None
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
    if summary.get("volumes"):
        lines.append("  whole volumes of every case (brain box, native grid) under /volumes")
    if summary.get("parquet"):
        lines.append(f"  records also as {len(summary['parquet'])} Parquet shard(s) under parquet/")
    if summary["skipped_cases"]:
        lines.append(f"  left out (no tumour): {', '.join(summary['skipped_cases'])}")
    lines.append(f"time {summary['seconds']:.1f} s")
    return "\n".join(lines)
