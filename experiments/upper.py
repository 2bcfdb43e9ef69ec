"""The upper objective of bi-level fusion (issue 23's diagnosis): does a larger segmentation weight make the fused
image more segmentable, and what does it cost in fusion quality?

    python experiments/study.py --only bilevel-lambda0p25 bilevel-lambda1 bilevel-lambda4 bilevel-lambda16 \\
        bilevel-lambda64 retrain-mean retrain-laplacian          # the runs (resumable; ~6 min per bi-level run)
    python experiments/upper.py                                   # this table, from the committed records

Rows: bi-level (unrolled, K = 1, T1ce + FLAIR) at lambda_seg = 0.25 ... 64, each fused image frozen and a
segmenter retrained on it from scratch (600 steps, the direct rows' budget); and the two references, a
segmenter trained the same way on the mean of T1ce and FLAIR and on their Laplacian-pyramid fusion.

Primary metric: segmentability = test Dice per CASE (the case's slices stacked, mean of WT/TC/ET) of the
segmenter retrained on the frozen image. Fusion quality: Qabf of the fused image on the test slices.
Statistics, for each row against each reference (one family per reference, Holm-corrected):
- the difference of means with a hierarchical bootstrap 95 % interval (cases resampled, then each row's
  seeds resampled within each case draw; 10,000 draws);
- a paired t-test over the test cases of the seed-averaged per-case Dice (with 8 cases a rank test cannot
  reach p < 0.05 after Holm over 5 rows: its smallest p is 1/128);
- TOST equivalence with a margin of 0.02 Dice, before any row is called level with a reference.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

HERE = Path(__file__).resolve().parent
REGIONS = ("WT", "TC", "ET")
LAMBDAS = {"bilevel-lambda0p25": 0.25, "bilevel-lambda1": 1.0, "bilevel-lambda4": 4.0, "bilevel-lambda16": 16.0,
           "bilevel-lambda64": 64.0}
REFERENCES = {"retrain-mean": "mean of T1ce and FLAIR", "retrain-laplacian": "Laplacian fusion"}
MARGIN = 0.02
DRAWS = 10_000


def load(results: Path, row: str) -> list[dict[str, Any]]:
    """The finished runs of ``row`` (seed order) from RESULTS/ROW/seed-S.json."""
    paths = sorted((results / row).glob("seed-*.json"), key=lambda p: int(p.stem[5:]))
    return [json.loads(p.read_text(encoding="utf-8")) for p in paths]


def case_matrix(runs: list[dict[str, Any]], retrained: bool) -> tuple[list[str], np.ndarray]:
    """(case ids, (seeds, cases) Dice mean of WT/TC/ET per case) of the segmenter (retrained or the run's own)."""
    scored = [r["retrained"] if retrained else r for r in runs]
    cases = sorted(scored[0]["case_dice"])
    return cases, np.array([[np.mean([s["case_dice"][c][k] for k in REGIONS]) for c in cases] for s in scored])


def hierarchical_bootstrap(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> list[float]:
    """95 % interval of mean(a) - mean(b) for (seeds, cases) matrices sharing their cases: cases resampled, then
    each matrix's seeds resampled, ``DRAWS`` times."""
    n_cases = a.shape[1]
    diffs = np.empty(DRAWS)
    for i in range(DRAWS):
        cases = rng.integers(0, n_cases, n_cases)
        sa, sb = rng.integers(0, a.shape[0], a.shape[0]), rng.integers(0, b.shape[0], b.shape[0])
        diffs[i] = a[np.ix_(sa, cases)].mean() - b[np.ix_(sb, cases)].mean()
    return [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]


def tost_p(diff: np.ndarray, margin: float) -> float:
    """p of the two one-sided paired t-tests that the mean of ``diff`` lies within (-margin, margin)."""
    n, mean, se = len(diff), float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(len(diff)))
    if se == 0:
        return 0.0 if abs(mean) < margin else 1.0
    return float(max(stats.t.sf((mean + margin) / se, n - 1), stats.t.cdf((mean - margin) / se, n - 1)))


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order."""
    order = np.argsort(pvalues)
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def compare(rows: dict[str, np.ndarray], ref: np.ndarray, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Each row against the reference: difference, bootstrap interval, cases up, t-test p (Holm), TOST p."""
    out = []
    for name, m in rows.items():
        diff = m.mean(axis=0) - ref.mean(axis=0)
        p = float(stats.ttest_rel(m.mean(axis=0), ref.mean(axis=0)).pvalue) if np.any(diff) else 1.0
        out.append({"row": name, "delta": float(m.mean() - ref.mean()), "ci95": hierarchical_bootstrap(m, ref, rng),
                    "cases_up": int((diff > 0).sum()), "cases": len(diff), "p": p, "tost_p": tost_p(diff, MARGIN)})
    for entry, adjusted in zip(out, holm([e["p"] for e in out]), strict=True):
        entry["p_holm"] = adjusted
    return out


def reading(entry: dict[str, Any]) -> str:
    """better / worse (Holm p < 0.05), level (TOST p < 0.05) or undecided."""
    if entry["p_holm"] < 0.05:
        return "better" if entry["delta"] > 0 else "worse"
    return "level" if entry["tost_p"] < 0.05 else "undecided"


def summarise(results: Path) -> dict[str, Any]:
    """Per row: seeds, segmentability (mean +- sd over seeds of the per-case mean), Qabf; the comparisons."""
    rng = np.random.default_rng(0)
    rows, table = {}, []
    for name, lam in LAMBDAS.items():
        runs = load(results, name)
        if not runs:
            continue
        _, m = case_matrix(runs, retrained=True)
        rows[name] = m
        per_seed = m.mean(axis=1)
        qabf = [r["fusion"]["Qabf"] for r in runs]
        own = case_matrix(runs, retrained=False)[1].mean(axis=1)
        table.append({"row": name, "lambda": lam, "seeds": len(runs), "segmentability": per_seed.tolist(),
                      "qabf": qabf, "own_dice": own.tolist(), "train_s": [r["train_s"] for r in runs]})
    refs = {}
    for name, label in REFERENCES.items():
        runs = load(results, name)
        if runs:
            _, refs[name] = case_matrix(runs, retrained=False)
            stored = [r.get("fusion_stored", {}).get("Qabf") for r in runs if r.get("fusion_stored")]
            table.append({"row": name, "label": label, "seeds": len(runs),
                          "segmentability": refs[name].mean(axis=1).tolist(), "qabf": stored[:1],
                          "train_s": [r["train_s"] for r in runs]})
    families = {ref: compare(rows, m, rng) for ref, m in refs.items()} if rows else {}
    return {"rows": table, "families": families, "margin": MARGIN, "draws": DRAWS}


def _pm(values: list[float]) -> str:
    """mean ± sd (sd only with two or more values)."""
    if not values:
        return ""
    return f"{np.mean(values):.3f}" + (f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else "")


def markdown(summary: dict[str, Any]) -> str:
    """The rows table and one comparison table per reference."""
    header = "| row | seeds | segmentability (retrained Dice per case) | Qabf | bi-level's own Dice per case | train s |"
    lines = [header, "|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['row']} | {r['seeds']} | {_pm(r['segmentability'])} | {_pm(r['qabf'])} | "
                     f"{_pm(r.get('own_dice', []))} | {_pm(r['train_s'])} |")
    for ref, entries in summary["families"].items():
        title = (f"Against {ref} ({REFERENCES[ref]}): Δ segmentability, hierarchical bootstrap 95 % interval, "
                 f"paired t over cases (Holm over {len(entries)} rows), TOST (margin {MARGIN})")
        lines += ["", title, "",
                  "| row | Δ | 95 % interval | cases up | p | p (Holm) | TOST p | reading |", "|---|---|---|---|---|---|---|---|"]
        for e in entries:
            lines.append(f"| {e['row']} | {e['delta']:+.3f} | [{e['ci95'][0]:+.3f}, {e['ci95'][1]:+.3f}] | "
                         f"{e['cases_up']}/{e['cases']} | {e['p']:.3g} | {e['p_holm']:.3g} | {e['tost_p']:.3g} | "
                         f"{reading(e)} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    """The frontier: Qabf (x) against segmentability (y), one point per seed, means with sd bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in summary["rows"]:
        if "lambda" in r:
            ax.scatter(r["qabf"], r["segmentability"], s=14, alpha=0.5)
            ax.errorbar(np.mean(r["qabf"]), np.mean(r["segmentability"]), xerr=np.std(r["qabf"], ddof=1),
                        yerr=np.std(r["segmentability"], ddof=1), fmt="o", capsize=3,
                        label=f"bi-level, lambda {r['lambda']:g}")
        elif r["qabf"]:
            ax.errorbar(r["qabf"][0], np.mean(r["segmentability"]), yerr=np.std(r["segmentability"], ddof=1),
                        fmt="s", color="black", capsize=3)
            ax.annotate(r["label"], (r["qabf"][0], np.mean(r["segmentability"])), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
    ax.set_xlabel("Qabf of the fused image (test slices)")
    ax.set_ylabel("segmentability: retrained test Dice per case")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Aggregate the records, print and write the tables and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=Path, default=HERE / "results" / "study_runs")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    summary = summarise(args.records)
    text = markdown(summary)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "upper.md").write_text(text, encoding="utf-8")
    (args.results / "upper.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    plot(summary, args.results / "upper_frontier.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
