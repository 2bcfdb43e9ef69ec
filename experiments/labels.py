"""Label efficiency with and without self-supervised multimodal pre-training (MICS).

    python experiments/labels.py                 # pre-train and train what is missing (2 jobs), aggregate
    python experiments/labels.py --report-only   # re-aggregate the committed records

On the study's phantom release and laplacian benchmark (20 train cases; experiments/labels.toml), for each
seed: ``fuse4seg pretrain`` on the train split's sources (no labels read), then for each task (segmentation
by feature-fusion, slice-level presence classification), each label fraction (5, 10, 25, 100 % of the train
cases, chosen by patient and seed; below 100 % the other cases train by mean-teacher consistency) and each
initialisation (none, ``--init PRE/encoder.pt``): ``train`` and ``evaluate`` on the test split. Records go to
experiments/results/labels_runs/.

Primary metric, for the headline, the differences and the tests alike: the records hold ONE number per run and
nothing per test case, so it is the run's test-split score: per-slice Dice ((WT + TC + ET) / 3, averaged over
the test slices) for segmentation, macro AUROC (TC and ET; WT is present in every stored slice) for
classification. Reported per (task, fraction, arm): mean +- sd (ddof 1) over seeds with the 95 % t-interval.
Against from-scratch at the same fraction, PAIRED BY SEED (the seed fixes the labelled cases and the
pre-trained encoder), the seeds being the only units (experiments/stats.py primitives; no hierarchical
bootstrap: there is no case level to resample, and a bootstrap over 3 seeds would understate the spread): the
mean paired difference with its 95 % t-interval over seeds, seeds up, the paired t-test over seeds, Holm over
the family (one per task's table: every arm at every fraction against scratch), TOST with a margin of 0.02
(Dice for segmentation, AUROC for classification: both on a 0-1 scale) and the reading (better / worse: Holm
p < 0.05; level: TOST p < 0.05; else undecided). Plot of the curves: experiments/results/labels.png; the
segmentation runs' validation curves: experiments/results/labels_curves/.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stats
import study
from study_report import interval, load_runs, plot_curves

#: The arms at each label fraction: from scratch (with the consistency loss below 100 %), from the pre-trained
#: encoder (likewise), and from scratch on the labelled cases alone (--consistency-weight 0; below 100 % only).
INITS = ("scratch", "pretrained", "labels-only")


def pretrain_one(seed: int, spec: dict[str, Any], bench: Path, out: Path) -> Path:
    """OUT/pretrain/seed-S/encoder.pt, pre-trained once per seed."""
    pre = out / "pretrain" / f"seed-{seed}"
    if not (pre / "encoder.pt").is_file():
        pre.parent.mkdir(parents=True, exist_ok=True)
        p = spec["pretrain"]
        study.fuse4seg("pretrain", "--benchmark", str(bench), "--out", str(pre), "--steps", str(p["steps"]),
                       "--batch-size", str(p["batch_size"]), "--width", str(p["width"]), "--depth", str(p["depth"]),
                       "--seed", str(seed), "--no-progress", "--overwrite", log=out / "pretrain_log.txt")
    return pre / "encoder.pt"


def name_of(task: str, fraction: float, init: str) -> str:
    """Row name, e.g. segment-f0.05-pretrained."""
    return f"{task}-f{fraction:g}-{init}"


def train_one(task: str, fraction: float, init: str, seed: int, spec: dict[str, Any], bench: Path, out: Path,
              committed: Path) -> Path:
    """Train and evaluate one (task, fraction, init, seed); writes committed/NAME/seed-S.json."""
    name = name_of(task, fraction, init)
    target = committed / name / f"seed-{seed}.json"
    if target.is_file():
        return target
    work = out / "runs" / name / f"seed-{seed}"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    row = {k: v for k, v in spec["tasks"][task].items() if k != "note"}
    options = {**spec["common"], **row, **({"label_fraction": fraction} if fraction < 1 else {})}
    if init == "pretrained":
        options["init"] = str(pretrain_one(seed, spec, bench, out))
    if init == "labels-only":
        options["consistency_weight"] = 0.0
    study.write_toml(work / "options.toml", options)
    run = work / "run"
    study.fuse4seg("train", "--config", str(work / "options.toml"), "--benchmark", str(bench), "--out", str(run),
                   "--seed", str(seed), "--overwrite", log=log)
    study.fuse4seg("evaluate", "--run", str(run), "--split", "test", log=log)
    metrics = json.loads((run / "eval" / "metrics.json").read_text(encoding="utf-8"))
    summary = json.loads((run / "train_summary.json").read_text(encoding="utf-8"))
    if task == "classify":
        table = metrics["classification"]
        score = {"auroc": table["macro"]["auroc"], "f1": table["macro"]["f1"], "accuracy": table["macro"]["accuracy"],
                 "regions": {r: table[r]["auroc"] for r in ("TC", "ET")}}
    else:
        per_slice = metrics["segmentation"]["per_slice"]
        dice = {r: per_slice[r]["dice"] for r in ("WT", "TC", "ET")}
        score = {"dice": float(np.mean(list(dice.values()))), "regions": dice}
    derived = json.loads((run / "config.json").read_text(encoding="utf-8"))["derived"]
    record = {"row": name, "task": task, "fraction": fraction, "init": init, "seed": seed, "options": options,
              "score": score, "train_s": summary["seconds"], "steps": summary["steps"],
              "labelled_cases": derived["labelled_cases"],
              "unlabelled_cases": len(derived["unlabelled_cases"]), "curve": study.read_curve(run)}
    study.write_record(target, record)
    return target


def metric_of(task: str) -> str:
    """The headline metric of a task's records."""
    return "auroc" if task == "classify" else "dice"


def seed_family(pairs: dict[str, tuple[dict[int, float], dict[int, float]]], margin: float = stats.MARGIN
                ) -> list[dict[str, Any]]:
    """One family: each row's (its {seed: score}, its reference's {seed: score}), paired by seed over the seeds both
    have: mean difference, its 95 % t-interval, seeds up, paired t p, Holm p over the family, TOST p, reading."""
    out = []
    for name, (values, ref) in pairs.items():
        seeds = sorted(set(values) & set(ref))
        diff = np.array([values[s] - ref[s] for s in seeds], dtype=float)
        out.append({"row": name, "delta": float(diff.mean()), "ci95": interval(diff.tolist())["ci95"],
                    "seeds_up": int((diff > 0).sum()), "seeds": len(seeds), "p": stats.paired_p(diff),
                    "tost_p": stats.tost_p(diff, margin), "margin": margin})
    stats.apply_holm(out)
    return out


def arm_label(fraction: float, init: str) -> str:
    """A compared arm's label in its task's family, e.g. '5% pretrained'."""
    return f"{fraction:.0%} {init}"


def load_arms(committed: Path, task: str, fraction: float) -> dict[str, dict[int, dict[str, Any]]]:
    """init -> {seed: record} of one (task, fraction)."""
    return {init: {r["seed"]: r for r in (json.loads(p.read_text()) for p in
                                          sorted((committed / name_of(task, fraction, init)).glob("seed-*.json")))}
            for init in INITS}


def aggregate(committed: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Per (task, fraction, arm): the metric over seeds; per task, the family of every other arm against scratch
    (same fraction), paired by seed."""
    out: dict[str, Any] = {"rows": [], "families": {}, "margin": stats.MARGIN, "unit": "seed",
                           "note": "the records hold one score per run and no per-case values"}
    for task in spec["tasks"]:
        metric = metric_of(task)
        pairs: dict[str, tuple[dict[int, float], dict[int, float]]] = {}
        for fraction in spec["fractions"]:
            runs = load_arms(committed, task, fraction)
            for init in INITS:
                if not runs[init]:
                    continue
                values = [r["score"][metric] for r in runs[init].values()]
                out["rows"].append({"task": task, "fraction": fraction, "init": init, "metric": metric,
                                    "seeds": len(values), "value": interval(values),
                                    "labelled_cases": next(iter(runs[init].values()))["labelled_cases"],
                                    "train_s": float(np.mean([r["train_s"] for r in runs[init].values()]))})
                if init != "scratch" and runs["scratch"]:
                    pairs[arm_label(fraction, init)] = ({s: r["score"][metric] for s, r in runs[init].items()},
                                                        {s: r["score"][metric] for s, r in runs["scratch"].items()})
        out["families"][task] = seed_family(pairs)  # one family per task: every arm at every fraction
        by_label = {e["row"]: e for e in out["families"][task]}
        for row in out["rows"]:
            if row["task"] == task and arm_label(row["fraction"], row["init"]) in by_label:
                row["vs_scratch"] = by_label[arm_label(row["fraction"], row["init"])]
    return out


def markdown(agg: dict[str, Any], spec: dict[str, Any]) -> str:
    """The rows table, then one comparison table per task."""
    lines = ["# Label efficiency with and without self-supervised pre-training", "",
             ("Test split. Primary metric (headline, differences and tests): the run's test score, per-slice Dice "
              "((WT + TC + ET) / 3) for segmentation, macro AUROC over TC and ET for classification (WT is in every "
              "stored slice); mean ± sd over seeds and 95 % t-interval. Labelled cases are drawn by patient and "
              "seed; below 100 % the other train cases train by mean-teacher consistency (labels-only: without it, "
              "`--consistency-weight 0`). Generated by `python experiments/labels.py`."),
             "", "| task | labels | labelled cases | init | seeds | metric | mean ± sd | 95 % CI | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in agg["rows"]:
        v = r["value"]
        ci = "" if math.isnan(v["sd"]) else f"[{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"
        lines.append(f"| {r['task']} | {r['fraction']:.0%} | {r['labelled_cases']} | {r['init']} | {r['seeds']} | "
                     f"{r['metric']} | {v['mean']:.3f} ± {v['sd']:.3f} | {ci} | {r['train_s']:.0f} |")
    for task, family in agg["families"].items():
        if not family:
            continue
        metric = "Dice" if metric_of(task) == "dice" else "AUROC"
        lines += ["", f"## {task}: each arm against scratch at the same label fraction", "",
                  (f"Δ: arm minus scratch, test {metric}, paired by seed. The records hold one score per run and no "
                   "per-case values, so the seeds are the only units: no hierarchical bootstrap over cases is "
                   "possible; the interval is the 95 % t-interval of the paired differences over seeds, p the paired "
                   f"t-test over seeds (df = seeds − 1). Holm over this table ({len(family)} comparisons, one "
                   f"family); TOST margin ±{agg['margin']} {metric}. Reading: better / worse when Holm p < 0.05 and the "
                   "95 % t-interval excludes 0, level when TOST p < 0.05, else undecided."), "",
                  "| arm | seeds | Δ | 95 % t-interval (paired by seed) | seeds up | p | p (Holm) | TOST p | reading |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for e in family:
            lines.append(f"| {e['row']} | {e['seeds']} | {e['delta']:+.3f} | [{e['ci95'][0]:+.3f}, {e['ci95'][1]:+.3f}] "
                         f"| {e['seeds_up']}/{e['seeds']} | {e['p']:.3g} | {e['p_holm']:.3g} | {e['tost_p']:.3g} | "
                         f"{e['reading']} |")
    return "\n".join(lines) + "\n"


def plot(agg: dict[str, Any], spec: dict[str, Any], path: Path) -> None:
    """One panel per task: the metric against the label fraction (log axis), scratch and pre-trained, +- sd."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(spec["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6))
    for ax, task in zip(np.atleast_1d(axes), tasks):
        for init in INITS:
            rows = [r for r in agg["rows"] if r["task"] == task and r["init"] == init]
            if rows:
                x = [100 * r["fraction"] for r in rows]
                ax.errorbar(x, [r["value"]["mean"] for r in rows], yerr=[r["value"]["sd"] for r in rows], marker="o",
                            capsize=3, label=init)
        ax.set_xscale("log")
        ax.set_xticks([5, 10, 25, 100], ["5", "10", "25", "100"])
        ax.set_xlabel("labelled train cases (%)")
        ax.set_ylabel("test Dice (mean of regions)" if task == "segment" else "test AUROC (TC, ET)")
        ax.set_title(task)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Pre-train and train the missing runs, then aggregate into experiments/results/."""
    args, spec, out = study.experiment_args(HERE / "labels.toml", __doc__.splitlines()[0], argv)
    committed = args.results / "labels_runs"
    if not args.report_only:
        bench = study.prepare_data(spec, out, out / "data_log.txt")["laplacian"]
        # the encoders first, one per seed
        study.run_all(pretrain_one, [(s, spec, bench, out) for s in range(spec["seeds"])], args.jobs)
        jobs = [(task, fraction, init, seed) for seed in range(spec["seeds"]) for task in spec["tasks"]
                for fraction in spec["fractions"] for init in INITS if fraction < 1 or init != "labels-only"]
        study.run_all(train_one, [(*job, spec, bench, out, committed) for job in jobs], args.jobs)
    agg = aggregate(committed, spec)
    (args.results / "labels.json").write_text(json.dumps(agg, indent=1) + "\n", encoding="utf-8")
    plot(agg, spec, args.results / "labels.png")
    plot_curves(load_runs(committed), args.results / "labels_curves")  # segmentation: val Dice during training
    text = markdown(agg, spec)
    (args.results / "labels.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
