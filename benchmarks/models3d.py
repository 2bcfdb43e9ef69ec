"""Benchmark the 3-D networks on CPU: one bi-level hypergradient per method, and whole-volume inference.

Usage: python benchmarks/models3d.py [--sizes 64,96] [--threads 1] [--width 8] [--depth 3]
           [--methods unrolled,...] [--repeats 1] [--volume 240,240,155] [--patch 96] [--overlap 0.5]
           [--out benchmarks/results/models3d.json]

Bi-level step: upper ``fusion-cnn-3d`` (2 sources -> 1 volume, default width 16, 4 layers); lower
``unet-3d`` (1 -> 4 classes, ``--width``/``--depth``, GroupNorm); batch of one 2 x size^3 patch per
loss. ``lower_loss`` = voxel cross-entropy of S(F(x_tr)); ``upper_loss`` = mean squared distance of
F(x_val) to the sources' voxel-wise maximum (a stand-in fusion loss: the project's fusion and Dice
losses are 2-D) + cross-entropy of S(F(x_val)). K = 1 inner SGD step (lr as benchmarks/hypergrad.py);
``truncated`` with T = 1 (at K = 1 the same computation as ``unrolled``); implicit methods 5 CG
iterations / Neumann terms, damping 1. Inference: ``sliding_window`` over one (1, 1, ``--volume``)
volume through the same ``unet-3d`` under ``torch.no_grad()``, Gaussian blending, ``--patch``^3
windows, 1 window per call. Every configuration runs in its own subprocess (peak RSS from the
child's ``ru_maxrss``: that configuration's alone) after one untimed warm-up; ``--repeats`` timed
calls, the minimum reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from hypergrad import LR, _rss_mb  # benchmarks/ is this script's directory, hence on sys.path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("unrolled", "truncated", "first-order", "finite-difference", "implicit-cg", "implicit-neumann")
HYPER_OPTIONS = {"steps": 1, "lr": LR, "truncate": 1, "cg_iters": 5, "neumann_terms": 5, "damping": 1.0,
                 "tol": 1e-12}


def _timed(fn: object, repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of ``repeats`` calls of ``fn()`` (after the caller's warm-up)."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def hypergradient_worker(cfg: dict) -> dict:
    """One bi-level hypergradient of ``cfg['method']`` at a ``cfg['size']``^3 patch; seconds and peak MiB."""
    import torch
    import torch.nn.functional as F

    from fuse4seg.bilevel import module_hypergradient
    from fuse4seg.models import build_model

    torch.manual_seed(0)
    fuse = build_model("fusion-cnn-3d", in_channels=2)
    seg = build_model("unet-3d", in_channels=1, num_classes=4, width=cfg["width"], depth=cfg["depth"])
    g = torch.Generator().manual_seed(1)
    s = cfg["size"]
    x_tr, x_val = (torch.rand(1, 2, s, s, s, generator=g) for _ in range(2))
    y_tr, y_val = (torch.randint(0, 4, (1, s, s, s), generator=g) for _ in range(2))

    def lower_loss(f: object, net: object) -> torch.Tensor:
        """Voxel cross-entropy of the UNet on the fused training patch."""
        return F.cross_entropy(net(f(x_tr)), y_tr)

    def upper_loss(f: object, net: object) -> torch.Tensor:
        """Stand-in fusion term (distance to the voxel-wise maximum) plus cross-entropy on the validation patch."""
        fused = f(x_val)
        return ((fused - x_val.amax(dim=1, keepdim=True)) ** 2).mean() + F.cross_entropy(net(fused), y_val)

    base = _rss_mb()
    with torch.no_grad():  # warm-up: first-call allocations and kernel selection, untimed
        lower_loss(fuse, seg)
    result: list = []

    def step() -> None:
        """One hypergradient; keeps the last result alive so its memory counts."""
        result[:] = [module_hypergradient(fuse, seg, lower_loss, upper_loss, cfg["method"], **HYPER_OPTIONS)]

    wall, cpu = _timed(step, cfg["repeats"])
    grads = result[0].grads
    return {"time_s": min(wall), "times_s": wall, "cpu_s": min(cpu), "peak_rss_mb": _rss_mb(), "base_rss_mb": base,
            "finite": all(bool(torch.isfinite(v).all()) for v in grads.values()),
            "grad_norm": float(sum(float((v.double() ** 2).sum()) for v in grads.values()) ** 0.5),
            "load_average": os.getloadavg()[0]}


def sliding_worker(cfg: dict) -> dict:
    """Whole-volume sliding-window inference through unet-3d; seconds, windows and peak MiB."""
    import torch

    from fuse4seg.models import build_model, sliding_window
    from fuse4seg.models.sliding import window_starts

    torch.manual_seed(0)
    seg = build_model("unet-3d", in_channels=1, num_classes=4, width=cfg["width"], depth=cfg["depth"]).eval()
    volume = torch.rand(1, 1, *cfg["volume"], generator=torch.Generator().manual_seed(1))
    patch = (cfg["patch"],) * 3
    base = _rss_mb()
    with torch.no_grad():
        seg(volume[(..., *(slice(0, p) for p in patch))])  # warm-up on one window
        wall, cpu = _timed(lambda: sliding_window(seg, volume, patch, cfg["overlap"], "gaussian", batch_size=1),
                           cfg["repeats"])
    windows = 1
    for size, p in zip(cfg["volume"], patch):
        windows *= len(window_starts(max(size, p), p, cfg["overlap"]))
    return {"time_s": min(wall), "times_s": wall, "cpu_s": min(cpu), "peak_rss_mb": _rss_mb(), "base_rss_mb": base,
            "windows": windows, "load_average": os.getloadavg()[0]}


def run_child(cfg: dict) -> dict:
    """Run one configuration in a fresh interpreter (``cfg['threads']`` threads) and return its JSON result."""
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], check=False, capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(cfg["threads"])})
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    """Run every configuration, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="64,96", help="patch edges (voxels) of the bi-level step")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per configuration (min is reported)")
    parser.add_argument("--volume", default="240,240,155", help="D,H,W of the inference volume")
    parser.add_argument("--patch", type=int, default=96, help="sliding-window patch edge (voxels)")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "models3d.json")
    args = parser.parse_args()
    if args.worker:
        cfg = json.loads(args.worker)
        import torch

        torch.set_num_threads(cfg["threads"])
        print(json.dumps(sliding_worker(cfg) if cfg["kind"] == "sliding" else hypergradient_worker(cfg)))
        return

    import torch

    from fuse4seg.io import atomic_write_text

    common = {"threads": args.threads, "width": args.width, "depth": args.depth, "repeats": args.repeats}
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    rows: list[dict] = []
    for size in (int(s) for s in args.sizes.split(",")):
        for method in args.methods.split(","):
            res = run_child({**common, "kind": "hypergradient", "method": method, "size": size})
            rows.append({"method": method, "size": size, **res})
            print(f"  {method:18s} {size}^3  " + (res["error"] if "error" in res else
                  f"{res['time_s']:8.2f} s  {res['peak_rss_mb']:7.0f} MiB"), flush=True)
    volume = [int(v) for v in args.volume.split(",")]
    sliding = run_child({**common, "kind": "sliding", "volume": volume, "patch": args.patch,
                         "overlap": args.overlap})
    print(f"  sliding window {'x'.join(map(str, volume))} patch {args.patch}^3  " + (sliding["error"] if "error"
          in sliding else f"{sliding['time_s']:.1f} s, {sliding['windows']} windows"), flush=True)

    header = f"{'method':18s} {'patch':>6s} {'wall s':>8s} {'cpu s':>8s} {'peak MiB':>9s} {'+MiB':>7s} {'finite':>6s}"
    lines = [header, "-" * len(header)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['method']:18s} {r['size']:>4d}^3  failed: {r['error']}")
            continue
        lines.append(f"{r['method']:18s} {r['size']:>4d}^3 {r['time_s']:8.2f} {r['cpu_s']:8.2f} "
                     f"{r['peak_rss_mb']:9.0f} {r['peak_rss_mb'] - r['base_rss_mb']:7.0f} {r['finite']!s:>6s}")
    if "error" not in sliding:
        lines.append(f"{'sliding window':18s} {args.patch:>4d}^3 {sliding['time_s']:8.2f} {sliding['cpu_s']:8.2f} "
                     f"{sliding['peak_rss_mb']:9.0f} {sliding['peak_rss_mb'] - sliding['base_rss_mb']:7.0f}"
                     f"  ({sliding['windows']} windows over {'x'.join(map(str, volume))}, overlap {args.overlap})")
    table = "\n".join(lines)
    total = time.perf_counter() - started
    print(f"\nfusion-cnn-3d -> unet-3d(width {args.width}, depth {args.depth}), batch 1, K = 1; torch threads "
          f"{args.threads}\n{table}")
    print(f"total {total:.0f} s; load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    result = {
        "benchmark": "models3d", "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpu_count": os.cpu_count(), "torch_threads": args.threads,
        "problem": {"upper": "fusion-cnn-3d(in_channels=2)", "lower": f"unet-3d(width={args.width}, "
                    f"depth={args.depth})", "batch": 1, "inner": f"sgd lr {LR}, K=1", **HYPER_OPTIONS,
                    "losses": "lower CE; upper MSE to voxel-wise max + CE"},
        "rows": rows,
        "sliding": {"volume": volume, "patch": args.patch, "overlap": args.overlap, "mode": "gaussian",
                    "batch_size": 1, **sliding},
        "total_s": total, "load_average": {"start": load0, "end": os.getloadavg()[0]}, "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
