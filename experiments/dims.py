"""3-D against 2-D bi-level training at equal training wall time: whole-volume Dice per test case.

    python experiments/dims.py                 # train what is missing (2 jobs), evaluate, aggregate
    python experiments/dims.py --report-only   # re-aggregate the committed records

Both rows (experiments/dims.toml) train bi-level fusion + segmentation on one benchmark of the study's
phantom release built with ``--volumes``: ``dims-2d`` on its 2-D slices (the study's bilevel row),
``dims-3d`` on 32^3 patches of its volumes, with the step count chosen so both take about the same
training time on this CPU. Every run is then scored the same way, on whole volumes:
``fuse4seg evaluate --volumes RELEASE --convention monai`` (2-D runs predict every axial slice, 3-D runs
slide a window over the volume). Per test case the Dice of WT, TC and ET are averaged; the aggregate
gives mean +- sd over seeds and 95 % t-CI of the case mean, the paired Wilcoxon test over the 8 test
cases (Dice averaged over seeds) and the training seconds; the validation curves go to
experiments/results/dims_curves/ (2-D: per-slice val Dice; 3-D: whole val volumes). Records go to
experiments/results/dims_runs/.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import study
from study_report import interval, load_runs, plot_curves

REGIONS = ("WT", "TC", "ET")


def train_and_score(name: str, row: dict[str, Any], seed: int, spec: dict[str, Any], bench: Path, out: Path,
                    committed: Path) -> Path:
    """Train (the study's run_one), score whole volumes, write committed/NAME/seed-S.json; returns it."""
    target = committed / name / f"seed-{seed}.json"
    if target.is_file():
        return target
    record = json.loads(study.run_one(name, row, seed, spec["common"], {"laplacian": bench}, out)
                        .read_text(encoding="utf-8"))
    run = out / "runs" / name / f"seed-{seed}" / "run"
    log = out / "runs" / name / f"seed-{seed}" / "log.txt"
    study.fuse4seg("evaluate", "--run", str(run), "--volumes", str(out / "release"), "--convention", "monai",
                   log=log)
    metrics = json.loads((run / "eval-volumes-test" / "metrics.json").read_text(encoding="utf-8"))
    cases = {c["case"]: {r: c["regions"][r]["dice"] for r in REGIONS} for c in metrics["cases"]}
    result = {"row": name, "seed": seed, "options": record["options"], "train_s": record["train_s"],
              "steps": record["steps"], "curve": record["curve"], "volume_case_dice": cases,
              "slice_dice": record["dice"]}
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return target


def aggregate(committed: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Per row: case-mean whole-volume Dice over seeds, training time; paired test against the reference."""
    from scipy import stats

    rows = {name: [json.loads(p.read_text()) for p in sorted((committed / name).glob("seed-*.json"))]
            for name in spec["rows"]}
    def case_means(runs: list[dict[str, Any]]) -> dict[str, float]:
        """Test case -> Dice (mean of regions) averaged over seeds."""
        cases = runs[0]["volume_case_dice"]
        return {c: float(np.mean([np.mean([r["volume_case_dice"][c][k] for k in REGIONS]) for r in runs]))
                for c in cases}
    out = {"reference": spec["reference"], "rows": []}
    ref = case_means(rows[spec["reference"]])
    for name, runs in rows.items():
        per_seed = [float(np.mean([np.mean(list(d.values())) for d in r["volume_case_dice"].values()])) for r in runs]
        entry = {"row": name, "note": spec["rows"][name].get("note", ""), "seeds": len(runs),
                 "steps": runs[0]["steps"], "dice": interval(per_seed),
                 "regions": {k: float(np.mean([np.mean([d[k] for d in r["volume_case_dice"].values()])
                                               for r in runs])) for k in REGIONS},
                 "train_s": float(np.mean([r["train_s"] for r in runs]))}
        if name != spec["reference"]:
            mine = case_means(runs)
            diff = np.array([mine[c] - ref[c] for c in sorted(ref)])
            entry["paired"] = {"mean_difference": float(diff.mean()), "cases_up": int((diff > 0).sum()),
                               "cases": len(diff), "wilcoxon_p": float(stats.wilcoxon(diff).pvalue)}
        out["rows"].append(entry)
    return out


def markdown(agg: dict[str, Any]) -> str:
    """The table."""
    lines = ["# 3-D against 2-D bi-level training, whole-volume Dice per test case", "",
             ("Mean ± sd over seeds of the mean over the 8 test cases of (Dice WT + TC + ET) / 3, scored on whole "
              "volumes (`evaluate --volumes`, MONAI convention); paired Wilcoxon over cases against "
              f"`{agg['reference']}`. Generated by `python experiments/dims.py`."), "",
             "| row | seeds | steps | Dice | 95 % CI | WT | TC | ET | Δ per case | p | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in agg["rows"]:
        d, p = e["dice"], e.get("paired")
        delta = f"{p['mean_difference']:+.3f} ({p['cases_up']}/{p['cases']} up)" if p else ""
        pv = f"{p['wilcoxon_p']:.3g}" if p else ""
        lines.append(f"| {e['row']} | {e['seeds']} | {e['steps']} | {d['mean']:.3f} ± {d['sd']:.3f} | "
                     f"[{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}] | " + " | ".join(f"{e['regions'][k]:.3f}" for k in REGIONS)
                     + f" | {delta} | {pv} | {e['train_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Train and score the missing (row, seed) pairs, then aggregate into experiments/results/."""
    args, spec, out = study.experiment_args(HERE / "dims.toml", __doc__.splitlines()[0], argv)
    committed = args.results / "dims_runs"
    if not args.report_only:
        study.prepare_data(spec, out, out / "data_log.txt")  # the release (shared with the study)
        bench = out / "bench-volumes"
        if not (bench / "brats_fuse.h5").is_file():
            data = spec["data"]
            study.fuse4seg("build-benchmark", "--brats", str(out / "release"), "--out", str(bench), "--fusion",
                           "laplacian", "--size", str(data["size"]), "--slices-per-case", str(data["slices_per_case"]),
                           "--split", ",".join(str(x) for x in data["split"]), "--seed", str(data["seed"]),
                           "--workers", "2", "--volumes", "--overwrite", log=out / "data_log.txt")
        jobs = [(name, row, seed) for seed in range(spec["seeds"]) for name, row in spec["rows"].items()]
        study.run_all(train_and_score, [(*job, spec, bench, out, committed) for job in jobs], args.jobs)
    agg = aggregate(committed, spec)
    plot_curves(load_runs(committed), args.results / "dims_curves")  # validation Dice during training
    (args.results / "dims.json").write_text(json.dumps(agg, indent=1) + "\n", encoding="utf-8")
    text = markdown(agg)
    (args.results / "dims.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
