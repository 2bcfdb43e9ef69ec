"""The statistics every experiment reports with, in one place (issue 23).

Primary metric: Dice per test CASE (the case's slices stacked, mean of WT/TC/ET), or the experiment's own
case-level score, held as a (seeds, cases) matrix per row. For each row against a reference row:

- the difference of means, with a hierarchical bootstrap 95 % interval: cases resampled, then each row's seeds
  resampled within each case draw (training variance and case variance both enter), :data:`DRAWS` draws;
- a paired t-test over the cases of the seed-averaged per-case values (with 8 cases a rank test cannot reach
  p < 0.05 after Holm over a handful of rows: its smallest two-sided p is 1/128);
- Holm's correction over the family (all rows compared with one reference);
- TOST equivalence with a stated margin (paired t), before any row is called level with the reference.

The reading: "better" / "worse" when the Holm-adjusted p < 0.05, "level" when TOST p < 0.05, else "undecided".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

REGIONS = ("WT", "TC", "ET")
DRAWS = 10_000
#: Equivalence margin of Dice (absolute) for TOST, unless an experiment states its own.
MARGIN = 0.02
ALPHA = 0.05


def case_scores(case_dice: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """case -> Dice mean of WT/TC/ET, from a record's {case: {region: Dice}}."""
    return {case: float(np.mean([d[k] for k in REGIONS])) for case, d in sorted(case_dice.items())}


def case_matrix(per_seed: Sequence[Mapping[str, float]]) -> tuple[list[str], np.ndarray]:
    """(the cases every seed scored, (seeds, cases) matrix) from one {case: score} per seed."""
    cases = sorted(set.intersection(*(set(s) for s in per_seed)))
    return cases, np.array([[s[c] for c in cases] for s in per_seed], dtype=float)


def hierarchical_bootstrap(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, draws: int = DRAWS
                           ) -> list[float]:
    """95 % interval of mean(a) - mean(b) for (seeds, cases) matrices sharing their cases (columns): the cases
    resampled, then each matrix's seeds resampled, ``draws`` times."""
    n_cases = a.shape[1]
    diffs = np.empty(draws)
    for i in range(draws):
        cases = rng.integers(0, n_cases, n_cases)
        sa, sb = rng.integers(0, a.shape[0], a.shape[0]), rng.integers(0, b.shape[0], b.shape[0])
        diffs[i] = a[np.ix_(sa, cases)].mean() - b[np.ix_(sb, cases)].mean()
    return [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]


def _no_spread(diff: np.ndarray) -> bool:
    """Whether the differences are all equal, up to float rounding."""
    return bool(np.ptp(diff) <= 1e-12 * max(1.0, float(np.abs(diff).max())))


def tost_p(diff: np.ndarray, margin: float) -> float:
    """p of the two one-sided paired t-tests that the mean of ``diff`` lies within (-margin, margin)."""
    n, mean = len(diff), float(np.mean(diff))
    se = 0.0 if n < 2 or _no_spread(diff) else float(np.std(diff, ddof=1) / math.sqrt(n))
    if se == 0:
        return 0.0 if abs(mean) < margin else 1.0
    return float(max(stats.t.sf((mean + margin) / se, n - 1), stats.t.cdf((mean - margin) / se, n - 1)))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order."""
    order = np.argsort(pvalues, kind="stable")
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def paired_p(diff: np.ndarray) -> float:
    """Two-sided paired t-test p of per-case differences (1 when they are all zero)."""
    if len(diff) < 2 or not np.any(diff):
        return 1.0
    if _no_spread(diff):  # identical differences: t is infinite (scipy would warn of lost precision)
        return 0.0
    return float(stats.ttest_1samp(diff, 0.0).pvalue)


def reading(entry: Mapping[str, Any]) -> str:
    """better / worse (Holm p < 0.05), level (TOST p < 0.05) or undecided."""
    if entry["p_holm"] < ALPHA:
        return "better" if entry["delta"] > 0 else "worse"
    return "level" if entry["tost_p"] < ALPHA else "undecided"


def compare_family(rows: Mapping[str, np.ndarray], ref: np.ndarray, seed: int = 0, margin: float = MARGIN
                   ) -> list[dict[str, Any]]:
    """Each (seeds, cases) row against the reference (same cases): difference of means, hierarchical bootstrap
    interval, cases up, paired t p, Holm p over the family, TOST p and the reading."""
    rng = np.random.default_rng(seed)
    out = []
    for name, m in rows.items():
        diff = m.mean(axis=0) - ref.mean(axis=0)
        out.append({"row": name, "delta": float(m.mean() - ref.mean()), "ci95": hierarchical_bootstrap(m, ref, rng),
                    "cases_up": int((diff > 0).sum()), "cases": len(diff), "seeds": int(m.shape[0]),
                    "p": paired_p(diff), "tost_p": tost_p(diff, margin), "margin": margin})
    for entry, adjusted in zip(out, holm([e["p"] for e in out]), strict=True):
        entry["p_holm"] = adjusted
        entry["reading"] = reading(entry)
    return out


def family_markdown(entries: Sequence[Mapping[str, Any]], title: str) -> str:
    """One comparison family as a Markdown table under ``title``."""
    lines = [title, "", ("| row | seeds | Δ | 95 % interval (hierarchical bootstrap) | cases up | p | p (Holm) | "
             "TOST p | reading |"), "|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        lines.append(f"| {e['row']} | {e['seeds']} | {e['delta']:+.3f} | [{e['ci95'][0]:+.3f}, {e['ci95'][1]:+.3f}] | "
                     f"{e['cases_up']}/{e['cases']} | {e['p']:.3g} | {e['p_holm']:.3g} | {e['tost_p']:.3g} | "
                     f"{e['reading']} |")
    return "\n".join(lines) + "\n"


def prediction_interval(values: Sequence[float], level: float = 0.95) -> list[float]:
    """Interval that holds one more run with probability ``level``: mean +- t sd sqrt(1 + 1/n) (normal runs)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * float(x.std(ddof=1)) * math.sqrt(1 + 1 / n)
    return [float(x.mean()) - half, float(x.mean()) + half]
