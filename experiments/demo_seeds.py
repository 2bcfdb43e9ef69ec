"""`fuse4seg demo` over training seeds: the figures the README quotes, with the prediction interval of one run.

    python experiments/demo_seeds.py                 # seeds 0-9, two demos at a time (one thread each)
    python experiments/demo_seeds.py --seeds 0 1 2 --jobs 1

Each seed runs ``fuse4seg demo --seed S --out OUT/seed-S`` (the same phantom benchmark every time;
the seed sets the initial weights and the data order) and reads its test-split metrics. Writes
experiments/results/demo_seeds.json and .md: per seed, Dice per slice per region and their mean, the
same networks untrained, predicting background everywhere, and Qabf of the learned, the untrained and
the benchmark's stored fused image; then mean +- sd (ddof 1), the 95 % t-interval of the mean, the
95 % prediction interval of ONE further run (``stats.prediction_interval`` of experiments/stats.py:
mean +- t(0.975, n-1) sd sqrt(1 + 1/n), normal runs: what a user's `make demo` should land in) and the
[min, max] over seeds. The last bits of a CPU's floating point differ between processors and a short
training amplifies them, so a single seed's figure is not a fact; these are.

The statistics: the metric is the demo's own headline, per-slice Dice (mean over the test slices; the mean
column is (WT + TC + ET) / 3), one value per seed; nothing is compared, so no test is run. There is no
--report-only mode: the table is rebuilt from the demos' metrics under --out, and a missing one is trained.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import stats
from study_report import interval

REGIONS = ("WT", "TC", "ET")


def run_seed(seed: int, out: Path) -> dict[str, float]:
    """Run the demo with ``seed`` (unless finished before) and return its test Dice per region and mean."""
    run = out / f"seed-{seed}"
    metrics = run / "run" / "eval" / "metrics.json"
    if not metrics.is_file():
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with (out / f"seed-{seed}.log").open("w", encoding="utf-8") as log:
            subprocess.run([sys.executable, "-m", "fuse4seg", "demo", "--seed", str(seed), "--out", str(run),
                            "--overwrite"], stdout=log, stderr=subprocess.STDOUT, env=env, check=True)
    data = json.loads(metrics.read_text(encoding="utf-8"))
    dice = {r: float(data["segmentation"]["per_slice"][r]["dice"]) for r in REGIONS}
    untrained = data["untrained"]["segmentation"]["per_slice"]
    return {
        **dice, "mean": sum(dice.values()) / len(REGIONS),
        "untrained_mean": sum(float(untrained[r]["dice"]) for r in REGIONS) / len(REGIONS),
        "background_mean": sum(float(v) for v in data["background_dice_per_slice_mean"].values()) / len(REGIONS),
        "qabf_learned": float(data["fusion"]["learned"]["Qabf"]),
        "qabf_untrained": float(data["untrained"]["fusion"]["Qabf"]),
        "qabf_stored": float(data["fusion"]["benchmark_stored"]["Qabf"]),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the seeds, print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=list(range(10)))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/demo-seeds"))
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        per_seed = dict(zip(args.seeds, pool.map(lambda s: run_seed(s, args.out), args.seeds)))
    keys = (*REGIONS, "mean", "untrained_mean", "background_mean", "qabf_learned", "qabf_untrained", "qabf_stored")
    titles = ("Dice WT", "Dice TC", "Dice ET", "Dice mean", "untrained Dice mean", "background Dice mean",
              "Qabf learned", "Qabf untrained", "Qabf stored (Laplacian)")
    summary = {k: interval([d[k] for d in per_seed.values()]) for k in keys}
    for k in keys:
        values = [d[k] for d in per_seed.values()]
        summary[k]["range"] = [min(values), max(values)]
        summary[k]["pi95"] = stats.prediction_interval(values)
    lines = ["| seed | " + " | ".join(titles) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {s} | " + " | ".join(f"{d[k]:.3f}" for k in keys) + " |" for s, d in per_seed.items()]
    lines.append("| mean ± sd | " + " | ".join(f"{summary[k]['mean']:.3f} ± {summary[k]['sd']:.3f}" for k in keys)
                 + " |")
    for name, key in (("95 % CI of the mean", "ci95"), ("95 % prediction interval, one run", "pi95"),
                      ("range", "range")):
        lines.append(f"| {name} | " + " | ".join(f"[{summary[k][key][0]:.3f}, {summary[k][key][1]:.3f}]"
                                                 for k in keys) + " |")
    table = "\n".join(lines) + "\n"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "demo_seeds.md").write_text(table, encoding="utf-8")
    (args.results / "demo_seeds.json").write_text(json.dumps({"per_seed": per_seed, "stats": summary}, indent=1) + "\n",
                                                  encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
