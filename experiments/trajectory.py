"""Segmentability along training (issue 23's diagnosis): how segmentable is the fused image at each outer step?

    python experiments/trajectory.py --out /tmp/study          # runs what is missing (2 jobs), then the table
    python experiments/trajectory.py --report-only              # the table and plot from the committed records

For each row below (its options from experiments/study.toml) and each seed, one training run is stopped at each
probe step (``fuse4seg train --steps S``, then ``--resume --steps S'``: a resumed run continues exactly, so the
probes see the trajectory of one uninterrupted run) and the fusion net's weights at that step (RUN/last.pt) are
frozen: its image is stored as a benchmark of the study's slices and split, and a segmenter is trained on it from
scratch at the retrain budget (600 steps, the direct rows' budget) and scored on the test split. The probe is the
full retrain itself, not a cheaper stand-in. Two-stage's fusion net learns in stage 1 only, on the fusion
loss alone: its probe at S is a two-stage run of 2 S steps whose first S are stage 1 (S = 300 is the row
itself). Step 1 is the image after one outer step, which is all but the
fusion net's starting image (its residual head starts at the mean of the inputs).

The record also keeps, every 10 steps, the upper objective's parts from the run's TensorBoard log: the fusion
loss, the held-out segmentation loss and ``hypergrad/seg_fraction`` = |lambda g_seg| / |g_fuse|, the share of
the segmentation term in the fusion net's update (bi-level rows).

Primary metric: segmentability = test Dice per case (the case's slices stacked, mean of WT/TC/ET) of the
retrained segmenter, mean +- sd over seeds of its mean over cases. Records: experiments/results/trajectory_runs/.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stats
import study
from study_report import row_records

#: Row of experiments/study.toml -> the outer steps probed (the last is the row's own budget).
ROWS: dict[str, tuple[int, ...]] = {
    "bilevel-lambda1": (1, 100, 400, 800),
    "bilevel-lambda16": (1, 100, 400, 800),
    "joint": (1, 100, 300, 600),
    "two-stage": (1, 100, 300),  # fusion-net steps of stage 1 (300 = the row: 600 steps, half of them stage 1)
}
SEEDS = (0, 1, 2)
#: TensorBoard scalars kept in the record (every SAMPLE_EVERY steps).
SCALARS = ("loss/fusion", "loss/seg_holdout", "loss/seg", "hypergrad/seg_fraction", "hypergrad/lambda_seg")
SAMPLE_EVERY = 10
REFERENCES = ("retrain-mean", "retrain-laplacian")


def read_scalars(run: Path) -> dict[str, list[list[float]]]:
    """{tag: [[step, value], ...]} of :data:`SCALARS` in RUN/tb, every :data:`SAMPLE_EVERY` steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags().get("scalars", []))
    return {tag: [[int(e.step), float(e.value)] for e in acc.Scalars(tag) if e.step % SAMPLE_EVERY == 0]
            for tag in SCALARS if tag in tags}


def run_one(name: str, seed: int, out: Path, committed: Path) -> Path:
    """Train one (row, seed) through its probe steps and retrain on each snapshot; writes committed/NAME/seed-S.json."""
    target = committed / name / f"seed-{seed}.json"
    if target.is_file():
        return target
    row = study.SPEC["rows"][name]
    options = study.row_options(row)
    work = out / "trajectory" / name / f"seed-{seed}"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    log.write_text("", encoding="utf-8")
    study.write_toml(work / "options.toml", options)
    run, bench = work / "run", out / f"bench-{row.get('benchmark', 'laplacian')}"
    started = time.perf_counter()
    for i, step in enumerate(ROWS[name]):
        if row["mode"] == "two-stage":  # the fusion net learns in stage 1 only: a run of 2 S steps, stage 1 = S
            where, args = work / f"run-{step}", ["--steps", str(2 * step), "--fusion-steps", str(step), "--overwrite"]
        else:
            where, args = run, ["--steps", str(step), "--resume" if i else "--overwrite"]
        study.fuse4seg("train", "--config", str(work / "options.toml"), "--benchmark", str(bench), "--out", str(where),
                       "--seed", str(seed), *args, log=log)
        shutil.copyfile(where / "last.pt", work / f"step-{step}.pt")
        run = where
    train_s = time.perf_counter() - started
    points = []
    for step in ROWS[name]:
        extra = row["retrain"] if isinstance(row.get("retrain"), dict) else {}
        scored = study.retrain(work / f"step-{step}.pt", options, extra, seed, work, out, log, tag=f"-{step}")
        points.append({"step": step, **{k: scored[k] for k in ("dice", "case_dice", "fusion_stored", "curve")}})
    record = {"row": name, "seed": seed, "options": options, "points": points, "scalars": read_scalars(run),
              "train_s": round(train_s, 1), "wall_s": round(time.perf_counter() - started, 1)}
    study.write_record(target, record)
    return target


def mean_between(series: list[list[float]], lo: int, hi: int) -> float:
    """Mean of a [[step, value], ...] series over lo < step <= hi (nan when none)."""
    values = [v for s, v in series if lo < s <= hi]
    return float(np.mean(values)) if values else float("nan")


def summarise(committed: Path) -> dict[str, Any]:
    """Per row and probe step: segmentability and Qabf (mean, sd over seeds), the seg share of the update."""
    table = []
    for name, steps in ROWS.items():
        runs = row_records(committed / name)
        if not runs:
            continue
        for k, step in enumerate(steps):
            seg = [stats.case_mean(r["points"][k]["case_dice"]) for r in runs]
            qabf = [r["points"][k]["fusion_stored"]["Qabf"] for r in runs if r["points"][k].get("fusion_stored")]
            lo = steps[k - 1] if k else 0
            share = [mean_between(r["scalars"].get("hypergrad/seg_fraction", []), lo, step) for r in runs]
            table.append({"row": name, "step": step, "seeds": len(runs), "segmentability": seg, "qabf": qabf,
                          "seg_share": share})
    refs = {}
    for name in REFERENCES:
        runs = row_records(HERE / "results" / "study_runs" / name)
        if runs:
            refs[name] = [stats.case_mean(r["case_dice"]) for r in runs]
    return {"table": table, "references": refs, "families": away_from_start(committed)}


def away_from_start(committed: Path) -> dict[str, list[dict[str, Any]]]:
    """Per row: segmentability at each later probe against the same runs' step-1 image (per case, seeds and cases
    resampled; Holm over the row's probes)."""
    families = {}
    for name, steps in ROWS.items():
        runs = row_records(committed / name)
        if len(runs) < 2:
            continue
        probe = {step: stats.case_matrix([stats.case_scores(r["points"][k]["case_dice"]) for r in runs])
                 for k, step in enumerate(steps)}
        later = {f"step {step}": probe[step] for step in steps[1:]}
        families[name] = stats.compare_family(*stats.aligned(later, probe[steps[0]]))
    return families


def markdown(summary: dict[str, Any]) -> str:
    """The table: one line per (row, probe step)."""
    head = ("| row | outer step | seeds | segmentability (retrained Dice per case) | Qabf | "
            "seg share of the update (mean since the previous probe) |")
    lines = [head, "|---|---|---|---|---|---|"]
    for r in summary["table"]:
        lines.append(f"| {r['row']} | {r['step']} | {r['seeds']} | {stats.mean_sd(r['segmentability'])} | "
                     f"{stats.mean_sd(r['qabf'])} | "
                     f"{stats.mean_sd(r['seg_share'])} |")
    for name, values in summary["references"].items():
        lines.append(f"| {name} (fixed image) |  | {len(values)} | {stats.mean_sd(values)} |  |  |")
    for name, entries in summary.get("families", {}).items():
        lines += ["", stats.family_markdown(entries, f"{name}: segmentability at each probe against the same runs' "
                                                    f"step-1 image (Holm over {len(entries)}):").rstrip()]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    """Segmentability against outer step, one line per row (mean, sd bars), the fixed images as bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name in ROWS:
        rows = [r for r in summary["table"] if r["row"] == name]
        if rows:
            x = [r["step"] for r in rows]
            y = [np.mean(r["segmentability"]) for r in rows]
            e = [np.std(r["segmentability"], ddof=1) if len(r["segmentability"]) > 1 else 0 for r in rows]
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=name)
    for (name, values), style in zip(summary["references"].items(), ("--", ":")):
        ax.axhline(np.mean(values), color="grey", linestyle=style, label=f"{name} (fixed)")
    ax.set_xlabel("outer step at which the fusion net is frozen")
    ax.set_ylabel("segmentability (retrained test Dice per case)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run what is missing, then write experiments/results/trajectory.{md,json,png}."""
    args, _, out = study.experiment_args(HERE / "study.toml", __doc__.splitlines()[0], argv)
    committed = args.results / "trajectory_runs"
    failures = []
    if not args.report_only:
        study.prepare_data(study.SPEC, out, out / "data_log.txt")
        jobs = [(name, seed, out, committed) for name in ROWS for seed in SEEDS]
        failures = study.run_grid(run_one, jobs, args.jobs, lambda job: f"{job[0]} seed {job[1]}")
    summary = summarise(committed)
    plot(summary, args.results / "trajectory.png")
    return study.finish_report(args.results, "trajectory", summary, markdown(summary), failures)


if __name__ == "__main__":
    sys.exit(main())
