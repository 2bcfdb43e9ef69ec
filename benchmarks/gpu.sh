#!/usr/bin/env bash
# CUDA end-to-end checks and bi-level GPU throughput (not run on the CPU-only development machine).
#
#   bash benchmarks/gpu.sh [WORKDIR]        # default WORKDIR: a fresh temporary folder
#
# 1. phantom release -> benchmark; train every mode 3 steps with --device cuda (bilevel also in bf16);
#    evaluate and fuse with --device cuda; build a benchmark with --fusion-checkpoint from the bilevel run;
# 2. with 2+ GPUs: torchrun --nproc-per-node 2 (NCCL) bilevel training and its --resume;
# 3. bi-level outer steps per second and peak GPU memory, unrolled vs --hypergrad higher, fp32 and bf16,
#    written to benchmarks/results/gpu.json;
# 4. paper-scale rehearsal (benchmarks/scale.py --device cuda: every method at K = 1, 3, 10, 2-D and 3-D),
#    written to benchmarks/results/scale_gpu.json.
# Fail-fast: the first failing command stops the script with its exit status.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
W="${1:-$(mktemp -d)}"
mkdir -p "$W" "$ROOT/benchmarks/results"
cd "$ROOT"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
echo "workdir $W, $NGPU GPU(s)"

"$PY" -m fuse4seg phantom --out "$W/release" --cases 6 --scale 0.25 --overwrite
"$PY" -m fuse4seg build-benchmark --out "$W/bench" --brats "$W/release" --size 64 --slices-per-case 3 --overwrite
printf 'fusion_options = { width = 8 }\nseg_options = { width = 8, depth = 3 }\n' > "$W/tiny.toml"
COMMON=(--config "$W/tiny.toml" --benchmark "$W/bench" --steps 3 --batch-size 4 --device cuda --no-progress
        --eval-slices 4)
for mode in bilevel two-stage joint direct feature-fusion; do
  "$PY" -m fuse4seg train "${COMMON[@]}" --out "$W/run-$mode" --mode "$mode" --overwrite
done
"$PY" -m fuse4seg train "${COMMON[@]}" --out "$W/run-bf16" --precision bf16 --overwrite
"$PY" -m fuse4seg train "${COMMON[@]}" --out "$W/run-fp16" --mode direct --precision fp16 --overwrite
"$PY" -m fuse4seg evaluate --run "$W/run-bilevel" --split test --device cuda --max-slices 8
CASE=$(ls -d "$W"/release/*/ | head -n 1)
"$PY" -m fuse4seg fuse --run "$W/run-bilevel" --case "$CASE" --out "$W/fused" --device cuda --overwrite
"$PY" -m fuse4seg build-benchmark --out "$W/bench-learned" --brats "$W/release" --size 64 --slices-per-case 3 \
    --fusion-checkpoint "$W/run-bilevel/best.pt" --overwrite

if [ "$NGPU" -ge 2 ]; then
  "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 -m fuse4seg train "${COMMON[@]}" \
      --out "$W/run-2gpu" --steps 2 --overwrite
  "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 -m fuse4seg train --out "$W/run-2gpu" \
      --resume --steps 4 --no-progress
fi

"$PY" - "$ROOT/benchmarks/results/gpu.json" <<'PYEOF'
"""Bi-level steps per second and peak memory on one GPU: unrolled vs higher, fp32 vs bf16."""
import json, sys, time
from types import SimpleNamespace
import torch
from fuse4seg.distributed import World
from fuse4seg.train.modes import MODES
from fuse4seg.train.networks import build_pipeline
from fuse4seg.train.optimisers import torch_optimisers
from fuse4seg.train.resolve import build_config
from fuse4seg.train.steps import STEPS

dev, rows = torch.device("cuda"), []
g = torch.Generator().manual_seed(0)
batch = {"source": torch.rand(8, 4, 128, 128, generator=g), "fused": torch.rand(8, 1, 128, 128, generator=g),
         "label": torch.randint(0, 4, (8, 128, 128), generator=g)}
for method in ("unrolled", "higher"):
    for precision in ("fp32", "bf16"):
        c = build_config({"benchmark": "b", "out": "o", "batch_size": 8, "hypergrad": method, "inner_steps": 5,
                          "inner_optimizer": "sgd", "precision": precision, "device": "cuda"})
        p = build_pipeline(c).to(dev)
        t = SimpleNamespace(config=c, pipeline=p, opts=torch_optimisers(c, p), device=dev, step=0, fusion_steps=0,
                            world=World())
        for i in range(8):
            if i == 3:
                torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); t0 = time.perf_counter()
            STEPS[MODES["bilevel"].step](t, batch, batch)
        torch.cuda.synchronize()
        rows.append({"method": method, "precision": precision, "K": 5, "batch": 8, "size": 128,
                     "steps_per_s": round(5 / (time.perf_counter() - t0), 3),
                     "peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)})
        print(rows[-1])
json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, open(sys.argv[1], "w"), indent=2)
PYEOF
"$PY" benchmarks/scale.py --device cuda --out "$ROOT/benchmarks/results/scale_gpu.json"
echo "all CUDA checks passed; results in benchmarks/results/gpu.json and benchmarks/results/scale_gpu.json"
