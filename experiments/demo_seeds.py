"""`fuse4seg demo` over training seeds: the figures the README quotes, as mean +- sd with the range.

    python experiments/demo_seeds.py                 # seeds 0-4, two demos at a time (one thread each)
    python experiments/demo_seeds.py --seeds 0 1 2 --jobs 1

Each seed runs ``fuse4seg demo --seed S --out OUT/seed-S`` (the same phantom benchmark every time;
the seed sets the initial weights and the data order) and reads its test-split metrics. Writes
experiments/results/demo_seeds.json and .md: Dice per slice per region and their mean, per seed,
then mean +- sd (ddof 1), the 95 % t-interval and the [min, max] over seeds. The last bits of a
CPU's floating point differ between processors and a short training amplifies them, so a single
seed's figure is not a fact; these are.
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
    per_slice = json.loads(metrics.read_text(encoding="utf-8"))["segmentation"]["per_slice"]
    dice = {r: float(per_slice[r]["dice"]) for r in REGIONS}
    return {**dice, "mean": sum(dice.values()) / len(REGIONS)}


def main(argv: list[str] | None = None) -> int:
    """Run the seeds, print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/demo-seeds"))
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        per_seed = dict(zip(args.seeds, pool.map(lambda s: run_seed(s, args.out), args.seeds)))
    keys = (*REGIONS, "mean")
    stats = {k: interval([d[k] for d in per_seed.values()]) for k in keys}
    for k in keys:
        stats[k]["range"] = [min(d[k] for d in per_seed.values()), max(d[k] for d in per_seed.values())]
    lines = ["| seed | " + " | ".join(f"Dice {k}" for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {s} | " + " | ".join(f"{d[k]:.3f}" for k in keys) + " |" for s, d in per_seed.items()]
    lines.append("| mean ± sd | " + " | ".join(f"{stats[k]['mean']:.3f} ± {stats[k]['sd']:.3f}" for k in keys) + " |")
    lines.append("| 95 % CI | " + " | ".join(f"[{stats[k]['ci95'][0]:.3f}, {stats[k]['ci95'][1]:.3f}]"
                                            for k in keys) + " |")
    lines.append("| range | " + " | ".join(f"[{stats[k]['range'][0]:.3f}, {stats[k]['range'][1]:.3f}]"
                                          for k in keys) + " |")
    table = "\n".join(lines) + "\n"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "demo_seeds.md").write_text(table, encoding="utf-8")
    (args.results / "demo_seeds.json").write_text(json.dumps({"per_seed": per_seed, "stats": stats}, indent=1) + "\n",
                                                  encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
