"""Benchmark the BraTS scoring conventions on one full-size 240 x 240 x 155 phantom case, one core.

Usage: python benchmarks/scoring.py [--repeats N] [--out benchmarks/results/scoring.json]

The case: a nested ED > NCR > ET tumour (benchmarks/metrics.py's label volume) plus satellite lesions; the
prediction is shifted, misses one satellite and adds false-positive blobs, so every region has several
lesions, a miss and false positives. Timed, all three regions per call, best-of-N CPU seconds:
``segmentation_metrics`` under monai, brats2023 (GLI settings) and brats2025; panoptica 2.x with
brats-evaluation's 2025 settings (tests/_scoring_refs.py; skipped if not installed); and the 2023-24
algorithm written out lesion by lesion with DeepMind's surface-distance (the same file), the way the
challenge script computes it. Values are compared with the references in the same run.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import importlib.util
import json
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fuse4seg.io import atomic_write_text
from fuse4seg.metrics import segmentation_metrics

REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


def load(name: str, path: Path) -> ModuleType:
    """Import a file of this repository as a module (the references live in tests/, the volume in benchmarks/)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, truth) canonical uint8 label volumes, 240 x 240 x 155, with satellite lesions and false positives."""
    pred, truth = load("bench_metrics", ROOT / "benchmarks" / "metrics.py").make_label_volume(seed)
    rng = np.random.default_rng(seed + 100)
    grid = np.ogrid[:240, :240, :155]

    def ball(label: np.ndarray, centre: np.ndarray, radius: float) -> None:
        """Write a small lesion (ED shell, ET core) into ``label``."""
        r2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
        label[r2 <= radius**2] = 2
        label[r2 <= (0.6 * radius) ** 2] = 3

    satellites = [np.array([60, 60, 40]), np.array([180, 70, 110]), np.array([70, 175, 100]), np.array([175, 180, 45])]
    for i, centre in enumerate(satellites):
        radius = 4.0 + 2 * i
        ball(truth, centre, radius)
        if i != 1:  # the prediction misses the second satellite
            ball(pred, centre + rng.integers(-1, 2, 3), radius + rng.uniform(-1, 1))
    for centre in (np.array([30, 200, 130]), np.array([210, 30, 20]), np.array([120, 30, 130])):
        ball(pred, centre, 3.0)  # false positives far from any lesion
    return pred, truth


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(best CPU seconds, wall seconds of that run) of fn() over ``repeats`` runs after one warm-up call."""
    fn()
    best = (np.inf, np.inf)
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.process_time() - cpu, time.perf_counter() - wall))
    return best


def max_diff(ours: dict, ref: dict, keys: list[str]) -> float:
    """Largest |ours - ref| over regions and ``keys`` (NaN on both sides counts as equal)."""
    diffs = [0.0]
    for region in REGIONS:
        for key in keys:
            a, b = float(ours[region][key]), float(ref[region][key])
            if not (np.isnan(a) and np.isnan(b)):
                diffs.append(abs(a - b))
    return float(max(diffs))


def main() -> None:
    """Time every convention and its reference on one case, print the table, write the JSON atomically."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best is kept)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scoring.json")
    args = parser.parse_args()
    refs = load("scoring_refs", ROOT / "tests" / "_scoring_refs.py")
    pred, truth = make_case()
    rows: dict[str, dict] = {}
    results = {}
    for convention in ("monai", "brats2023", "brats2025"):
        results[convention] = segmentation_metrics(pred, truth, convention=convention, challenge="gli")
        cpu, wall = best_time(lambda c=convention: segmentation_metrics(pred, truth, convention=c, challenge="gli"),
                              args.repeats)
        rows[convention] = {"cpu_s": cpu, "wall_s": wall}
    masks = {r: (np.isin(pred, v), np.isin(truth, v)) for r, v in REGIONS.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # surface-distance 0.1 uses scipy.ndimage.filters

        def reference_2023() -> dict:
            """The lesion-by-lesion 2023-24 reference for WT, TC and ET (GLI: 3 dilations, 50 mm^3)."""
            return {r: refs.brats2023_reference(p, t, (1.0, 1.0, 1.0), 3, 50.0) for r, (p, t) in masks.items()}

        ref_2023 = reference_2023()
        cpu, wall = best_time(reference_2023, 1)
    rows["brats2023 reference (lesion by lesion, surface-distance)"] = {
        "cpu_s": cpu, "wall_s": wall, "speedup": cpu / rows["brats2023"]["cpu_s"],
        "max_abs_diff": max_diff(results["brats2023"], ref_2023, list(ref_2023["WT"]))}
    try:
        evaluator = refs.panoptica_evaluator()
    except ImportError:
        evaluator = None
    if evaluator is not None:
        ref_2025 = refs.panoptica_scores(evaluator, pred, truth)
        cpu, wall = best_time(lambda: refs.panoptica_scores(evaluator, pred, truth), 1)
        rows["panoptica (brats-evaluation 2025 settings)"] = {
            "cpu_s": cpu, "wall_s": wall, "speedup": cpu / rows["brats2025"]["cpu_s"],
            "max_abs_diff": max_diff(results["brats2025"], ref_2025, list(ref_2025["WT"]))}
    lesions = {c: {r: {k: results[c][r][k] for k in ("tp", "fp", "fn")} for r in REGIONS}
               for c in ("brats2023", "brats2025")}
    print("Scoring one 240 x 240 x 155 case (WT, TC, ET), one thread, best-of-N CPU seconds")
    print(f"{'':<58} {'CPU s':>8} {'wall s':>8} {'x faster':>9} {'max |diff|':>11}")
    for name, row in rows.items():
        speed = f"{row['speedup']:.1f}x" if "speedup" in row else ""
        diff = f"{row['max_abs_diff']:.1e}" if "max_abs_diff" in row else ""
        print(f"{name:<58} {row['cpu_s']:>8.3f} {row['wall_s']:>8.3f} {speed:>9} {diff:>11}")
    print("lesions (tp, fp, fn):", json.dumps(lesions))
    result = {"benchmark": "scoring", "threads": 1, "timer": "best-of-N time.process_time (CPU seconds)",
              "shape": [240, 240, 155], "python": platform.python_version(), "numpy": np.__version__,
              "machine": platform.machine(), "cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
              "timings": rows, "lesions": lesions, "panoptica_installed": evaluator is not None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
