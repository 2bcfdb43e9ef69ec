"""Benchmark fuse4seg.bilevel on CPU: time and peak memory per hypergradient, every method.

Usage: python benchmarks/hypergrad.py [--steps 1,5,10] [--ref-steps 20] [--threads 2]
           [--width 16] [--depth 4] [--size 128] [--batch 4] [--out benchmarks/results/hypergrad.json]

Problem: the project's image-level fusion set-up. Upper: ``fusion-cnn`` (2 sources -> 1 image);
lower: ``unet`` (1 -> 4 classes, GroupNorm); batch of ``--batch`` 2-channel ``--size``^2 images.
``lower_loss = segmentation_loss(S(F(x_tr)), y_tr)``; ``upper_loss = fusion_loss(F(x_val), x_val)
+ segmentation_loss(S(F(x_val)), y_val)``; inner SGD, lr 0.1. Every (method, K) runs in its own
subprocess (so peak RSS, read from the child's ``ru_maxrss``, is that configuration's alone) after one
untimed warm-up forward/backward, then ``--repeats`` timed calls (minimum reported); ``truncated`` uses T = max(1, K // 2), ``implicit-*`` 5 CG
iterations / Neumann terms with damping 1 (Neumann with its default --neumann-tol), ``checkpointed`` its default
planned segments (the S of least estimated peak memory); HVPs: Hessian-vector products per hypergradient. ``implicit-cg[func]`` is the torch.func HVP backend
(the default backend is double backward). Ratios are against ``higher`` at the same K, measured
in the same run; cosines are against ``unrolled`` with ``--ref-steps`` inner steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LR = 0.1  # inner SGD step: large enough that the indirect term is visible next to the direct one
METHOD_ORDER = ("higher", "unrolled", "checkpointed", "truncated", "first-order", "finite-difference", "implicit-cg",
                "implicit-cg[func]", "implicit-neumann")


def _rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(cfg: dict) -> dict:
    """Run one configuration in this (fresh) process; returns timings/memory, saves grads to cfg['grads']."""
    import torch

    torch.set_num_threads(cfg["threads"])
    from torch.func import functional_call

    from fuse4seg.bilevel import hypergradient
    from fuse4seg.bilevel.core import as_upper, parse_options
    from fuse4seg.bilevel.implicit import implicit_cg
    from fuse4seg.losses import fusion_loss, segmentation_loss
    from fuse4seg.models import build_model

    torch.manual_seed(0)
    fuse = build_model("fusion-cnn", in_channels=2)
    seg = build_model("unet", in_channels=1, num_classes=4, width=cfg["width"], depth=cfg["depth"])
    g = torch.Generator().manual_seed(1)
    n, s = cfg["batch"], cfg["size"]
    x_tr, x_val = torch.rand(n, 2, s, s, generator=g), torch.rand(n, 2, s, s, generator=g)
    y_tr, y_val = torch.randint(0, 4, (n, s, s), generator=g), torch.randint(0, 4, (n, s, s), generator=g)
    upper = {k: p for k, p in fuse.named_parameters()}
    lower = {k: p.detach().clone() for k, p in seg.named_parameters()}
    buffers = {**dict(fuse.named_buffers())}

    def lower_loss(u: dict, w: dict) -> torch.Tensor:
        """Segmentation loss of the UNet on the fused training batch."""
        return segmentation_loss(functional_call(seg, w, (functional_call(fuse, {**buffers, **u}, (x_tr,)),)), y_tr)

    def upper_loss(u: dict, w: dict) -> torch.Tensor:
        """Fusion loss plus segmentation loss on the validation batch."""
        fused = functional_call(fuse, {**buffers, **u}, (x_val,))
        return fusion_loss(fused, x_val)[0] + segmentation_loss(functional_call(seg, w, (fused,)), y_val)

    base = _rss_mb()
    warm = lower_loss({k: v.detach() for k, v in upper.items()}, {k: v.requires_grad_() for k, v in lower.items()})
    torch.autograd.grad(warm, list(lower.values()))
    lower = {k: v.detach() for k, v in lower.items()}
    del warm
    k = cfg["steps"]
    opts = {"steps": k, "lr": LR, "truncate": max(1, k // 2), "cg_iters": 5, "neumann_terms": 5,
            "damping": 1.0, "tol": 1e-12}
    times, cpu = [], []
    for _ in range(cfg["repeats"]):
        start, start_cpu = time.perf_counter(), time.process_time()
        if cfg["method"] == "implicit-cg[func]":
            res = implicit_cg(as_upper(upper), lower, lower_loss, upper_loss, parse_options(opts), backend="func")
        else:
            res = hypergradient(upper, lower, lower_loss, upper_loss, cfg["method"], **opts)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    torch.save({n_: v.detach().clone() for n_, v in res[0].items()}, cfg["grads"])
    return {"time_s": min(times), "times_s": times, "cpu_s": min(cpu), "cpu_times_s": cpu,
            "peak_rss_mb": _rss_mb(), "base_rss_mb": base, "info": res.info, "load_average": os.getloadavg()[0]}


def run_child(cfg: dict, tmp: Path) -> dict:
    """Run ``worker(cfg)`` in a fresh interpreter and return its JSON result plus the grads path."""
    cfg = {**cfg, "grads": str(tmp / f"{cfg['method']}_{cfg['steps']}.pt")}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], check=False,
                          capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(cfg["threads"])})
    if proc.returncode != 0:
        raise RuntimeError(f"{cfg['method']} K={cfg['steps']} failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "grads": cfg["grads"]}


def subtract(a: dict, b: dict) -> dict:
    """Key-wise difference of two gradient dicts."""
    return {k: a[k] - b[k] for k in a}


def cosine(a: dict, b: dict) -> float:
    """Cosine similarity of two gradient dicts flattened over all keys."""
    import torch

    va = torch.cat([a[k].reshape(-1).double() for k in sorted(a)])
    vb = torch.cat([b[k].reshape(-1).double() for k in sorted(b)])
    return float(va @ vb / (va.norm() * vb.norm()).clamp_min(1e-300))


def main() -> None:
    """Run every configuration, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--steps", default="1,5,10")
    parser.add_argument("--ref-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    # Several timed calls, minimum reported: on a shared machine a descheduled OpenMP thread can
    # stall a 2-thread parallel region and inflate one call several-fold.
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per configuration (min is reported)")
    parser.add_argument("--methods", default=",".join(METHOD_ORDER))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "hypergrad.json")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    import torch

    from fuse4seg.io import atomic_write_text

    common = {"threads": args.threads, "width": args.width, "depth": args.depth, "size": args.size,
              "batch": args.batch, "repeats": args.repeats}
    steps = [int(s) for s in args.steps.split(",")]
    methods = [m for m in METHOD_ORDER if m in args.methods.split(",")]
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    rows: list[dict] = []
    grads: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ref = run_child({**common, "method": "unrolled", "steps": args.ref_steps, "repeats": 1}, tmp)
        ref_direct = run_child({**common, "method": "first-order", "steps": args.ref_steps, "repeats": 1}, tmp)
        ref_grads = torch.load(ref["grads"], weights_only=True)
        ref_indirect = subtract(ref_grads, torch.load(ref_direct["grads"], weights_only=True))
        print(f"reference: unrolled K={args.ref_steps}: {ref['time_s']:.1f} s, peak {ref['peak_rss_mb']:.0f} MiB",
              flush=True)
        for k in steps:
            for method in methods:
                res = run_child({**common, "method": method, "steps": k}, tmp)
                grads[(method, k)] = torch.load(res.pop("grads"), weights_only=True)
                res["cosine_to_ref"] = cosine(grads[(method, k)], ref_grads)
                rows.append({"method": method, "steps": k, **res})
                print(f"  {method:18s} K={k:<3d} {res['time_s']:7.2f} s (cpu {res['cpu_s']:7.2f} s) "
                      f"{res['peak_rss_mb']:7.0f} MiB  cos {res['cosine_to_ref']:.4f} HVPs {res['info'].get('hvps', '-')}",
                      flush=True)
    by_key = {(r["method"], r["steps"]): r for r in rows}
    for r in rows:
        h = by_key.get(("higher", r["steps"]))
        r["time_vs_higher"] = r["time_s"] / h["time_s"] if h else None
        r["cpu_vs_higher"] = r["cpu_s"] / h["cpu_s"] if h else None
        r["memory_vs_higher"] = r["peak_rss_mb"] / h["peak_rss_mb"] if h else None
        direct = grads.get(("first-order", r["steps"]))
        # The direct term d_u G(u, w_K) is shared by all methods at the same K (same w_K), so the
        # indirect part is what each method contributes; first-order's is zero by construction.
        r["indirect_cosine_to_ref"] = (cosine(subtract(grads[(r["method"], r["steps"])], direct), ref_indirect)
                                       if direct is not None else None)
    header = (f"{'method':18s} {'K':>3s} {'wall s':>8s} {'x higher':>8s} {'cpu s':>8s} {'x higher':>8s} "
              f"{'peak MiB':>9s} {'x higher':>8s} {'+MiB':>7s} {'cos ref':>8s} {'cos ind':>8s} {'HVPs':>5s}")
    lines = [header, "-" * len(header)]

    def fmt(value: float | None, spec: str) -> str:
        """Format an optional number."""
        return "-" if value is None else format(value, spec)

    for r in rows:
        lines.append(f"{r['method']:18s} {r['steps']:3d} {r['time_s']:8.2f} {fmt(r['time_vs_higher'], '.2f'):>8s} "
                     f"{r['cpu_s']:8.2f} {fmt(r['cpu_vs_higher'], '.2f'):>8s} {r['peak_rss_mb']:9.0f} "
                     f"{fmt(r['memory_vs_higher'], '.2f'):>8s} {r['peak_rss_mb'] - r['base_rss_mb']:7.0f} "
                     f"{r['cosine_to_ref']:8.4f} {fmt(r['indirect_cosine_to_ref'], '.4f'):>8s} "
                     f"{fmt(r['info'].get('hvps'), 'd'):>5s}")
    kmax = max(steps)
    targets = {}
    if ("higher", kmax) in by_key:
        u, c, fd = (by_key.get((m, kmax)) for m in ("unrolled", "implicit-cg", "finite-difference"))
        if u:
            targets["unrolled_time_ratio<=1.05"] = u["time_vs_higher"] <= 1.05
            targets["unrolled_cpu_ratio<=1.05"] = u["cpu_vs_higher"] <= 1.05
            targets["unrolled_memory_ratio<=1"] = u["memory_vs_higher"] <= 1.0
        for name, r in (("implicit-cg", c), ("finite-difference", fd)):
            if r:
                targets[f"{name}_memory_ratio<=1/3"] = r["memory_vs_higher"] <= 1 / 3
                targets[f"{name}_time_ratio<=1"] = r["time_vs_higher"] <= 1.0
                targets[f"{name}_cpu_ratio<=1"] = r["cpu_vs_higher"] <= 1.0
    for k in steps:  # checkpointed against unrolled at the same K (issue 26: K = 10 and 20)
        ck, un = by_key.get(("checkpointed", k)), by_key.get(("unrolled", k))
        if ck and un and k >= 10:
            targets[f"checkpointed_K{k}_memory_vs_unrolled<=0.5"] = ck["peak_rss_mb"] <= 0.5 * un["peak_rss_mb"]
            targets[f"checkpointed_K{k}_time_vs_unrolled<=1.4"] = ck["time_s"] <= 1.4 * un["time_s"]
    table = "\n".join(lines)
    total = time.perf_counter() - started
    print(f"\nhypergradient per outer step; torch threads {args.threads}; UNet width {args.width} depth "
          f"{args.depth}; {args.batch} x 2 x {args.size}^2; reference unrolled K={args.ref_steps}\n{table}")
    print(f"targets at K={kmax}: " + ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in targets.items()))
    print(f"total {total:.0f} s; load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    result = {
        "benchmark": "hypergrad", "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpu_count": os.cpu_count(), "torch_threads": args.threads,
        "problem": {"upper": "fusion-cnn(in_channels=2)", "lower": f"unet(width={args.width}, depth={args.depth})",
                    "batch": args.batch, "size": args.size, "inner": f"sgd lr {LR}", "cg_iters": 5,
                    "neumann_terms": 5, "damping": 1.0, "truncate": "max(1, K // 2)"},
        "reference": {"method": "unrolled", "steps": args.ref_steps, "time_s": ref["time_s"],
                      "cpu_s": ref["cpu_s"], "peak_rss_mb": ref["peak_rss_mb"]},
        "rows": rows, "targets": targets, "total_s": total,
        "load_average": {"start": load0, "end": os.getloadavg()[0]}, "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
