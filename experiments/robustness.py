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

Aggregate (experiments/results/robustness.{md,json}, robustness_<degradation>.png, robustness_curves/):
per row, degradation and severity, Dice mean (per slice, mean of WT/TC/ET) and Qabf over seeds as mean
+- sd and 95 % t-CI; on the clean split and at the worst severity, paired against the reference row per
test case (Dice averaged over seeds), the mean difference and the Wilcoxon signed-rank p-value; the
validation curves of every training run.
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

import study
from study_report import interval, load_runs, plot_curves

COMMITTED = HERE / "results" / "robustness_runs"


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


def aggregate(records: dict[int, dict[str, Any]], spec: dict[str, Any]) -> dict[str, Any]:
    """Mean +- sd and CI per (row, degradation, severity); paired tests at the worst severity."""
    from scipy import stats

    grouped = rows_of(records)
    names = list(spec["rows"])
    degradations = next(iter(records.values()))["degradations"]
    severities = sorted({k[2] for k in grouped})
    table = []
    for (row, name, level), entries in sorted(grouped.items(), key=lambda kv: (names.index(kv[0][0]), kv[0][1:])):
        qabf = [e["Qabf"] for e in entries if e.get("Qabf") is not None]
        table.append({"row": row, "degradation": name, "severity": level,
                      "dice": interval([e["dice_mean"] for e in entries]),
                      "qabf": interval(qabf) if qabf else None})
    paired = []
    reference, worst = spec["reference"], severities[-1]
    for name, level in [(degradations[0], severities[0])] + [(d, worst) for d in degradations]:
        ref = grouped[(reference, name, level)]
        ref_cases = {c: np.mean([e["case_dice"][c] for e in ref]) for c in ref[0]["case_dice"]}
        for row in names:
            if row == reference:
                continue
            mine = grouped[(row, name, level)]
            cases = {c: np.mean([e["case_dice"][c] for e in mine]) for c in mine[0]["case_dice"]}
            diff = np.array([cases[c] - ref_cases[c] for c in sorted(ref_cases)])
            p = float(stats.wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
            paired.append({"row": row, "degradation": name if level > 0 else "none (clean)", "severity": level,
                           "cases": len(diff),
                           "mean_difference": float(diff.mean()), "wilcoxon_p": p})
    return {"seeds": sorted(records), "rows": names, "degradations": degradations, "severities": severities,
            "reference": reference, "table": table, "paired": paired,
            "notes": {row: spec["rows"][row].get("note", "") for row in names}}


def markdown(agg: dict[str, Any]) -> str:
    """The tables: Dice mean +- sd per row and severity for each degradation, then the paired tests."""
    sev = agg["severities"]
    lines = ["# Robustness: Dice mean (per slice, mean of WT/TC/ET) as degradations grow", "",
             (f"Seeds {agg['seeds']}; mean +- sd over seeds (95 % t-CI in robustness.json). Severity 0 is the "
              "clean test split; 1 is the top of each degradation's range (fuse4seg.data.augment.degradations). Generated "
              "by `python experiments/robustness.py`."), ""]
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
    lines += [(f"## Paired against `{agg['reference']}`, clean and at severity {sev[-1]:.2f} (per test case, Dice "
               "averaged over seeds; Wilcoxon signed-rank)"), "",
              "| row | degradation | severity | cases | mean difference | p |", "|---|---|---|---|---|---|"]
    for p in agg["paired"]:
        lines.append(f"| {p['row']} | {p['degradation']} | {p['severity']:.2f} | {p['cases']} | "
                     f"{p['mean_difference']:+.3f} | {p['wilcoxon_p']:.3g} |")
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
    (args.results / "robustness.json").write_text(json.dumps(agg, indent=1) + "\n", encoding="utf-8")
    text = markdown(agg)
    (args.results / "robustness.md").write_text(text, encoding="utf-8")
    plot(agg, args.results)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
