"""The robustness experiment: Dice and fusion quality under MR degradations, rows x seeds.

    python experiments/robustness.py                 # train what is missing, evaluate, aggregate (2 jobs)
    python experiments/robustness.py --report-only   # re-aggregate the committed per-seed results

Rows (experiments/robustness.toml): bi-level fusion trained on clean inputs, bi-level trained on degraded
inputs with light augmentation (``--degrade-inputs``: the fusion loss still aims at the clean sources),
direct on all four modalities and feature-fusion over all four. For every seed, each row is trained (and
evaluated) with the study's runner (experiments/study.py ``run_one``, on the study's data), then the
seed's four runs go through one ``fuse4seg robustness`` call, so they see the very same degraded test
images (degradation draws seeded by the seed). A finished seed leaves its robustness.json in
experiments/results/robustness_runs/seed-S.json and is not run again.

Primary metric, for the headline, the differences and the tests alike: Dice per test CASE as ``fuse4seg
robustness`` records it (``case_dice``: the mean over the case's slices of the per-slice Dice, each the mean of
WT/TC/ET), held per (row, degradation, severity) as a (seeds, cases) matrix. The robustness records hold no
stacked-volume Dice per case (the study's metric); for the clean split alone the training records do, and the
table's notes quote it as a secondary, untested figure.

Aggregate (experiments/results/robustness.{md,json}, robustness_<degradation>.png, robustness_curves/):
- per row, degradation and severity: the case mean per seed, as mean +- sd (ddof 1) over seeds and 95 % t-CI,
  and Qabf likewise;
- two comparison tables (experiments/stats.py), on the clean split and at the worst severity of every
  degradation, on the same degraded images: every other row against the reference row, and the clean-trained
  multi-channel rows against the robust bi-level row (:data:`SECOND_REFERENCES`). Per comparison: the
  difference of means with a hierarchical bootstrap 95 % interval (cases, then seeds within each row), cases
  up, the paired t-test over the cases of the seed-averaged values, TOST with a 0.02 Dice margin, and the
  reading (see experiments/stats.py: better / worse needs Holm p < 0.05 and a 95 % interval clear of 0; level needs TOST
  p < 0.05 and a 90 % interval inside the margin; else undecided). Each table is one family:
  Holm runs over all of its comparisons, every condition together;
- the validation curves of every training run.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stats
import study
from study_report import interval, load_runs, plot_curves

COMMITTED = HERE / "results" / "robustness_runs"
#: Rows that head a comparison family of their own after the spec's reference (each against the rows not yet
#: used as a reference): robust bi-level against the clean-trained multi-channel segmenters.
SECOND_REFERENCES = ("rob-bilevel-robust",)


def train_seed(spec: dict[str, Any], seed: int, benches: dict[str, Path], out: Path, jobs: int) -> dict[str, Path]:
    """Train and evaluate every row for ``seed`` (the study's run_one); returns row -> run directory."""
    rows = spec["rows"]
    study.run_all(study.run_one, [(name, row, seed, spec["common"], benches, out) for name, row in rows.items()], jobs)
    runs = {name: out / "runs" / name / f"seed-{seed}" / "run" for name in rows}
    missing = [name for name, run in runs.items() if not (run / "best.pt").is_file()]
    if missing:  # a record exists but its run was trained in another session: train it again here
        raise RuntimeError(f"seed {seed}: no run directory for {', '.join(missing)} under {out / 'runs'}; remove "
                           f"{out / 'results'}/<row>/seed-{seed}.json to retrain")
    return runs


def robustness_seed(spec: dict[str, Any], seed: int, runs: dict[str, Path], out: Path, jobs: int) -> Path:
    """One ``fuse4seg robustness`` call over the seed's runs; returns its robustness.json."""
    target = out / "robustness" / f"seed-{seed}"
    log = out / "robustness" / f"seed-{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    args = [a for run in runs.values() for a in ("--run", str(run))]
    study.fuse4seg("robustness", *args, "--degradations", spec["degradations"], "--levels", str(spec["levels"]),
                   "--fusion-slices", str(spec["fusion_slices"]), "--seed", str(seed), "--workers", str(jobs),
                   "--out", str(target), "--overwrite", log=log)
    return target / "robustness.json"


def rows_of(records: dict[int, dict[str, Any]]) -> dict[tuple[str, str, float], list[dict[str, Any]]]:
    """(row, degradation, severity) -> that entry of every seed (run labels are ROW names)."""
    out: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for record in records.values():
        for r in record["rows"]:
            row = r["run"].split("/")[0] if "/" in r["run"] else r["run"]
            out.setdefault((row, r["degradation"], r["severity"]), []).append(r)
    return out


def matrix_of(entries: list[dict[str, Any]]) -> tuple[list[str], np.ndarray]:
    """(cases, (seeds, cases) matrix) of one (row, degradation, severity): each seed's ``case_dice``."""
    return stats.case_matrix([e["case_dice"] for e in entries])


def on_cases(cases: list[str], m: np.ndarray, keep: list[str]) -> np.ndarray:
    """The columns of ``m`` (over ``cases``) for the cases ``keep``, in that order."""
    return m[:, [cases.index(c) for c in keep]]


def holm_over(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Holm over every entry of one comparison table (:func:`stats.compare_family` results of several conditions
    that together form one family), with the readings redone; the entries are updated in place and returned."""
    for entry in stats.apply_holm(entries):
        entry["family_size"] = len(entries)
    return entries


def conditions(degradations: list[str], severities: list[float]) -> list[tuple[str, str, float]]:
    """(label, degradation, severity) of the compared conditions: the clean split (severity 0 of the first
    degradation: every degradation's severity 0 is the same clean image), then each degradation at the worst."""
    return [("clean", degradations[0], severities[0])] + [(d, d, severities[-1]) for d in degradations]


def clean_stacked(training: dict[str, list[dict[str, Any]]], names: list[str]) -> dict[str, dict[str, float]]:
    """Row -> mean +- sd over seeds of the clean test split's stacked-volume Dice per case (training records)."""
    return {row: interval(stats.case_matrix([stats.case_scores(r["case_dice"]) for r in training[row]])[1]
                          .mean(axis=1).tolist())
            for row in names if training.get(row) and all("case_dice" in r for r in training[row])}


def family_of(matrices: dict[tuple[str, str, float], tuple[list[str], np.ndarray]], reference: str,
              compared: list[str], where: list[tuple[str, str, float]]) -> list[dict[str, Any]]:
    """Every row of ``compared`` against ``reference`` at every (label, degradation, severity) of ``where``, on
    the cases they all share (:func:`stats.compare_family` per condition, before the table-wide Holm)."""
    out: list[dict[str, Any]] = []
    for label, name, level in where:
        if (reference, name, level) not in matrices:
            continue
        ref_cases, ref = matrices[(reference, name, level)]
        present = [row for row in compared if (row, name, level) in matrices]
        keep = [c for c in ref_cases if all(c in matrices[(row, name, level)][0] for row in present)]
        rows = {row: on_cases(*matrices[(row, name, level)], keep) for row in present}
        for entry in stats.compare_family(rows, on_cases(ref_cases, ref, keep), seed=0):
            out.append({**entry, "condition": label, "degradation": name, "severity": level})
    return out


def aggregate(records: dict[int, dict[str, Any]], spec: dict[str, Any]) -> dict[str, Any]:
    """Mean +- sd and CI per (row, degradation, severity) of the case-mean Dice; one comparison family per
    reference (the spec's, then :data:`SECOND_REFERENCES`) on the clean split and at the worst severity."""
    grouped = rows_of(records)
    names = list(spec["rows"])
    degradations = next(iter(records.values()))["degradations"]
    severities = sorted({k[2] for k in grouped})
    matrices = {key: matrix_of(entries) for key, entries in grouped.items()}
    table = []
    for (row, name, level), entries in sorted(grouped.items(), key=lambda kv: (names.index(kv[0][0]), kv[0][1:])):
        qabf = [e["Qabf"] for e in entries if e.get("Qabf") is not None]
        cases, m = matrices[(row, name, level)]
        table.append({"row": row, "degradation": name, "severity": level, "cases": len(cases),
                      "dice": interval(m.mean(axis=1).tolist()),
                      "qabf": interval(qabf) if qabf else None})
    reference = spec["reference"]
    references = [reference] + [r for r in SECOND_REFERENCES if r in names and r != reference]
    families: dict[str, list[dict[str, Any]]] = {}
    for k, ref_row in enumerate(references):
        compared = [row for row in names if row not in references[:k + 1]]
        families[ref_row] = holm_over(family_of(matrices, ref_row, compared, conditions(degradations, severities)))
    return {"seeds": sorted(records), "rows": names, "degradations": degradations, "severities": severities,
            "reference": reference, "metric": ("Dice per test case: mean over the case's slices of per-slice Dice "
                                               "(mean of WT/TC/ET)"),
            "margin": stats.MARGIN, "draws": stats.DRAWS, "table": table, "families": families,
            "notes": {row: spec["rows"][row].get("note", "") for row in names}}


def markdown(agg: dict[str, Any]) -> str:
    """The tables: case-mean Dice mean +- sd per row and severity for each degradation, then the families."""
    sev = agg["severities"]
    lines = ["# Robustness: Dice per test case as degradations grow", "",
             (f"Seeds {agg['seeds']}. Primary metric (headline, differences and tests): Dice per test case, the mean "
              "over the case's slices of per-slice Dice (mean of WT/TC/ET), as `fuse4seg robustness` records it; "
              "the tables give its mean over the test cases, mean ± sd over seeds (95 % t-CI in robustness.json). "
              "Severity 0 is the clean test split; 1 is the top of each degradation's range "
              "(fuse4seg.data.augment.degradations). Generated by `python experiments/robustness.py`."), ""]
    lines += [f"- `{row}`: {note}" for row, note in agg["notes"].items()] + [""]
    for name in agg["degradations"]:
        lines += [f"## {name}", "", "| row | " + " | ".join(f"{s:.2f}" for s in sev) + " |", "|---" * (len(sev) + 1) + "|"]
        for row in agg["rows"]:
            cells = []
            for s in sev:
                entry = next(e for e in agg["table"] if e["row"] == row and e["degradation"] == name
                             and e["severity"] == s)
                d = entry["dice"]
                cells.append(f"{d['mean']:.3f} ± {d['sd']:.3f}" if d["n"] > 1 else f"{d['mean']:.3f}")
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    for ref, family in agg["families"].items():
        if not family:
            continue
        title = (f"## Against `{ref}`, clean and at severity {sev[-1]:.2f}\n\n"
                 "Δ: row minus reference, Dice per test case, on the same degraded images. Interval: hierarchical "
                 f"bootstrap ({agg['draws']} draws: cases, then each row's seeds). p: paired t over the "
                 f"{family[0]['cases']} test cases of the seed-averaged values; Holm over the whole table "
                 f"({len(family)} comparisons, one family); TOST margin ±{agg['margin']} Dice. Reading: better / "
                 "worse when Holm p < 0.05 and the 95 % interval excludes 0, level when TOST p < 0.05 and the 90 % "
                 "interval lies inside the margin, else undecided.")
        lines.append(stats.family_markdown([{**e, "row": f"{e['row']} · {e['condition']}"} for e in family], title)
                     .rstrip())
        lines.append("")
    stacked = agg.get("clean_stacked")
    if stacked:
        lines += [("Notes. The robustness records hold no stacked-volume Dice per case (the study's metric) under "
                       "degradation; on the clean split only, the training records give it (mean ± sd over seeds, "
                       "secondary, not tested): " + "; ".join(f"`{row}` {s['mean']:.3f} ± {s['sd']:.3f}"
                                                             for row, s in stacked.items()) + ".")]
    return "\n".join(lines) + "\n"


def plot(agg: dict[str, Any], out_dir: Path) -> list[Path]:
    """One PNG per degradation: Dice mean and Qabf against severity, mean over seeds with a +- sd band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name in agg["degradations"]:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
        for row in agg["rows"]:
            entries = sorted((e for e in agg["table"] if e["row"] == row and e["degradation"] == name),
                             key=lambda e: e["severity"])
            x = [e["severity"] for e in entries]
            for ax, key in zip(axes, ("dice", "qabf")):
                if any(e[key] is None for e in entries):
                    continue
                mean = np.array([e[key]["mean"] for e in entries])
                sd = np.nan_to_num(np.array([e[key]["sd"] for e in entries]))
                ax.plot(x, mean, marker="o", label=row)
                ax.fill_between(x, mean - sd, mean + sd, alpha=0.15)
        axes[0].set_title("Dice mean (test split)")
        axes[1].set_title("Qabf of the fused image vs clean sources")
        for ax in axes:
            ax.set_xlabel("severity")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{name}: mean ± sd over seeds {agg['seeds']}")
        path = out_dir / f"robustness_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Train and evaluate the missing seeds, then aggregate into experiments/results/."""
    args, spec, out = study.experiment_args(HERE / "robustness.toml", __doc__.splitlines()[0], argv)
    committed = args.results / "robustness_runs"
    if not args.report_only:
        benches = study.prepare_data(spec, out, out / "data_log.txt")
        for seed in range(spec["seeds"]):
            if (committed / f"seed-{seed}.json").is_file():
                continue
            runs = train_seed(spec, seed, benches, out, args.jobs)
            result = robustness_seed(spec, seed, runs, out, args.jobs)
            committed.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(result, committed / f"seed-{seed}.json")
            for name in spec["rows"]:  # the training records (clean test scores, validation curves)
                record = out / "results" / name / f"seed-{seed}.json"
                (committed / "training" / name).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(record, committed / "training" / name / record.name)
            print(f"seed {seed}: done", flush=True)
    records = {int(p.stem[5:]): json.loads(p.read_text(encoding="utf-8")) for p in sorted(committed.glob("seed-*.json"))}
    if not records:
        print("no finished seed to aggregate", file=sys.stderr)
        return 1
    agg = aggregate(records, spec)
    training = load_runs(committed / "training")
    if training:  # learning curves: validation Dice of every run, to show the training budget converged
        plot_curves(training, args.results / "robustness_curves")
        agg["clean_stacked"] = clean_stacked(training, agg["rows"])
    (args.results / "robustness.json").write_text(json.dumps(agg, indent=1) + "\n", encoding="utf-8")
    text = markdown(agg)
    (args.results / "robustness.md").write_text(text, encoding="utf-8")
    plot(agg, args.results)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
