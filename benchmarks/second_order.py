"""A bi-level step through torch's convolution layers against the same step through fuse4seg's lean layers.

fuse4seg.models.convolution replaces the convolutions' differentiated backward inside the hypergradient passes, so
that torch's double backward no longer computes the second-order weight term nobody asked for. This measures what
that buys. For each size it builds the phantom benchmark at that slice size and three trainers as ``fuse4seg train``
builds them: ``--mode bilevel --hypergrad unrolled`` (K = 1, inner SGD) once with the networks built from torch's
``Conv2d`` and once from the lean layers (the default), and ``--mode direct`` (the plain segmentation step, the
reference). Their steps run interleaved, the order alternating by round, on the same batches, and each step's process
CPU time is recorded (one thread). Sizes: ``small`` is benchmarks/train.py's default (96 x 96, batch 4, UNet width 8
depth 3, fusion width 8); ``paper`` is benchmarks/scale.py's (192 x 192, batch 8, UNet width 32 depth 4, fusion width
16). Prints a table and writes benchmarks/results/second_order.json.

    python benchmarks/second_order.py [--sizes small,paper] [--rounds 10] [--paper-rounds 4] [--threads 1]
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
from unittest import mock

import torch
from torch import nn

from fuse4seg.data.build.builder import build_benchmark
from fuse4seg.models import blocks
from fuse4seg.runkit.batches import step_loader
from fuse4seg.train.loop import Trainer
from fuse4seg.train.resolve import build_config

RESULTS = Path(__file__).resolve().parent / "results" / "second_order.json"
#: size name -> (slice size, batch, UNet width, UNet depth, fusion width)
SIZES = {"small": (96, 4, 8, 3, 8), "paper": (192, 8, 32, 4, 16)}
#: The 2-D layers with torch's own convolution in place of the lean one (everything else as fuse4seg builds).
TORCH_LAYERS = blocks.LAYERS[2]._replace(conv=nn.Conv2d)


def trainer(bench: Path, out: Path, size: tuple[int, ...], mode: dict, steps: int, torch_conv: bool) -> Trainer:
    """A Trainer as ``fuse4seg train`` builds it, its networks from torch's Conv2d when ``torch_conv``."""
    _, batch, seg_width, seg_depth, fusion_width = size
    options = {"benchmark": str(bench), "out": str(out), "batch_size": batch, "progress": False, "steps": steps,
               "inner_steps": 1, "inner_optimizer": "sgd", "seg_options": {"width": seg_width, "depth": seg_depth},
               "fusion_options": {"width": fusion_width}, **mode}
    layers = {2: TORCH_LAYERS} if torch_conv else {}
    with mock.patch.dict(blocks.LAYERS, layers):
        built = Trainer(build_config(options))
    built.pipeline.train(True)
    return built


def batches(t: Trainer, steps: int) -> list[tuple[dict, dict | None]]:
    """The first ``steps`` (fitting batch, held-out batch) pairs of the run, as the training loop draws them."""
    c = t.config
    fit = step_loader(t.train_set, t.fit_pool, c.batch_size, c.seed, 0, steps, "fit", 0)
    hold = (iter(step_loader(t.train_set, t.hold_pool, c.batch_size, c.seed, 0, steps, "holdout", 0))
            if t.hold_pool else None)
    return [(b, next(hold) if hold is not None else None) for b in fit]


def measure(name: str, rounds: int, workdir: Path) -> dict:
    """Median and minimum CPU seconds per step of the three trainers at size ``name``, interleaved."""
    size = SIZES[name]
    bench = workdir / f"bench-{name}"
    build_benchmark(bench, phantom=6, phantom_scale=0.5, size=size[0], slices_per_case=6, split=(0.7, 0.15, 0.15),
                    workers=2, progress=False)
    steps = rounds + 1  # one untimed warm-up round
    bilevel = {"mode": "bilevel", "hypergrad": "unrolled"}
    rows = {"bilevel, torch's Conv2d": trainer(bench, workdir / "a", size, bilevel, steps, True),
            "bilevel, lean Conv2d": trainer(bench, workdir / "b", size, bilevel, steps, False),
            "direct (plain step)": trainer(bench, workdir / "c", size, {"mode": "direct"}, steps, False)}
    data = {k: batches(t, steps) for k, t in rows.items()}
    times: dict[str, list[float]] = {k: [] for k in rows}
    for i in range(steps):
        for key in (list(rows) if i % 2 == 0 else list(rows)[::-1]):
            t = rows[key]
            fit, hold = data[key][i]
            start = time.process_time()
            t.one_step(fit, hold)
            elapsed = time.process_time() - start
            t.step += 1
            if i > 0:
                times[key].append(elapsed)
        print(f"  {name}: round {i + 1}/{steps}", file=sys.stderr)
    medians = {key: statistics.median(values) for key, values in times.items()}
    out = {"size": dict(zip(("slice", "batch", "seg_width", "seg_depth", "fusion_width"), size)), "rounds": rounds,
           "rows": [{"step": key, "cpu_s_median": medians[key], "cpu_s_min": min(values), "cpu_s_all": values,
                     "x_direct": medians[key] / medians["direct (plain step)"]} for key, values in times.items()]}
    out["lean_over_torch"] = medians["bilevel, lean Conv2d"] / medians["bilevel, torch's Conv2d"]
    pairs = [a / b for a, b in zip(times["bilevel, lean Conv2d"], times["bilevel, torch's Conv2d"])]
    out["lean_over_torch_per_round"] = pairs
    return out


def main() -> None:
    """Parse options, measure every size, print the table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="small,paper", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds at the small size")
    parser.add_argument("--paper-rounds", type=int, default=4, help="timed rounds at the paper size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    unknown = sorted(set(args.sizes.split(",")) - set(SIZES))
    if unknown or args.rounds < 1 or args.paper_rounds < 1 or args.threads < 1:
        parser.error(f"--sizes takes {', '.join(SIZES)} (got {', '.join(unknown)})" if unknown
                     else "--rounds, --paper-rounds and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="fuse4seg-bench-second-order-") as tmp:
        for name in args.sizes.split(","):
            rounds = args.paper_rounds if name == "paper" else args.rounds
            results.append({"name": name, **measure(name, rounds, Path(tmp))})
    print(f"bi-level unrolled K = 1 step, inner SGD, {args.threads} thread(s); CPU seconds per step, median of the "
          "interleaved rounds")
    print(f"{'size':6s} {'step':26s} {'CPU s':>8s} {'min':>8s} {'x direct':>8s}")
    for r in results:
        for row in r["rows"]:
            print(f"{r['name']:6s} {row['step']:26s} {row['cpu_s_median']:8.3f} {row['cpu_s_min']:8.3f} "
                  f"{row['x_direct']:8.2f}")
        ratios = r["lean_over_torch_per_round"]
        print(f"{r['name']:6s} lean / torch: {r['lean_over_torch']:.3f} (per round {min(ratios):.3f} to "
              f"{max(ratios):.3f})")
    payload = {"settings": vars(args) | {"results": str(args.results)},
               "machine": {"python": platform.python_version(), "torch": torch.__version__,
                           "threads": torch.get_num_threads()},
               "sizes": results}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
