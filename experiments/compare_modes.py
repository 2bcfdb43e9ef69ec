"""Train every mode of `fuse4seg train` on one phantom benchmark with the same budget; tabulate test metrics.

Reads experiments/compare_modes.toml ([benchmark]: build options, [common]: options shared by all
runs, [runs.NAME]: each run's own options), builds the benchmark once, trains and evaluates each
run (test split, best.pt by val Dice), and writes experiments/results/compare_modes.json and .md.
Bi-level runs fit the segmenter on 80 % of the train cases (the rest feed the upper loss); the
other modes fit on all train cases.

    python experiments/compare_modes.py [--out runs/compare] [--only NAME ...] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib
from pathlib import Path

import numpy as np

from fuse4seg.data.benchmark import build_benchmark
from fuse4seg.train.config import build_config
from fuse4seg.train.evaluate import evaluate_run
from fuse4seg.train.loop import train

HERE = Path(__file__).resolve().parent
REGIONS = ("WT", "TC", "ET")


def main() -> None:
    """Build, train each run, evaluate, write the result table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--only", nargs="*", help="names of runs to do (default: all)")
    parser.add_argument("--steps", type=int, help="override the common step budget")
    args = parser.parse_args()
    spec = tomllib.loads((HERE / "compare_modes.toml").read_text(encoding="utf-8"))
    out = Path(args.out)
    bench = out / "benchmark"
    if not (bench / "brats_fuse.h5").is_file():
        build_benchmark(bench, workers=2, progress=False, overwrite=True, **spec["benchmark"])
    common = dict(spec["common"], **({"steps": args.steps} if args.steps else {}))
    rows = []
    for name, opts in spec["runs"].items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        summary = train(build_config({**common, **opts, "benchmark": str(bench), "out": str(out / name),
                                      "overwrite": True, "progress": False}))
        m = evaluate_run(out / name, split="test")
        hd95_unit = m["hd95_unit"]
        per_slice, per_case = m["segmentation"]["per_slice"], m["segmentation"]["per_case"]
        row = {"run": name, "mode": opts["mode"], "steps": summary["steps"], "train_s": summary["seconds"],
               "wall_s": time.perf_counter() - started, "best_step": summary["best_step"],
               **{f"dice_{r}": per_slice[r]["dice"] for r in REGIONS},
               "dice_mean": float(np.mean([per_slice[r]["dice"] for r in REGIONS])),
               **{f"case_dice_{r}": per_case[r]["dice"] for r in REGIONS},
               **{f"hd95_{r}": per_slice[r]["hd95"] for r in REGIONS},
               "fusion_learned": m["fusion"]["learned"], "fusion_stored": m["fusion"]["benchmark_stored"],
               "background_dice": m["background_dice_per_slice_mean"], "hd95_unit": hd95_unit}
        rows.append(row)
        print(f"{name:22s} Dice mean {row['dice_mean']:.3f} (WT {row['dice_WT']:.3f}) in {row['train_s']:.0f} s",
              flush=True)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    previous = results / "compare_modes.json"
    if args.only and previous.is_file():  # keep the rows of runs not redone this time
        done = {r["run"] for r in rows}
        kept = [r for r in json.loads(previous.read_text(encoding="utf-8"))["rows"] if r["run"] not in done]
        order = list(spec["runs"])
        rows = sorted(kept + rows, key=lambda r: order.index(r["run"]) if r["run"] in order else len(order))
    payload = {"benchmark": spec["benchmark"], "common": common, "runs": spec["runs"], "rows": rows}
    (results / "compare_modes.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    unit = "mm" if all(r.get("hd95_unit") == "mm" for r in rows) else "px"
    lines = [f"| run | Dice WT | Dice TC | Dice ET | Dice mean | case Dice WT | HD95 WT ({unit}) | Qabf | VIF | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        # Learned fusion metrics where the run has a fusion net; the stored fusion in brackets for
        # the direct run on the benchmark's fused image; blank where no fused image is segmented.
        fl, stored = r["fusion_learned"] or {}, r["fusion_stored"] or {}
        if fl:
            qabf, vif = f"{fl['Qabf']:.3f}", f"{fl['VIF']:.3f}"
        elif r["run"] == "direct-laplacian" and stored:
            qabf, vif = f"({stored['Qabf']:.3f})", f"({stored['VIF']:.3f})"
        else:
            qabf = vif = ""
        lines.append(f"| {r['run']} | {r['dice_WT']:.3f} | {r['dice_TC']:.3f} | {r['dice_ET']:.3f} | "
                     f"{r['dice_mean']:.3f} | {r['case_dice_WT']:.3f} | {r['hd95_WT']:.1f} | "
                     f"{qabf} | {vif} | {r['train_s']:.0f} |")
    (results / "compare_modes.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
