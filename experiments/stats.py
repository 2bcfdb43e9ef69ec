"""The statistics every experiment reports with, in one place (issue 23).

Primary metric: Dice per test CASE (the case's slices stacked, mean of WT/TC/ET), or the experiment's own
case-level score, held as a (seeds, cases) matrix per row. For each row against a reference row:

- the difference of means, with a hierarchical bootstrap interval: in each of :data:`DRAWS` draws the cases are
  resampled (the same cases for both rows, which keeps them paired), then each row's seeds are resampled, so
  training variance and case variance both enter; the 95 % interval, and the 90 % one for equivalence;
- a paired t-test over the cases of the seed-averaged per-case values (with 8 cases a rank test cannot reach
  p < 0.05 after Holm over a handful of rows: its smallest two-sided p is 1/128);
- Holm's correction over the family (all rows compared with one reference);
- TOST equivalence with a stated margin (paired t).

The reading: "better" / "worse" when the Holm-adjusted p < 0.05 AND the 95 % bootstrap interval excludes 0 (the
t-test alone leaves the seeds' spread out); "level" when TOST p < 0.05 AND the 90 % bootstrap interval lies
inside (-margin, margin); else "undecided" (not distinguished, which is not the same as equal).
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


def case_mean(case_dice: Mapping[str, Mapping[str, float]]) -> float:
    """Mean over a record's cases of the per-case Dice (mean of WT/TC/ET)."""
    return float(np.mean(list(case_scores(case_dice).values())))


def case_matrix(per_seed: Sequence[Mapping[str, float]]) -> tuple[list[str], np.ndarray]:
    """(the cases every seed scored, (seeds, cases) matrix) from one {case: score} per seed."""
    cases = sorted(set.intersection(*(set(s) for s in per_seed)))
    return cases, np.array([[s[c] for c in cases] for s in per_seed], dtype=float)


def bootstrap_differences(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, draws: int = DRAWS
                          ) -> np.ndarray:
    """``draws`` bootstrap values of mean(a) - mean(b) for (seeds, cases) matrices sharing their cases (columns):
    the cases resampled (the same for both), then each matrix's seeds resampled."""
    n_cases = a.shape[1]
    diffs = np.empty(draws)
    for i in range(draws):
        cases = rng.integers(0, n_cases, n_cases)
        sa, sb = rng.integers(0, a.shape[0], a.shape[0]), rng.integers(0, b.shape[0], b.shape[0])
        diffs[i] = a[np.ix_(sa, cases)].mean() - b[np.ix_(sb, cases)].mean()
    return diffs


def percentile_interval(draws: np.ndarray, level: float = 0.95) -> list[float]:
    """The central ``level`` interval of bootstrap draws (percentile method)."""
    tail = 100 * (1 - level) / 2
    return [float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail))]


def hierarchical_bootstrap(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, draws: int = DRAWS,
                           level: float = 0.95) -> list[float]:
    """The ``level`` interval of mean(a) - mean(b) from :func:`bootstrap_differences`."""
    return percentile_interval(bootstrap_differences(a, b, rng, draws), level)


def _no_spread(diff: np.ndarray) -> bool:
    """Whether the differences are all equal, up to float rounding."""
    return bool(np.ptp(diff) <= 1e-12 * max(1.0, float(np.abs(diff).max())))


def tost_p(diff: np.ndarray, margin: float) -> float:
    """p of the two one-sided paired t-tests that the mean of ``diff`` lies within (-margin, margin)."""
    n, mean = len(diff), float(np.mean(diff))
    if n < 2:  # one difference says nothing about its spread
        return 1.0
    se = 0.0 if _no_spread(diff) else float(np.std(diff, ddof=1) / math.sqrt(n))
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
    """better / worse (Holm p < 0.05 and, where the entry has one, its 95 % interval excludes 0), level (TOST
    p < 0.05 and, where it has one, its 90 % interval inside the margin) or undecided."""
    ci95, ci90, margin = entry.get("ci95"), entry.get("ci90"), entry.get("margin", MARGIN)
    if entry["p_holm"] < ALPHA and (ci95 is None or ci95[0] > 0 or ci95[1] < 0):
        return "better" if entry["delta"] > 0 else "worse"
    if entry["tost_p"] < ALPHA and (ci90 is None or -margin < ci90[0] and ci90[1] < margin):
        return "level"
    return "undecided"


def apply_holm(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Holm over the entries' "p" (one family), then each entry's reading; updated in place and returned."""
    for entry, adjusted in zip(entries, holm([e["p"] for e in entries]), strict=True):
        entry["p_holm"] = adjusted
        entry["reading"] = reading(entry)
    return list(entries)


def compare(m: np.ndarray, ref: np.ndarray, rng: np.random.Generator, margin: float = MARGIN) -> dict[str, Any]:
    """One row against the reference (same cases): difference of means, bootstrap 95 % and 90 % intervals, cases
    up, paired t p and TOST p (Holm and the reading come from :func:`apply_holm` over the family)."""
    diff = m.mean(axis=0) - ref.mean(axis=0)
    draws = bootstrap_differences(m, ref, rng)
    return {"delta": float(m.mean() - ref.mean()),
            "ci95": percentile_interval(draws, 0.95), "ci90": percentile_interval(draws, 0.90),
            "cases_up": int((diff > 0).sum()), "cases": len(diff), "seeds": int(m.shape[0]),
            "p": paired_p(diff), "tost_p": tost_p(diff, margin), "margin": margin}


def compare_family(rows: Mapping[str, np.ndarray], ref: np.ndarray, seed: int = 0, margin: float = MARGIN
                   ) -> list[dict[str, Any]]:
    """Each (seeds, cases) row against the reference (same cases, same order): :func:`compare`, then Holm over
    the family and the readings. Each row's bootstrap has its own stream (seed, row index), so a row's interval
    does not depend on the other rows."""
    out = [{"row": name, **compare(m, ref, np.random.default_rng([seed, i]), margin)}
           for i, (name, m) in enumerate(rows.items())]
    return apply_holm(out)


def aligned(rows: Mapping[str, tuple[list[str], np.ndarray]], ref: tuple[list[str], np.ndarray]
            ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Rows and reference, each (cases, (seeds, cases) matrix), restricted to the cases all of them scored, in one
    order: (row matrices, reference matrix)."""
    common = sorted(set(ref[0]).intersection(*(set(c) for c, _ in rows.values())))

    def take(cases: list[str], m: np.ndarray) -> np.ndarray:
        """The columns of ``common``."""
        return m[:, [cases.index(c) for c in common]]
    return {name: take(*pair) for name, pair in rows.items()}, take(*ref)


def mean_sd(values: Sequence[float]) -> str:
    """"mean ± sd" of the finite values to 3 decimals (sd, ddof 1, only with two or more; "" with none)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if not len(x):
        return ""
    return f"{x.mean():.3f} ± {x.std(ddof=1):.3f}" if len(x) > 1 else f"{x.mean():.3f}"


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
