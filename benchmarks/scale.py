"""Paper-scale rehearsal: seconds per outer training step and peak memory at the paper's network and batch sizes.

    python benchmarks/scale.py [--device cpu|cuda] [--budget-s 60] [--steps N] [--ks 1,3,10] [--threads 2]
                               [--methods unrolled,...] [--dims 2,3] [--cpu-3d] [--max-rss-gb 20] [--out PATH]
                               [--size-2d 192 --batch-2d 8 --size-3d 128 --batch-3d 2]

Networks as ``fuse4seg train`` builds them (fuse4seg.train.resolve.build_config, fuse4seg.train.networks.build_pipeline,
fuse4seg.train.optimisers.torch_optimisers) at paper size: fusion-cnn of width 16 (its default layers) feeding a
UNet of width 32, depth 4 (``fusion_options = {width = 16}``, ``seg_options = {width = 32, depth = 4}``). One
outer step is ``STEPS[MODES[mode].step]`` (forward, hypergradient or gradient, optimiser updates) on random
batches: 2-D 192 x 192 slices, batch 8; 3-D (``--dims 3``, the ``-3d`` networks) 128^3 patches, batch 2. Every
hypergradient method of fuse4seg.bilevel.METHODS at K = 1, 3, 10 inner steps (inner SGD, which every method takes;
other engine options at the training defaults; ``truncated`` differentiates T = max(1, K // 2) steps), and a
plain segmentation step (``--mode direct``) as the reference.

Each configuration runs in its own subprocess: one untimed warm-up step, then ``--steps`` timed steps (median and
min reported; default 1 on CPU, 5 on CUDA). Peak memory: the child's peak RSS (``ru_maxrss``) on CPU, with
its RSS before the first step (interpreter, torch, networks, batches) for reference;
``torch.cuda.max_memory_allocated`` on CUDA. Time budget: a configuration whose warm-up step takes more than
``--budget-s`` seconds is recorded as skipped (the child is stopped when the budget runs out), and a larger K of
the same method is skipped without running when a smaller K went over the budget or when its warm-up time,
extrapolated affinely in K from the two smaller K measured, exceeds the budget. On
CPU a child whose RSS passes ``--max-rss-gb`` is stopped and recorded as skipped, and the 3-D configurations are
recorded as "skipped: over the CPU budget" unless ``--cpu-3d``.

Projection: one epoch of BraTS 2021 (1,251 cases) = ceil(1251 x slices per case / batch) steps in 2-D (slices
per case: the benchmark builder's default, 8) or ceil(1251 x 1 patch per case / batch) in 3-D, times the
measured seconds per step at the measured batch size, on this device. Prints a table and writes
benchmarks/results/scale.json (``--device cuda``: benchmarks/results/scale_gpu.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import queue
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
BRATS_2021_CASES = 1251
SIZES = {2: {"size": 192, "batch": 8}, 3: {"size": 128, "batch": 2}}  # paper scale: edge and batch per dims
SEG_OPTIONS = {"width": 32, "depth": 4}
FUSION_OPTIONS = {"width": 16}


def _emit(event: str, **fields: object) -> None:
    """One JSON line to the parent."""
    print(json.dumps({"event": event, **fields}), flush=True)


def worker(cfg: dict) -> None:
    """Build one configuration in this fresh process, run warm-up + timed steps, print JSON lines."""
    import torch

    from fuse4seg.distributed import World
    from fuse4seg.train.modes import MODES
    from fuse4seg.train.networks import build_pipeline
    from fuse4seg.train.optimisers import torch_optimisers
    from fuse4seg.train.resolve import build_config
    from fuse4seg.train.steps import STEPS

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    dev = torch.device(cfg["device"])
    cuda = dev.type == "cuda"
    values = {"benchmark": "b", "out": "o", "batch_size": cfg["batch"], "dims": cfg["dims"], "device": cfg["device"],
              "seg_options": SEG_OPTIONS, "fusion_options": FUSION_OPTIONS, "mode": cfg["mode"]}
    if cfg["mode"] == "bilevel":
        values.update({"hypergrad": cfg["method"], "inner_steps": cfg["k"], "inner_optimizer": "sgd"})
        if cfg["method"] == "truncated":
            values["truncate"] = max(1, cfg["k"] // 2)
    config = build_config(values)
    pipeline = build_pipeline(config).to(dev)
    t = SimpleNamespace(config=config, pipeline=pipeline, opts=torch_optimisers(config, pipeline), device=dev,
                        step=0, fusion_steps=0, world=World(), unlabelled=None)
    g = torch.Generator().manual_seed(1)
    spatial = (cfg["size"],) * cfg["dims"]
    batch_size = cfg["batch"]

    def batch() -> dict[str, torch.Tensor]:
        """A random batch as the training loader yields it (sources, the benchmark's fused image, labels)."""
        return {"source": torch.rand(batch_size, 4, *spatial, generator=g).to(dev),
                "fused": torch.rand(batch_size, 1, *spatial, generator=g).to(dev),
                "label": torch.randint(0, 4, (batch_size, *spatial), generator=g).to(dev)}

    fit, hold = batch(), batch()
    step_fn = STEPS[MODES[config.mode].step]
    params = {name: sum(p.numel() for p in net.parameters())
              for name, net in (("fusion", pipeline.fusion), ("seg", pipeline.seg)) if net is not None}
    base_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mib = torch.cuda.memory_allocated() / 2**20
    _emit("ready", params=params)

    def one() -> tuple[float, float]:
        """One outer step; wall and CPU seconds."""
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            step_fn(t, fit, hold)
        except torch.cuda.OutOfMemoryError:
            _emit("oom")
            sys.exit(0)
        if cuda:
            torch.cuda.synchronize()
        t.step += 1
        return time.perf_counter() - t0, time.process_time() - c0

    warm, _ = one()
    _emit("warmup", s=warm)
    if warm > cfg["budget_s"]:
        _emit("done", status=f"skipped: warm-up {warm:.0f} s over the budget ({cfg['budget_s']:g} s)", warmup_s=warm)
        return
    walls, cpus = zip(*(one() for _ in range(cfg["steps"])))
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    _emit("done", status="ok", warmup_s=warm, step_s=statistics.median(walls), step_min_s=min(walls),
          step_cpu_s=statistics.median(cpus), steps_s=list(walls), peak_mib=peak, base_mib=base_mib, params=params,
          load_average=os.getloadavg()[0])


def _rss_gb(pid: int) -> float:
    """Current resident set size of ``pid`` in GB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def run_child(cfg: dict, max_rss_gb: float | None) -> dict:
    """Run one configuration in a fresh interpreter; stop it when its warm-up passes the budget or its RSS the limit."""
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg["threads"]), "MKL_NUM_THREADS": str(cfg["threads"])}
    proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(cfg)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(json.loads(x)) for x in proc.stdout if x.startswith("{")] + [
        lines.put(None)], daemon=True).start()
    events: dict[str, dict] = {}
    deadline = time.monotonic() + 600.0  # start-up and network building
    status = None
    while status is None:
        try:
            item = lines.get(timeout=0.5)
        except queue.Empty:
            item = ...
        if item is None:
            break
        if item is not ...:
            events[item["event"]] = item
            if item["event"] == "ready":
                deadline = time.monotonic() + cfg["budget_s"]
            elif item["event"] == "warmup":  # timed steps: each about a warm-up step; generous bound
                deadline = time.monotonic() + (cfg["steps"] + 1) * 2 * max(item["s"], 1.0) + 60.0
            elif item["event"] in ("done", "oom"):
                break
        if max_rss_gb is not None and _rss_gb(proc.pid) > max_rss_gb:
            status = f"skipped: RSS over the {max_rss_gb:g} GB limit"
        elif time.monotonic() > deadline:
            status = (f"skipped: warm-up over the budget (> {cfg['budget_s']:g} s, stopped)"
                      if "warmup" not in events else "skipped: timed steps ran far past the warm-up (stopped)")
    if status is not None:
        proc.kill()
    proc.wait()
    err = proc.stderr.read().strip()
    if "oom" in events:
        return {"status": "out of memory", "warmup_s": None}
    if status is None and "done" not in events:
        status = f"error: {err.splitlines()[-1] if err else f'exit {proc.returncode}'}"
    if status is not None:
        return {"status": status, "warmup_s": events.get("warmup", {}).get("s")}
    done = dict(events["done"])
    done.pop("event")
    return done


def _projected(measured: list[tuple[int, float]], k: int) -> float:
    """Warm-up seconds at ``k`` inner steps, affine in K through the last two measured (K, seconds)."""
    (k0, s0), (k1, s1) = measured[-2:]
    return s1 + (s1 - s0) / (k1 - k0) * (k - k1)


def steps_per_epoch(dims: int, batch: int, slices_per_case: int) -> int:
    """Outer steps of one epoch over all BraTS 2021 cases: every stored slice (2-D) or one patch per case (3-D)."""
    items = BRATS_2021_CASES * (slices_per_case if dims == 2 else 1)
    return math.ceil(items / batch)


def main() -> None:
    """Run every configuration, print the table and projection, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--budget-s", type=float, default=60.0,
                        help="seconds a configuration's warm-up step may take before it is recorded as skipped")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default: 1 CPU, 5 CUDA)")
    parser.add_argument("--ks", default="1,3,10", help="inner steps K of the bi-level rows")
    parser.add_argument("--methods", default=None, help="hypergradient methods (default: every one of METHODS)")
    parser.add_argument("--dims", default="2,3", help="2-D slices and/or 3-D patches")
    parser.add_argument("--cpu-3d", action="store_true", help="run the 3-D configurations on CPU too")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--size-2d", type=int, default=SIZES[2]["size"], help="2-D slice edge")
    parser.add_argument("--batch-2d", type=int, default=SIZES[2]["batch"], help="2-D batch")
    parser.add_argument("--size-3d", type=int, default=SIZES[3]["size"], help="3-D patch edge")
    parser.add_argument("--batch-3d", type=int, default=SIZES[3]["batch"], help="3-D batch")
    parser.add_argument("--max-rss-gb", type=float, default=20.0, help="CPU: stop a child whose RSS passes this")
    parser.add_argument("--shared-note", default="the 2-core development machine may have been shared with other "
                        "work during the measurement (load average recorded per row)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON output (default: benchmarks/results/scale.json, scale_gpu.json on CUDA)")
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    from fuse4seg.bilevel import METHODS
    from fuse4seg.data.build.options import BuildOptions

    SIZES.update({2: {"size": args.size_2d, "batch": args.batch_2d}, 3: {"size": args.size_3d, "batch": args.batch_3d}})

    slices_per_case = BuildOptions.__dataclass_fields__["slices_per_case"].default
    methods = args.methods.split(",") if args.methods else list(METHODS)
    steps = args.steps if args.steps is not None else (1 if args.device == "cpu" else 5)
    ks = [int(k) for k in args.ks.split(",")]
    out = args.out or RESULTS / ("scale.json" if args.device == "cpu" else "scale_gpu.json")
    rows = []
    for dims in (int(d) for d in args.dims.split(",")):
        size, batch = SIZES[dims]["size"], SIZES[dims]["batch"]
        configs = [("direct", "-", 0)] + [("bilevel", m, k) for m in methods for k in ks]
        warmups: dict[str, list[tuple[int, float]]] = {}  # method -> (K, warm-up s) of its measured rows
        over: dict[str, int] = {}  # method -> the K whose configuration went over the budget
        for mode, method, k in configs:
            row = {"dims": dims, "size": size, "batch": batch, "mode": mode, "method": method, "K": k or None}
            if dims == 3 and args.device == "cpu" and not args.cpu_3d:
                row.update(status="skipped: over the CPU budget", warmup_s=None)
            elif method in over:
                row.update(status=f"skipped: K = {over[method]} already over the budget", warmup_s=None)
            elif len(warmups.get(method, [])) >= 2 and _projected(warmups[method], k) > args.budget_s:
                row.update(status=f"skipped: warm-up projected at {_projected(warmups[method], k):.0f} s "
                           f"(affine in K from K = {', '.join(str(x) for x, _ in warmups[method][-2:])}), "
                           "over the budget", warmup_s=None)
            else:
                cfg = {"mode": mode, "method": method, "k": k, "dims": dims, "size": size, "batch": batch,
                       "device": args.device, "threads": args.threads, "steps": steps, "budget_s": args.budget_s}
                started = time.perf_counter()
                row.update(run_child(cfg, args.max_rss_gb if args.device == "cpu" else None))
                row["wall_total_s"] = time.perf_counter() - started
                if row.get("status") == "ok" and mode == "bilevel":
                    warmups.setdefault(method, []).append((k, row["warmup_s"]))
                elif mode == "bilevel" and row["status"].startswith("skipped"):
                    over[method] = k  # over the budget: a larger K is too
            if row.get("status") == "ok":
                row["epoch_steps"] = steps_per_epoch(dims, batch, slices_per_case)
                row["epoch_h"] = row["epoch_steps"] * row["step_s"] / 3600.0
            rows.append(row)
            shown = f"{row['step_s']:.2f} s/step" if row.get("status") == "ok" else row["status"]
            print(f"  {dims}-D {mode:8s} {method:18s} K={k or '-':<3} {shown}", file=sys.stderr, flush=True)
    for r in rows:
        ref = next((x for x in rows if x["dims"] == r["dims"] and x["mode"] == "direct" and x.get("status") == "ok"),
                   None)
        if r.get("status") == "ok" and ref is not None:
            r["x_direct"] = r["step_s"] / ref["step_s"]
    mem = "peak RSS MiB" if args.device == "cpu" else "peak alloc MiB"
    print(f"paper-scale step on {args.device}, {args.threads} torch thread(s), fusion-cnn width 16, UNet width 32 "
          f"depth 4, inner SGD; {steps} timed step(s) after 1 warm-up; budget {args.budget_s:g} s per warm-up")
    print(f"{'dims':4s} {'input':>13s} {'mode':8s} {'method':18s} {'K':>3s} {'s/step':>8s} {'min s':>8s} "
          f"{'cpu s':>8s} {'x direct':>8s} {mem:>14s} {'epoch h':>8s} {'load':>5s}")
    for r in rows:
        shape = f"{r['batch']}x{'x'.join([str(r['size'])] * r['dims'])}"
        head = f"{r['dims']}-D  {shape:>13s} {r['mode']:8s} {r['method']:18s} {r['K'] or '-':>3}"
        if r.get("status") == "ok":
            print(f"{head} {r['step_s']:8.2f} {r['step_min_s']:8.2f} {r['step_cpu_s']:8.2f} "
                  f"{r.get('x_direct', float('nan')):8.2f} {r['peak_mib']:14.0f} {r['epoch_h']:8.2f} "
                  f"{r['load_average']:5.1f}")
        else:
            print(f"{head} {r['status']}")
    per_epoch = {d: steps_per_epoch(d, SIZES[d]["batch"], slices_per_case) for d in SIZES}
    projection = (f"one epoch of BraTS 2021 ({BRATS_2021_CASES} cases) = steps x seconds per step at the measured "
                  f"batch: 2-D {BRATS_2021_CASES} x {slices_per_case} slices per case (the benchmark builder's default "
                  f"--slices-per-case) / batch {SIZES[2]['batch']} = {per_epoch[2]} steps; 3-D one "
                  f"{SIZES[3]['size']}^3 patch per case / batch {SIZES[3]['batch']} = {per_epoch[3]} steps")
    print(projection)
    for r in rows:
        if r.get("status") == "ok":
            print(f"  {r['dims']}-D {r['mode']:8s} {r['method']:18s} K={r['K'] or '-':<3} "
                  f"{r['epoch_steps']} x {r['step_s']:.2f} s = {r['epoch_h']:.2f} h per epoch")
    import torch

    machine = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
               "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
               "load_average_end": os.getloadavg()[0]}
    payload = {"settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                            "steps": steps, "methods": methods, "ks": ks, "sizes": SIZES, "seg_options": SEG_OPTIONS,
                            "fusion_options": FUSION_OPTIONS, "slices_per_case": slices_per_case},
               "machine": machine, "rows": rows, "projection": projection, "epoch_steps": per_epoch,
               "notes": [args.shared_note if args.device == "cpu" else "one GPU",
                         ("peak_mib: child peak RSS on CPU (base_mib: RSS before the first step), "
                          "torch.cuda.max_memory_allocated on CUDA (base_mib: allocated before the first step)"),
                         "x_direct: seconds per step over the direct (plain segmentation) step of the same dims"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
