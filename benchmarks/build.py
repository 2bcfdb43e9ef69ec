"""Seconds per case to build BraTS-Fuse from a phantom release, against the nibabel load floor.

Writes a full-scale phantom release (240 x 240 x 155) to a temporary directory, then measures in
the same run: (floor) loading every NIfTI file of a case with nibabel into arrays, (reader) the
fuse4seg reader ``load_case`` (validate + canonical labels + normalise), and (build) the whole
``build_benchmark`` with 1 and 2 workers, per case, as wall time and, for the in-process rows, as
CPU time: on a shared machine CPU time is the steadier measure of work. (With 2 workers the work
runs in forkserver children whose CPU time this process cannot see, so that row shows wall only.) It also compares HDF5 compression settings for
the slice datasets (size, write time, random-slice read time). Prints a table and writes
benchmarks/results/build.json.

    python benchmarks/build.py [--cases 4] [--scale 1.0] [--slices-per-case 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np

from fuse4seg.data.build.builder import build_benchmark
from fuse4seg.data.package.schema import COMPRESSION
from fuse4seg.data.phantom.generator import write_phantom_release
from fuse4seg.data.release.brats import find_cases, load_case

COMPRESSIONS: dict[str, dict[str, object]] = {
    "gzip-4+shuffle": {"compression": "gzip", "compression_opts": 4, "shuffle": True},
    "gzip-4": {"compression": "gzip", "compression_opts": 4},
    "gzip-1+shuffle": {"compression": "gzip", "compression_opts": 1, "shuffle": True},
    "gzip-1": {"compression": "gzip", "compression_opts": 1},
    "lzf+shuffle": {"compression": "lzf", "shuffle": True},
    "lzf": {"compression": "lzf"},
    "none": {},
}


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(wall, CPU of this process) seconds of ``fn()``, each the minimum over ``repeats`` runs."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def nibabel_floor(cases: list) -> None:
    """Load every NIfTI file of every case with nibabel (stored dtype, no scaling): the floor."""
    for case in cases:
        for path in case.paths.values():
            np.asanyarray(nib.load(path).dataobj)


def reader(cases: list) -> None:
    """fuse4seg's ``load_case`` on every case (read, validate, normalise, canonical labels)."""
    for case in cases:
        load_case(case)


def compression_table(h5_path: Path, scratch: Path, reads: int = 200) -> list[dict]:
    """Rewrite the train split's image datasets with each compression; size, write and read times."""
    with h5py.File(h5_path, "r") as h5:
        arrays = {name: h5["train"][name][:] for name in ("source", "fused", "label")}
    n = len(arrays["source"])
    order = np.random.default_rng(0).integers(0, n, size=reads)
    rows = []
    for name, options in COMPRESSIONS.items():
        path = scratch / "compression.h5"
        start = time.perf_counter()
        with h5py.File(path, "w") as h5:
            for key, values in arrays.items():
                h5.create_dataset(key, data=values, chunks=(1, *values.shape[1:]), **options)
        write = time.perf_counter() - start
        with h5py.File(path, "r") as h5:
            start = time.perf_counter()
            for i in order:
                h5["source"][i], h5["fused"][i], h5["label"][i]
            read = (time.perf_counter() - start) / reads
        used = " (used)" if options == COMPRESSION else ""
        rows.append({"compression": name + used, "mb": path.stat().st_size / 1e6,
                     "write_ms_per_slice": 1e3 * write / n, "read_ms_per_slice": 1e3 * read})
        path.unlink()
    return rows


def main() -> int:
    """Run the measurements, print the tables, write benchmarks/results/build.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--slices-per-case", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="Each timing is the best of this many runs.")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "build.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fuse4seg-bench-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        release = write_phantom_release(tmp / "release", cases=args.cases, scale=args.scale, workers=2)
        phantom_s = time.perf_counter() - start
        cases = find_cases(release)
        load_before = os.getloadavg()[0]
        nibabel_floor(cases)  # warm the page cache so every row reads from memory
        # Best of ``repeats`` for every row: the machine is shared, the minimum is the least disturbed run.
        n = args.cases
        rows = {"nibabel load (floor)": timed(lambda: nibabel_floor(cases), args.repeats),
                "fuse4seg load_case": timed(lambda: reader(cases), args.repeats)}
        for workers in (1, 2):
            rows[f"build_benchmark, {workers} worker{'s' if workers > 1 else ''}"] = timed(
                lambda w=workers: build_benchmark(tmp / f"pkg{w}", brats=release, workers=w, progress=False,
                                                  slices_per_case=args.slices_per_case, overwrite=True),
                args.repeats)
        rows = {name: (wall / n, cpu / n if "2 workers" not in name else None) for name, (wall, cpu) in rows.items()}
        with h5py.File(tmp / "pkg1" / "brats_fuse.h5", "r") as h5:
            shape = h5["train/source"].shape[2:]
        compression = compression_table(tmp / "pkg1" / "brats_fuse.h5", tmp)
    floor_wall, floor_cpu = rows["nibabel load (floor)"]
    print(f"BraTS-Fuse build from a phantom release: {args.cases} cases at scale {args.scale} "
          f"({shape[0]}x{shape[1]} slices, {args.slices_per_case} slices/case), phantom written in {phantom_s:.1f} s; "
          f"best of {args.repeats}; {os.cpu_count()} CPUs, load average {load_before:.1f} at start")
    print(f"{'step':32s} {'wall s/case':>11s} {'x floor':>8s} {'CPU s/case':>11s} {'x floor':>8s}")
    for name, (wall, cpu) in rows.items():
        cpu_text = f"{cpu:11.3f} {cpu / floor_cpu:8.2f}" if cpu is not None else f"{'-':>11s} {'-':>8s}"
        print(f"{name:32s} {wall:11.3f} {wall / floor_wall:8.2f} {cpu_text}")
    print(f"\n{'HDF5 compression (train split)':32s} {'MB':>7s} {'write ms/sl':>12s} {'read ms/sl':>11s}")
    for row in compression:
        print(f"{row['compression']:32s} {row['mb']:7.2f} {row['write_ms_per_slice']:12.2f} "
              f"{row['read_ms_per_slice']:11.2f}")
    result = {
        "cases": args.cases, "repeats": args.repeats, "scale": args.scale, "slices_per_case": args.slices_per_case,
        "slice_shape": list(shape), "phantom_seconds": phantom_s,
        "seconds_per_case": {name: {"wall": wall, "cpu": cpu} for name, (wall, cpu) in rows.items()},
        "ratio_to_floor": {name: {"wall": wall / floor_wall, "cpu": None if cpu is None else cpu / floor_cpu}
                           for name, (wall, cpu) in rows.items()},
        "compression": compression,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_at_start": load_before},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
