"""3-D against 2-D bi-level training at equal training wall time: whole-volume Dice per test case.

    python experiments/dims.py                 # train what is missing (2 jobs), evaluate, aggregate
    python experiments/dims.py --report-only   # re-aggregate the committed records

Both rows (experiments/dims.toml) train bi-level fusion + segmentation on one benchmark of the study's
phantom release built with ``--volumes``: ``dims-2d`` on its 2-D slices (the study's bilevel row),
``dims-3d`` on 32^3 patches of its volumes, with the step count chosen so both take about the same
training time on this CPU. Every run is then scored the same way, on whole volumes:
``fuse4seg evaluate --volumes RELEASE --convention monai`` (2-D runs predict every axial slice, 3-D runs
slide a window over the volume). Primary metric, for the headline, the difference and the test alike: whole-volume Dice per test CASE
(mean of WT, TC and ET), held per row as a (seeds, cases) matrix; one value per seed = its mean over the test
cases. The aggregate gives its mean +- sd (ddof 1) over seeds and 95 % t-CI, the regions' means and the training
seconds, and against the reference row (experiments/stats.py; a family of one comparison, so Holm changes
nothing): the difference of means with a hierarchical bootstrap 95 % interval (cases, then seeds within each
row), cases up, the paired t-test over the cases of the seed-averaged values, TOST with a 0.02 Dice margin and
the reading (see experiments/stats.py: better / worse needs Holm p < 0.05 and a 95 % interval clear of 0; level needs TOST
  p < 0.05 and a 90 % interval inside the margin; else undecided). The validation curves go to
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

import stats
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


def volume_matrix(runs: list[dict[str, Any]]) -> tuple[list[str], np.ndarray]:
    """(cases, (seeds, cases) matrix) of whole-volume Dice per case (mean of WT/TC/ET) of a row's runs."""
    return stats.case_matrix([stats.case_scores(r["volume_case_dice"]) for r in runs])


def aggregate(committed: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Per row: case-mean whole-volume Dice over seeds, regions, training time; the comparison family against the
    reference."""
    rows = {name: [json.loads(p.read_text()) for p in sorted((committed / name).glob("seed-*.json"))]
            for name in spec["rows"]}
    rows = {name: runs for name, runs in rows.items() if runs}
    reference = spec["reference"]
    matrices = {name: volume_matrix(runs) for name, runs in rows.items()}
    out: dict[str, Any] = {"reference": reference, "margin": stats.MARGIN, "draws": stats.DRAWS,
                           "metric": "whole-volume Dice per test case, mean of WT/TC/ET", "rows": [], "family": []}
    compared = [name for name in rows if name != reference]
    if reference in matrices and compared:
        ref_cases, ref = matrices[reference]
        keep = [c for c in ref_cases if all(c in matrices[name][0] for name in compared)]
        pick = {name: matrices[name][1][:, [matrices[name][0].index(c) for c in keep]] for name in compared}
        out["family"] = stats.compare_family(pick, ref[:, [ref_cases.index(c) for c in keep]], seed=0)
    for name, runs in rows.items():
        _, m = matrices[name]
        entry = {"row": name, "note": spec["rows"][name].get("note", ""), "seeds": len(runs),
                 "steps": runs[0]["steps"], "dice": interval(m.mean(axis=1).tolist()),
                 "regions": {k: float(np.mean([np.mean([d[k] for d in r["volume_case_dice"].values()])
                                               for r in runs])) for k in REGIONS},
                 "train_s": float(np.mean([r["train_s"] for r in runs]))}
        vs = next((e for e in out["family"] if e["row"] == name), None)
        if vs is not None:
            entry["vs"] = vs
        out["rows"].append(entry)
    return out


def markdown(agg: dict[str, Any]) -> str:
    """The rows table and the comparison table."""
    lines = ["# 3-D against 2-D bi-level training, whole-volume Dice per test case", "",
             ("Primary metric (headline, difference and test): whole-volume Dice per test case, (WT + TC + ET) / 3, "
              "scored on whole volumes (`evaluate --volumes`, MONAI convention); per seed its mean over the test "
              "cases; mean ± sd over seeds and the 95 % t-CI. WT / TC / ET: the regions' case means, mean over "
              "seeds. Generated by `python experiments/dims.py`."), "",
             "| row | seeds | steps | Dice per case | 95 % CI | WT | TC | ET | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in agg["rows"]:
        d = e["dice"]
        lines.append(f"| {e['row']} | {e['seeds']} | {e['steps']} | {d['mean']:.3f} ± {d['sd']:.3f} | "
                     f"[{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}] | " + " | ".join(f"{e['regions'][k]:.3f}" for k in REGIONS)
                     + f" | {e['train_s']:.0f} |")
    family = agg["family"]
    if family:
        title = (f"## Against `{agg['reference']}`\n\nΔ: row minus `{agg['reference']}`, whole-volume Dice per test "
                 f"case. Interval: hierarchical bootstrap ({agg['draws']} draws: cases, then each row's seeds). p: "
                 f"paired t over the {family[0]['cases']} test cases of the seed-averaged values; Holm over this "
                 f"table ({len(family)} comparison{'s' if len(family) > 1 else ''}, one family); TOST margin "
                 f"±{agg['margin']} Dice. Reading: better / worse when Holm p < 0.05 and the 95 % interval excludes 0, level when TOST p < 0.05 and the 90 % interval lies inside the margin, else "
                 "undecided.")
        lines += ["", stats.family_markdown(family, title).rstrip()]
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
