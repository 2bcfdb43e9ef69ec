"""Label efficiency with and without self-supervised multimodal pre-training (MICS).

    python experiments/labels.py                 # pre-train and train what is missing (2 jobs), aggregate
    python experiments/labels.py --report-only   # re-aggregate the committed records

On the study's phantom release and laplacian benchmark (20 train cases; experiments/labels.toml), for each
seed: ``fuse4seg pretrain`` on the train split's sources (no labels read), then for each task (segmentation
by feature-fusion, slice-level presence classification), each label fraction (5, 10, 25, 100 % of the train
cases, chosen by patient and seed; below 100 % the other cases train by mean-teacher consistency) and each
initialisation (none, ``--init PRE/encoder.pt``): ``train`` and ``evaluate`` on the test split. Reported per
(task, fraction, init): mean +- sd over seeds with the 95 % t-interval of per-slice Dice ((WT + TC + ET) / 3)
or of macro AUROC (TC and ET; WT is present in every stored slice), the paired difference pre-trained minus
from-scratch over seeds, and a plot of both curves (experiments/results/labels.png); the segmentation runs'
validation curves go to experiments/results/labels_curves/. Records go to experiments/results/labels_runs/.
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
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return target


def metric_of(task: str) -> str:
    """The headline metric of a task's records."""
    return "auroc" if task == "classify" else "dice"


def aggregate(committed: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Per (task, fraction, arm): the metric over seeds and, for the other arms, their difference from scratch paired
    by seed."""
    out: dict[str, Any] = {"rows": []}
    for task in spec["tasks"]:
        for fraction in spec["fractions"]:
            runs = {init: {r["seed"]: r for r in (json.loads(p.read_text()) for p in
                                                   sorted((committed / name_of(task, fraction, init)).glob("seed-*.json")))}
                    for init in INITS}
            metric = metric_of(task)
            for init in INITS:
                if not runs[init]:
                    continue
                values = [r["score"][metric] for r in runs[init].values()]
                row = {"task": task, "fraction": fraction, "init": init, "metric": metric, "seeds": len(values),
                       "value": interval(values), "labelled_cases": next(iter(runs[init].values()))["labelled_cases"],
                       "train_s": float(np.mean([r["train_s"] for r in runs[init].values()]))}
                common = sorted(set(runs["scratch"]) & set(runs[init])) if init != "scratch" else []
                if common:
                    row["paired_difference"] = interval([runs[init][s]["score"][metric]
                                                         - runs["scratch"][s]["score"][metric] for s in common])
                out["rows"].append(row)
    return out


def markdown(agg: dict[str, Any], spec: dict[str, Any]) -> str:
    """The table."""
    lines = ["# Label efficiency with and without self-supervised pre-training", "",
             ("Test split; mean ± sd over seeds and 95 % t-interval of per-slice Dice ((WT + TC + ET) / 3) for "
              "segmentation, of macro AUROC over TC and ET for classification (WT is in every stored slice). Labelled "
              "cases are drawn by patient and seed; below 100 % the other train cases train by mean-teacher "
              "consistency (labels-only: without it, `--consistency-weight 0`). Δ: the arm minus scratch, paired by seed. Generated by `python experiments/labels.py`."),
             "", ("| task | labels | labelled cases | init | seeds | metric | mean ± sd | 95 % CI | Δ vs scratch "
                 "| train s |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for r in agg["rows"]:
        v, d = r["value"], r.get("paired_difference")
        delta = f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d else ""
        ci = "" if math.isnan(v["sd"]) else f"[{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"
        lines.append(f"| {r['task']} | {r['fraction']:.0%} | {r['labelled_cases']} | {r['init']} | {r['seeds']} | "
                     f"{r['metric']} | {v['mean']:.3f} ± {v['sd']:.3f} | {ci} | {delta} | {r['train_s']:.0f} |")
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
