"""Seconds per outer training step for every hypergradient method and for plain segmentation training.

Builds a phantom BraTS-Fuse benchmark in a temporary directory, then, in the same run and at the
same slice size, batch and network widths, times the real training step of fuse4seg.train
(``Trainer.one_step``: forward, hypergradient or gradient, optimiser update) for ``--mode bilevel``
with each method of fuse4seg.bilevel.METHODS and for ``--mode direct`` (segmentation alone on the
benchmark's fused image: the reference). Batches come from the training DataLoader exactly as in
``fuse4seg train``; the time spent waiting for the next batch is measured separately and reported
as the DataLoader's share of the step (target < 5 %), in wall and in CPU time. Wall time and process CPU time are both
reported: on a shared machine CPU time is the steadier measure. Prints a table and writes
benchmarks/results/train.json.

    python benchmarks/train.py [--size 96] [--batch-size 4] [--inner-steps 1] [--steps 6] [--warmup 2]
                               [--seg-width 8] [--seg-depth 3] [--fusion-width 8]
                               [--methods unrolled,implicit-cg,...]

HVPs: Hessian-vector products per hypergradient (implicit methods; mean over the timed steps).

Phases (``--phase-steps`` N > 0): N more steps of each bi-level row run under torch.profiler, and the CPU time of
the library's ranges (fuse4seg.bilevel.PHASES: the inner steps, the upper forward, the upper backward through the
inner backward passes; and the fusion loss's gradient) is reported as its share of the profiled step and, applied to
the unprofiled step time, in direct-step units: where a bi-level step's cost goes.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from fuse4seg.bilevel import METHODS, PHASES
from fuse4seg.data.build.builder import build_benchmark
from fuse4seg.runkit.batches import step_loader
from fuse4seg.train.loop import Trainer
from fuse4seg.train.resolve import build_config
from fuse4seg.train.steps import FUSION_PHASE, SOLVER_SCALARS

RESULTS = Path(__file__).resolve().parent / "results" / "train.json"
#: Profiler ranges reported as phases of a bi-level step (the whole step is STEP_RANGE, opened here).
PHASE_RANGES = (*PHASES.values(), FUSION_PHASE)
STEP_RANGE = "benchmark/step"


def phase_shares(prof: profile) -> dict[str, float]:
    """Profiler range -> its CPU time over STEP_RANGE's (0-1) for the ranges that ran."""
    totals = {e.key: e.cpu_time_total for e in prof.key_averages() if e.key in (*PHASE_RANGES, STEP_RANGE)}
    step = totals.get(STEP_RANGE, 0.0)
    return {k: totals[k] / step for k in PHASE_RANGES if k in totals and step > 0}


def time_steps(trainer: Trainer, steps: int, warmup: int, num_workers: int, profiled: int = 0) -> dict[str, float]:
    """Per-step wall/CPU seconds of ``one_step`` and the share of wall time spent waiting for batches; then
    ``profiled`` more steps under torch.profiler for the phase shares (:func:`phase_shares`)."""
    c = trainer.config
    total = warmup + steps + profiled
    fit = step_loader(trainer.train_set, trainer.fit_pool, c.batch_size, c.seed, 0, total, "fit", num_workers)
    hold = None
    if trainer.hold_pool:
        hold = iter(step_loader(trainer.train_set, trainer.hold_pool, c.batch_size, c.seed, 0, total, "holdout",
                                num_workers))
    walls, cpus, waits, wait_cpus, hvps = [], [], [], [], []
    solver: dict[str, list[float]] = {}  # per timed step: CG's residual and negative curvature, Neumann's tail
    trainer.pipeline.train(True)
    prof = profile(activities=[ProfilerActivity.CPU])
    t_data, c_data = time.perf_counter(), time.process_time()
    for i, batch in enumerate(fit):
        other = next(hold) if hold is not None else None
        if i >= warmup + steps:  # the profiled steps, after the timed ones (the profiler slows every op)
            if i == warmup + steps:
                prof.start()
            with record_function(STEP_RANGE):
                trainer.one_step(batch, other)
            trainer.step += 1
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        wait, wait_cpu = t0 - t_data, c0 - c_data
        result = trainer.one_step(batch, other)
        trainer.step += 1
        if i >= warmup:
            if "hypergrad/hvps" in result.scalars:
                hvps.append(result.scalars["hypergrad/hvps"])
            for key in (k for k in SOLVER_SCALARS if k != "hvps"):  # CG's residual and curvature, Neumann's tail
                if f"hypergrad/{key}" in result.scalars:
                    solver.setdefault(key, []).append(result.scalars[f"hypergrad/{key}"])
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            waits.append(wait)
            wait_cpus.append(wait_cpu)
        t_data, c_data = time.perf_counter(), time.process_time()
    shares = None
    if profiled:
        prof.stop()
        shares = phase_shares(prof)
    return {
        "step_wall_s": statistics.median(walls), "step_wall_min_s": min(walls), "step_cpu_s": statistics.median(cpus),
        "data_wait_s": statistics.median(waits),
        "data_share_wall": sum(waits) / (sum(waits) + sum(walls)),
        "data_share_cpu": sum(wait_cpus) / (sum(wait_cpus) + sum(cpus)),
        "hvps": statistics.mean(hvps) if hvps else None, "solver": solver or None, "phase_shares": shares or None,
    }


def main() -> None:
    """Parse options, build the benchmark, time every configuration, print the table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seg-width", type=int, default=8)
    parser.add_argument("--seg-depth", type=int, default=3)
    parser.add_argument("--fusion-width", type=int, default=8, help="fusion-cnn width (paper size: 16)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers during the timed steps")
    parser.add_argument("--no-cache", action="store_true", help="read slices lazily from HDF5 (no in-memory cache)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON output path")
    parser.add_argument("--methods", default=",".join(METHODS), help="bi-level methods to time (comma-separated)")
    parser.add_argument("--phase-steps", type=int, default=3,
                        help="profiled steps per bi-level row for the phase table (0: none)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="fuse4seg-bench-train-") as tmp:
        bench = Path(tmp) / "bench"
        build_benchmark(bench, phantom=6, phantom_scale=0.5, size=args.size, slices_per_case=6,
                        split=(0.7, 0.15, 0.15), workers=2, progress=False)
        common = {"benchmark": str(bench), "batch_size": args.batch_size, "progress": False,
                  "inner_steps": args.inner_steps, "seg_options": {"width": args.seg_width, "depth": args.seg_depth},
                  "fusion_options": {"width": args.fusion_width}, "cache": not args.no_cache,
                  "inner_optimizer": "sgd"}  # one inner optimiser that every method (finite-difference too) takes
        configs = [("direct", "-", {"mode": "direct"}), ("direct", "- (lazy HDF5)", {"mode": "direct", "cache": False})]
        configs += [("bilevel", m, {"mode": "bilevel", "hypergrad": m,
                                    "truncate": 1 if m == "truncated" else None})
                    for m in METHODS if m in args.methods.split(",")]
        rows = []
        for mode, method, extra in configs:
            config = build_config({**common, **extra, "out": str(Path(tmp) / "run"), "steps": args.steps})
            profiled = args.phase_steps if mode == "bilevel" else 0
            row = {"mode": mode, "method": method, **time_steps(Trainer(config), args.steps, args.warmup,
                                                                    args.num_workers, profiled)}
            rows.append(row)
            print(f"  {mode:8s} {method:18s} {row['step_wall_s']:.3f} s/step", file=sys.stderr)
    ref = rows[0]
    for r in rows:
        r["wall_vs_direct"] = r["step_wall_s"] / ref["step_wall_s"]
        r["cpu_vs_direct"] = r["step_cpu_s"] / ref["step_cpu_s"]
    header = (f"{'mode':8s} {'method':18s} {'wall s/step':>11s} {'cpu s/step':>10s} {'x direct':>8s} "
              f"{'data (wall)':>11s} {'data (cpu)':>10s} {'HVPs':>5s}")
    print(f"train step at {args.size}x{args.size}, batch {args.batch_size}, K={args.inner_steps}, "
          f"fusion width {args.fusion_width}, UNet width {args.seg_width} depth {args.seg_depth}, "
          f"{args.threads} thread(s), "
          f"{args.num_workers} DataLoader workers")
    print(header)
    for r in rows:
        print(f"{r['mode']:8s} {r['method']:18s} {r['step_wall_s']:11.3f} {r['step_cpu_s']:10.3f} "
              f"{r['cpu_vs_direct']:8.2f} {100 * r['data_share_wall']:10.2f}% {100 * r['data_share_cpu']:9.2f}% "
              f"{'-' if r['hvps'] is None else format(r['hvps'], '5.1f'):>5s}")
    phased = [r for r in rows if r.get("phase_shares")]
    if phased:
        print(f"\nphases of the bi-level step (torch.profiler CPU time, {args.phase_steps} profiled steps per row): "
              "share of the step / in direct-step units")
        print(f"{'method':18s} " + " ".join(f"{name.split('/')[1]:>24s}" for name in PHASE_RANGES) + f" {'rest':>14s}")
        for r in phased:
            shares, units = r["phase_shares"], r["cpu_vs_direct"]
            rest = 1.0 - sum(shares.values())
            cells = [f"{100 * shares[k]:5.1f}% / {shares[k] * units:4.2f}x" if k in shares else "-"
                     for k in PHASE_RANGES]
            print(f"{r['method']:18s} " + " ".join(f"{c:>24s}" for c in cells)
                  + f" {f'{100 * rest:5.1f}% / {rest * units:4.2f}x':>14s}")
    cached = [r for r in rows if "lazy" not in r["method"]]  # the default: --cache
    worst = max(r["data_share_cpu"] for r in cached)
    print(f"largest DataLoader share with the default in-memory cache: {100 * worst:.2f}% of step CPU time, "
          f"{100 * max(r['data_share_wall'] for r in cached):.2f}% of wall time (target < 5%)")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    payload = {"settings": vars(args), "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                                   "cpu_count": torch.get_num_threads()},
               "rows": rows, "max_data_share_cpu": worst,
               "notes": "x direct = CPU seconds per step relative to direct segmentation training, same run"}
    args.results.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
