"""The upper objective of bi-level fusion and issue 23's target: is some bi-level fused image more segmentable than
the mean-of-inputs and the Laplacian images while its Qabf is at least the Laplacian rule's?

    python experiments/study.py --out /tmp/study --only bilevel-lambda0p25 bilevel-lambda1 bilevel-lambda4 \\
        bilevel-lambda16 bilevel-lambda64 bilevel-edges-lambda4 bilevel-edges-lambda16 bilevel-budget1p2 \\
        bilevel-budget1p0 bilevel-qabf-lambda1 bilevel-qabf-lambda4 retrain-mean retrain-laplacian direct-dual
    python experiments/upper.py                                              # the tables, from the committed records

Rows: every bi-level row of experiments/study.toml whose fused image was frozen and retrained (``retrain = true``):
lambda_seg = 0.25 ... 64 with the full fusion loss; lambda 4 and 16 with its edge terms only (intensity weight 0);
the constrained upper level (--fusion-budget 1.2 and 1.0); and 1 - Qabf + SSIM as the fusion loss (lambda 1, 4). References:
a segmenter trained the same way (600 steps) on the mean of T1ce and FLAIR, on their Laplacian-pyramid fusion,
and (the stretch goal) on T1ce + FLAIR stacked as two channels.

Primary metric: segmentability = test Dice per CASE of the segmenter retrained on the frozen image. Statistics
(experiments/stats.py): one family per reference, Holm over its rows; hierarchical bootstrap intervals; paired t
over the 8 test cases; TOST with a 0.02 margin. Fusion quality: the run's Qabf on the test slices (mean over
seeds), against the Laplacian image's Qabf on the same slices (experiments/results/frontier_runs/image_quality.json).

The target holds for a row when it is "better" than both the mean and the Laplacian references and its mean Qabf
is at least the Laplacian image's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stats
from study_report import row_records

REFERENCES = {"retrain-mean": "mean of T1ce and FLAIR", "retrain-laplacian": "Laplacian fusion",
              "direct-dual": "T1ce + FLAIR stacked (stretch goal)"}
TARGET_REFERENCES = ("retrain-mean", "retrain-laplacian")
#: The fixed image each reference segments (its Qabf is in image_quality.json under that name).
RULE_OF = {"retrain-mean": "mean", "retrain-laplacian": "laplacian"}


def retrained_rows(spec: dict[str, Any]) -> list[str]:
    """The bi-level rows of the study spec whose image is retrained, in the spec's order."""
    return [name for name, row in spec["rows"].items() if row.get("mode") == "bilevel" and row.get("retrain")]


def matrix(runs: list[dict[str, Any]], retrained: bool) -> tuple[list[str], np.ndarray]:
    """(cases, (seeds, cases) Dice per case) of the retrained segmenter, or of the run's own."""
    return stats.case_matrix([stats.case_scores((r["retrained"] if retrained else r)["case_dice"]) for r in runs])


def summarise(records: Path, spec: dict[str, Any], quality: dict[str, Any]) -> dict[str, Any]:
    """Per row: seeds, segmentability, Qabf, own Dice; the families against each reference; the target."""
    rows, table = {}, []
    missing = []
    for name in retrained_rows(spec):
        runs = [r for r in row_records(records / name) if "retrained" in r]
        if not runs:
            missing.append(name)
            continue
        cases, m = matrix(runs, retrained=True)
        rows[name] = (cases, m)
        table.append({"row": name, "note": spec["rows"][name].get("note", ""), "seeds": len(runs),
                      "segmentability": m.mean(axis=1).tolist(), "qabf": [r["fusion"]["Qabf"] for r in runs],
                      "ssim": [r["fusion"]["SSIM"] for r in runs],
                      "own_dice": matrix(runs, retrained=False)[1].mean(axis=1).tolist(),
                      "train_s": [r["train_s"] for r in runs]})
    refs = {}
    for name, label in REFERENCES.items():
        runs = row_records(records / name)
        if runs:
            refs[name] = matrix(runs, retrained=False)
            table.append({"row": name, "label": label, "seeds": len(runs),
                          "segmentability": refs[name][1].mean(axis=1).tolist(),
                          "qabf": [quality[RULE_OF[name]]["Qabf"]] if name in RULE_OF else [],
                          "train_s": [r["train_s"] for r in runs]})
    families = {ref: stats.compare_family(*stats.aligned(rows, pair)) for ref, pair in refs.items()} if rows else {}
    lap_qabf = quality["laplacian"]["Qabf"]
    target = []
    for r in table:
        if r["row"] not in rows:
            continue
        readings = {ref: next(e["reading"] for e in families[ref] if e["row"] == r["row"])
                    for ref in TARGET_REFERENCES if ref in families}
        qabf = float(np.mean(r["qabf"]))
        target.append({"row": r["row"], **{f"vs {ref}": v for ref, v in readings.items()}, "qabf": qabf,
                       "qabf_at_least_laplacian": qabf >= lap_qabf,
                       "met": all(v == "better" for v in readings.values()) and len(readings) == 2
                       and qabf >= lap_qabf})
    return {"rows": table, "families": families, "target": target, "laplacian_qabf": lap_qabf, "not_run": missing,
            "margin": stats.MARGIN, "draws": stats.DRAWS}


def markdown(summary: dict[str, Any]) -> str:
    """The rows table, one comparison table per reference, and the target table."""
    header = ("| row | seeds | segmentability (retrained Dice per case) | Qabf | SSIM (sum) | bi-level's own Dice per "
              "case | train s |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['row']} | {r['seeds']} | {stats.mean_sd(r['segmentability'])} | {stats.mean_sd(r['qabf'])} | "
                     f"{stats.mean_sd(r.get('ssim', []))} | {stats.mean_sd(r.get('own_dice', []))} | "
                     f"{np.mean(r['train_s']):.0f} |")
    for ref, entries in summary["families"].items():
        title = (f"Against {ref} ({REFERENCES[ref]}): Δ segmentability, paired t over cases with Holm over "
                 f"{len(entries)} rows, TOST margin {summary['margin']}")
        lines += ["", stats.family_markdown(entries, title).rstrip()]
    lines += ["", (f"The target (better than both references, Holm p < 0.05, and mean Qabf >= the Laplacian "
              f"image's {summary['laplacian_qabf']:.3f}):"), "",
              "| row | vs retrain-mean | vs retrain-laplacian | Qabf | Qabf >= Laplacian | target met |",
              "|---|---|---|---|---|---|"]
    for t in summary["target"]:
        lines.append(f"| {t['row']} | {t.get('vs retrain-mean', '')} | {t.get('vs retrain-laplacian', '')} | "
                     f"{t['qabf']:.3f} | {'yes' if t['qabf_at_least_laplacian'] else 'no'} | "
                     f"{'yes' if t['met'] else 'no'} |")
    if summary["not_run"]:
        lines += ["", f"Rows of the spec without records (not in the families): {', '.join(summary['not_run'])}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Aggregate the records, print and write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=HERE / "study.toml")
    parser.add_argument("--records", type=Path, default=HERE / "results" / "study_runs")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    spec = tomllib.loads(args.spec.read_text(encoding="utf-8"))
    quality = json.loads((args.results / "frontier_runs" / "image_quality.json").read_text(encoding="utf-8"))
    summary = summarise(args.records, spec, quality)
    text = markdown(summary)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "upper.md").write_text(text, encoding="utf-8")
    (args.results / "upper.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
