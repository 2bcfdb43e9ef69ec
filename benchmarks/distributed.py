"""Data-parallel throughput on CPU: outer steps per second with 1 and 2 gloo processes, bi-level and direct.

    python benchmarks/distributed.py [--steps 6] [--warmup 2] [--batch 8] [--size 64]

Each configuration runs in fresh processes started as torchrun starts them (one torch thread each), on a
fixed global batch of --batch random slices (each process takes its shard), UNet width 8 depth 3,
fusion-cnn width 8; bi-level is unrolled with K = 2 inner SGD steps. The ratio is the 2-process
throughput over the 1-process throughput measured in the same run (ideal: 2 on 2 free cores). Prints a
table and writes benchmarks/results/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

RESULTS = Path(__file__).parent / "results" / "distributed.json"
MODES = {"bilevel": {"inner_steps": 2, "inner_optimizer": "sgd"}, "direct": {"mode": "direct", "inputs": "t1ce,flair"}}


def worker(mode: str, steps: int, warmup: int, batch: int, size: int) -> None:
    """As one rank: time ``steps`` outer steps after ``warmup`` on its shard; rank 0 prints seconds per step."""
    from fuse4seg.distributed import init_from_env
    from fuse4seg.train.modes import MODES as REGISTRY
    from fuse4seg.train.networks import build_pipeline
    from fuse4seg.train.optimisers import torch_optimisers
    from fuse4seg.train.resolve import build_config
    from fuse4seg.train.steps import STEPS

    torch.set_num_threads(1)
    world = init_from_env("cpu")
    try:
        config = build_config({"benchmark": "b", "out": "o", "batch_size": batch, "seg_options": {"width": 8, "depth": 3},
                               "fusion_options": {"width": 8}, **MODES[mode]})
        pipeline = build_pipeline(config)
        t = SimpleNamespace(config=config, pipeline=pipeline, opts=torch_optimisers(config, pipeline),
                            device=torch.device("cpu"), step=0, fusion_steps=0, world=world)
        g = torch.Generator().manual_seed(0)
        lo, hi = world.shard(batch)
        data = {"source": torch.rand(batch, 4, size, size, generator=g), "fused": torch.rand(batch, 1, size, size,
                generator=g), "label": torch.randint(0, 4, (batch, size, size), generator=g)}
        shard = {k: v[lo:hi] for k, v in data.items()}
        for i in range(warmup + steps):
            if i == warmup:
                world.barrier()
                started = time.perf_counter()
            STEPS[REGISTRY[config.mode].step](t, shard, shard)
        world.barrier()
        if world.is_main:
            print(json.dumps({"seconds_per_step": (time.perf_counter() - started) / steps}))
    finally:
        world.close()


def launch(n: int, args: list[str]) -> float:
    """Seconds per step of ``n`` processes running :func:`worker` with ``args``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", *args], stdout=subprocess.PIPE, text=True,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(n)]
    outs = [p.communicate(timeout=1800)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a worker failed: {[p.returncode for p in procs]}")
    return json.loads(outs[0].strip().splitlines()[-1])["seconds_per_step"]


def main() -> None:
    """Measure every mode with 1 and 2 processes, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker:
        worker(a.worker, a.steps, a.warmup, a.batch, a.size)
        return
    rows = []
    for mode in MODES:
        args = [mode, "--steps", str(a.steps), "--warmup", str(a.warmup), "--batch", str(a.batch), "--size",
                str(a.size)]
        one, two = launch(1, args), launch(2, args)
        rows.append({"mode": mode, "steps_per_s_1proc": round(1 / one, 3), "steps_per_s_2proc": round(1 / two, 3),
                     "ratio_2_over_1": round(one / two, 3)})
    print(f"global batch {a.batch}, {a.size} x {a.size}, 1 torch thread per process, cores: {os.cpu_count()}")
    print("| mode | steps/s, 1 process | steps/s, 2 processes | ratio |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['steps_per_s_1proc']} | {r['steps_per_s_2proc']} | {r['ratio_2_over_1']} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"settings": {"batch": a.batch, "size": a.size, "steps": a.steps,
                                                "warmup": a.warmup, "cpus": os.cpu_count()}, "rows": rows},
                                  indent=2) + "\n")


if __name__ == "__main__":
    main()
