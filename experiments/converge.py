"""The decisive comparisons of issue 23 at a converged segmenter budget: does the reading survive 1,500 steps?

    python experiments/converge.py --out /tmp/study     # the segmenters that are missing (2 jobs), then the tables
    python experiments/converge.py --report-only         # the tables from the committed records

At the study's budget (600 steps) most retrained segmenters fail the convergence rule (experiments/frontier.py:
the best validation Dice of the last 25 % of steps more than 0.005 above the best before). Here every image that a
conclusion rests on is segmented again from scratch at 1,500 steps (the study's options otherwise; validation every
50 steps), 3 seeds: the mean and Laplacian images (the target's references), the weighted means 0.9 / 1.0
T1ce (the frontier's front), the bi-level images of the most segmentable rows and of the single-channel ceiling
(each seed's own frozen image, OUT/runs/ROW/seed-S/bench-learned), and T1ce + FLAIR stacked (the stretch goal).
Statistics as everywhere
(experiments/stats.py): per-case Dice, Holm over each family, hierarchical bootstrap, TOST (margin 0.02); the
target test as experiments/upper.py states it, with the Qabf of each image.
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

import frontier
import stats
import study
from study_report import row_records

STEPS = 1500
SEEDS = (0, 1, 2)
#: setting -> where its frozen image is: ("rule", benchmark name) for a fixed image, ("learned", study row) for a
#: bi-level row's per-seed image, ("inputs", modalities) for stacked channels on the Laplacian benchmark.
SETTINGS: dict[str, tuple[str, str]] = {
    "mean": ("rule", "bench-mean"),
    "laplacian": ("rule", "bench-laplacian"),
    "weighted-t1ce1": ("rule", "bench-weighted-t1ce1"),
    "weighted-t1ce0.9": ("rule", "bench-weighted-t1ce0.9"),
    "bilevel-budget1p2": ("learned", "bilevel-budget1p2"),
    "bilevel-lambda16": ("learned", "bilevel-lambda16"),
    "dual": ("inputs", "t1ce,flair"),
    "bilevel-qabf-lambda1": ("learned", "bilevel-qabf-lambda1"),
    "ceiling-1ch-long": ("learned", "ceiling-1ch-long"),
}
REFERENCES = ("mean", "laplacian")


def train_one(setting: str, seed: int, out: Path, committed: Path) -> Path:
    """A segmenter from scratch at STEPS on the setting's image (or inputs); committed/SETTING/seed-S.json."""
    target = committed / setting / f"seed-{seed}.json"
    if target.is_file():
        return target
    kind, where = SETTINGS[setting]
    if kind == "learned":
        bench = out / "runs" / where / f"seed-{seed}" / "bench-learned"
        row = {"mode": "direct", "inputs": "fused", "benchmark": "image", "steps": STEPS}
    elif kind == "rule":
        bench = out / where
        row = {"mode": "direct", "inputs": "fused", "benchmark": "image", "steps": STEPS}
    else:
        bench = out / "bench-laplacian"
        row = {"mode": "direct", "inputs": where, "benchmark": "image", "steps": STEPS}
    if not (bench / "brats_fuse.h5").is_file():
        raise FileNotFoundError(f"{setting} seed {seed}: no frozen image at {bench} (run its study row first)")
    result = study.run_one(f"long-{setting}", row, seed, study.SPEC["common"], {"image": bench}, out)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result, target)
    return target


def qabf_of(setting: str, seeds: list[int]) -> float | None:
    """Mean Qabf of the setting's image on the test slices: the frontier's image quality for fixed images, the
    bi-level runs' own for learned ones, over the same ``seeds`` as the segmenters; None for stacked channels or
    when no record has it."""
    kind, where = SETTINGS[setting]
    if kind == "rule":
        quality = json.loads((HERE / "results" / "frontier_runs" / "image_quality.json").read_text(encoding="utf-8"))
        return quality.get(where.removeprefix("bench-"), {}).get("Qabf")
    if kind == "learned":
        runs = [r for r in row_records(HERE / "results" / "study_runs" / where) if r["seed"] in seeds]
        return float(np.mean([r["fusion"]["Qabf"] for r in runs])) if runs else None
    return None


def summarise(committed: Path) -> dict[str, Any]:
    """Per setting: segmentability over seeds, converged curves, Qabf; the families against mean and Laplacian;
    the target table."""
    rows, table = {}, []
    for setting in SETTINGS:
        runs = row_records(committed / setting)
        if not runs:
            continue
        rows[setting] = stats.case_matrix([stats.case_scores(r["case_dice"]) for r in runs])
        table.append({"setting": setting, "seeds": len(runs), "segmentability": rows[setting][1].mean(axis=1).tolist(),
                      "converged": sum(frontier.converged(r["curve"]) for r in runs),
                      "best_step": [r["best_step"] for r in runs], "train_s": [r["train_s"] for r in runs],
                      "qabf": qabf_of(setting, [r["seed"] for r in runs])})
    families = {ref: stats.compare_family(*stats.aligned({k: v for k, v in rows.items() if k != ref}, rows[ref]))
                for ref in REFERENCES if ref in rows}
    lap = next((t["qabf"] for t in table if t["setting"] == "laplacian"), None)
    target = []
    for t in table:
        if SETTINGS[t["setting"]][0] == "inputs" or t["setting"] in REFERENCES or lap is None:
            continue
        readings = {ref: next(e["reading"] for e in families[ref] if e["row"] == t["setting"]) for ref in families}
        target.append({"setting": t["setting"], "learned": SETTINGS[t["setting"]][0] == "learned", **readings,
                       "qabf": t["qabf"], "met": len(readings) == 2 and all(v == "better" for v in readings.values())
                       and t["qabf"] is not None and t["qabf"] >= lap})
    return {"steps": STEPS, "table": table, "families": families, "target": target, "laplacian_qabf": lap}


def markdown(summary: dict[str, Any]) -> str:
    """The settings table, the two families and the target table."""
    lines = [f"Segmenters from scratch at {summary['steps']} steps on each frozen image (mean ± sd over seeds):", "",
             "| setting | seeds | segmentability (Dice per case) | curves converged (rule) | best step | Qabf | train s |",
             "|---|---|---|---|---|---|---|"]
    for t in summary["table"]:
        q = "" if t["qabf"] is None else f"{t['qabf']:.3f}"
        lines.append(f"| {t['setting']} | {t['seeds']} | {stats.mean_sd(t['segmentability'])} | "
                     f"{t['converged']}/{t['seeds']} | "
                     f"{', '.join(map(str, t['best_step']))} | {q} | {np.mean(t['train_s']):.0f} |")
    for ref, entries in summary["families"].items():
        lines += ["", stats.family_markdown(entries, f"Against {ref} at {summary['steps']} steps (Holm over "
                                                     f"{len(entries)}):").rstrip()]
    lap = summary["laplacian_qabf"]
    if lap is None:
        return "\n".join(lines) + "\n"
    lines += ["", f"The target at {summary['steps']} steps (better than both, Holm p < 0.05; Qabf >= {lap:.3f}):", "",
              "| setting | image | vs mean | vs laplacian | Qabf | target met |", "|---|---|---|---|---|---|"]
    for t in summary["target"]:
        q = "" if t["qabf"] is None else f"{t['qabf']:.3f}"
        lines.append(f"| {t['setting']} | {'learned' if t['learned'] else 'a fixed rule'} | {t.get('mean', '')} | "
                     f"{t.get('laplacian', '')} | {q} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Train what is missing, then write experiments/results/converge.{md,json}."""
    args, _, out = study.experiment_args(HERE / "study.toml", __doc__.splitlines()[0], argv)
    committed = args.results / "converge_runs"
    failures = []
    if not args.report_only:
        jobs = [(s, seed, out, committed) for s in SETTINGS for seed in SEEDS]
        failures = study.run_grid(train_one, jobs, args.jobs, lambda job: f"{job[0]} seed {job[1]}")
    summary = summarise(committed)
    return study.finish_report(args.results, "converge", summary, markdown(summary), failures)


if __name__ == "__main__":
    sys.exit(main())
