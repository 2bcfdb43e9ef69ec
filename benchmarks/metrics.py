"""Benchmark fuse4seg.metrics on one core: fusion metrics per pair, HD95 / segmentation metrics per volume.

Usage: python benchmarks/metrics.py [--pairs N] [--volumes N] [--out benchmarks/results/metrics.json]

Fusion: the full metric set on 256 x 256 pairs and 240 x 240 slices (pairs per second), with a per-metric
breakdown against references timed in the same run: skimage SSIM, sklearn MI, and plain 2-D
``scipy.signal.convolve2d`` VIF / Qabf (the way CDDFuse's evaluator computes them; taken from
tests/test_metrics_fusion.py). Segmentation: 240 x 240 x 155 phantom-like label volumes, seconds per volume
for all regions, and HD95 per region against MONAI ``compute_hausdorff_distance(percentile=95)``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fuse4seg.io import atomic_write_text
from fuse4seg.metrics import (
    FUSION_METRIC_NAMES,
    fusion_metrics,
    fusion_stats,
    fusion_structure,
    hd95,
    segmentation_metrics,
)


def load_references() -> ModuleType:
    """The independent reference implementations of tests/test_metrics_fusion.py (ref_vif, ref_qabf)."""
    spec = importlib.util.spec_from_file_location("metric_refs", ROOT / "tests" / "test_metrics_fusion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_fusion_pair(size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brain-slice-like (fused, a, b) on the 0-255 scale: an ellipse 'head', a bright lesion, texture, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size].astype(np.float64) / size - 0.5
    head = (x / 0.42) ** 2 + (y / 0.48) ** 2 < 1
    lesion = ((x - 0.1) / 0.12) ** 2 + ((y + 0.05) / 0.09) ** 2 < 1
    texture = np.sin(40 * x + 3 * seed) * np.cos(31 * y)
    a = head * (110 + 25 * texture) + lesion * 90 + rng.normal(0, 6, (size, size))
    b = head * (70 + 10 * texture + 60 * (x**2 + y**2 < 0.05)) + lesion * 140 + rng.normal(0, 4, (size, size))
    a, b = np.clip(np.round(a), 0, 255), np.clip(np.round(b), 0, 255)
    return np.round(np.maximum(a, b) * 0.7 + 0.3 * (a + b) / 2), a, b


def make_label_volume(seed: int, shape: tuple[int, int, int] = (240, 240, 155)) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, truth) canonical label volumes: nested ellipsoids ED > NCR > ET with bumpy borders."""
    rng = np.random.default_rng(seed)
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]

    def tumour(center, radii, wobble):
        r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii))
        bump = 1 + wobble * np.sin(grids[0] / 5.0 + seed) * np.cos(grids[1] / 7.0) * np.sin(grids[2] / 4.0)
        label = np.zeros(shape, np.uint8)
        label[r2 < 1.0 * bump] = 2
        label[r2 < 0.45 * bump] = 1
        label[(r2 < 0.3 * bump) & (r2 > 0.12)] = 3
        return label

    center = np.array([120, 115, 75]) + rng.integers(-10, 10, 3)
    radii = np.array([32, 28, 22]) + rng.integers(-4, 4, 3)
    truth = tumour(center, radii, 0.15)
    pred = tumour(center + rng.integers(-3, 4, 3), radii + rng.integers(-3, 4, 3), 0.25)
    return pred, truth


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best-of-``repeats`` CPU time (``time.process_time``, one thread) of fn() in seconds.

    CPU time rather than wall time, and the best of several runs, so that other processes sharing the
    machine inflate the numbers as little as possible.
    """
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def bench_fusion(size: int, pairs: int, refs: ModuleType) -> dict:
    """Full-set pairs/s and per-metric ms (fuse4seg vs reference) on ``pairs`` size x size pairs."""
    data = [make_fusion_pair(size, seed) for seed in range(pairs)]
    full = [best_time(lambda d=d: fusion_metrics(d[0], [d[1], d[2]]), 5) for d in data]
    f, a, b = data[0]
    s = np.stack([a, b])
    parts = {
        "SSIM": (lambda: fusion_structure.ssim_sum(f, s, 255.0),
                 lambda: sum(refs.structural_similarity(f, x, win_size=7, data_range=255.0) for x in (a, b))),
        "MI": (lambda: fusion_stats.mutual_information(f, s),
               lambda: sum(refs.mutual_info_score(f.ravel(), x.ravel()) for x in (a, b))),
        "VIF": (lambda: fusion_structure.vif_sum(f, s), lambda: refs.ref_vif(a, f) + refs.ref_vif(b, f)),
        "Qabf": (lambda: fusion_structure.qabf(f, s), lambda: refs.ref_qabf(f, a, b)),
    }
    per_metric = {}
    for name, (ours, ref) in parts.items():
        t_ours, t_ref = best_time(ours, 10), best_time(ref, 3)
        per_metric[name] = {"ms": 1e3 * t_ours, "reference_ms": 1e3 * t_ref, "speedup": t_ref / t_ours}
    return {"size": size, "pairs": pairs, "ms_per_pair_median": 1e3 * float(np.median(full)),
            "ms_per_pair_best": 1e3 * float(np.min(full)), "pairs_per_second": 1.0 / float(np.median(full)),
            "metrics": list(FUSION_METRIC_NAMES), "per_metric": per_metric}


def time_volume(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Seconds for one label volume: all metrics, HD95 of the 3 regions, the same with MONAI, max |diff|."""
    import torch
    from monai.metrics import compute_hausdorff_distance

    masks = [(np.isin(pred, v), np.isin(truth, v)) for v in ((1, 2, 3), (1, 3), (3,))]

    def monai() -> list[float]:
        """MONAI HD95 of the three regions (the reference)."""
        return [float(compute_hausdorff_distance(torch.from_numpy(p)[None, None], torch.from_numpy(t)[None, None],
                                                 percentile=95)) for p, t in masks]

    ours = [hd95(p, t) for p, t in masks]
    return {"seconds_all_metrics": best_time(lambda: segmentation_metrics(pred, truth), 3),
            "seconds_hd95_3_regions": best_time(lambda: [hd95(p, t) for p, t in masks], 3),
            "monai_seconds_hd95_3_regions": best_time(monai, 1),
            "max_abs_diff_vs_monai_mm": float(np.max(np.abs(np.subtract(ours, monai()))))}


def bench_segmentation(volumes: int) -> dict:
    """Median seconds per 240 x 240 x 155 volume over ``volumes`` phantom-like label volumes."""
    import torch

    torch.set_num_threads(1)
    rows = [time_volume(*make_label_volume(seed)) for seed in range(volumes)]
    summary = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    summary["max_abs_diff_vs_monai_mm"] = float(max(r["max_abs_diff_vs_monai_mm"] for r in rows))
    summary["speedup_hd95_vs_monai"] = summary["monai_seconds_hd95_3_regions"] / summary["seconds_hd95_3_regions"]
    return {"shape": [240, 240, 155], "volumes": volumes, **summary}


#: glibc settings that keep freed memory in the heap: no mmap/munmap + page faults for every temporary.
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "1000000000",
                "MALLOC_TOP_PAD_": "100000000"}


def fusion_with_tuned_malloc(pairs: int) -> list[dict]:
    """The fusion benchmark re-run in a child process under :data:`TUNED_MALLOC` (an allocator, not a code, effect)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fusion.json"
        subprocess.run([sys.executable, __file__, "--fusion-only", "--pairs", str(pairs), "--out", str(out)],
                       env={**os.environ, **TUNED_MALLOC}, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())["fusion"]


def print_tables(fusion: list[dict], tuned: list[dict], seg: dict) -> None:
    """Print the fusion, per-metric and segmentation tables."""
    print("Fusion metrics (all 11: EN SD SF AG MI SCD VIF Qabf SSIM PSNR CC), one thread, CPU ms per pair")
    print(f"{'size':>9} {'median':>8} {'best':>8} {'pairs/s':>8} {'median, tuned malloc':>21} {'pairs/s':>8}")
    for row, trow in zip(fusion, tuned):
        print(f"{row['size']:>4}x{row['size']:<4} {row['ms_per_pair_median']:>8.1f} {row['ms_per_pair_best']:>8.1f} "
              f"{row['pairs_per_second']:>8.1f} {trow['ms_per_pair_median']:>21.1f} {trow['pairs_per_second']:>8.1f}")
    print("\nPer metric, 256x256, two sources: fuse4seg vs reference in the same run (default malloc)")
    print(f"{'metric':<6} {'fuse4seg ms':>12} {'reference ms':>13} {'speedup':>8}  reference")
    names = {"SSIM": "skimage structural_similarity x2", "MI": "sklearn mutual_info_score x2",
             "VIF": "2-D convolve2d VIF x2", "Qabf": "convolve2d Sobel Qabf"}
    for name, row in fusion[0]["per_metric"].items():
        print(f"{name:<6} {row['ms']:>12.2f} {row['reference_ms']:>13.2f} {row['speedup']:>7.1f}x  {names[name]}")
    print(f"\nSegmentation, 240x240x155 labels, {seg['volumes']} volumes (median s/volume), one thread")
    print(f"{'all metrics, WT/TC/ET':<34} {seg['seconds_all_metrics']:.3f} s")
    print(f"{'HD95 x3 regions, fuse4seg':<34} {seg['seconds_hd95_3_regions']:.3f} s")
    print(f"{'HD95 x3 regions, MONAI 95th pct':<34} {seg['monai_seconds_hd95_3_regions']:.3f} s "
          f"({seg['speedup_hd95_vs_monai']:.1f}x; max |diff| {seg['max_abs_diff_vs_monai_mm']:.1e} mm)")


def main() -> None:
    """Run both benchmarks on one thread, print the tables, write the JSON atomically."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8, help="image pairs per size")
    parser.add_argument("--volumes", type=int, default=2, help="240x240x155 label volumes")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "metrics.json")
    parser.add_argument("--fusion-only", action="store_true", help="only the fusion benchmark (used internally)")
    args = parser.parse_args()
    refs = load_references()
    with threadpool_limits(1):
        fusion = [bench_fusion(size, args.pairs, refs) for size in (256, 240)]
    if args.fusion_only:
        atomic_write_text(args.out, json.dumps({"fusion": fusion}) + "\n")
        return
    tuned = fusion_with_tuned_malloc(args.pairs)
    with threadpool_limits(1):
        seg = bench_segmentation(args.volumes)
    print_tables(fusion, tuned, seg)
    result = {"benchmark": "metrics", "threads": 1, "timer": "best-of-N time.process_time (CPU seconds)",
              "python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
              "cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
              "fusion": fusion, "fusion_tuned_malloc": {"env": TUNED_MALLOC, "results": tuned},
              "segmentation": seg}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
