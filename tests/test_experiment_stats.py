"""The experiments' shared statistics (experiments/stats.py): Holm, TOST, the hierarchical bootstrap, the paired
test and the readings, on hand-worked cases or against scipy; and the frontier's Pareto front and convergence
rule (experiments/frontier.py)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import frontier
import stats
from scipy import stats as scipy_stats


def test_holm_by_hand() -> None:
    """p = (0.01, 0.04, 0.03): sorted 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04) = 0.06."""
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_tost_by_hand() -> None:
    """diff (0.01, 0.00, -0.01, 0.02): mean 0.005, sd 0.012910, se 0.006455, n - 1 = 3; margin 0.02:
    t_low = (0.005 + 0.02) / se = 3.8730 -> p 0.01527; t_high = (0.005 - 0.02) / se = -2.3238 -> p 0.05136."""
    p = stats.tost_p(np.array([0.01, 0.0, -0.01, 0.02]), 0.02)
    assert p == pytest.approx(0.05136, abs=2e-4)
    assert stats.tost_p(np.zeros(3), 0.02) == 0.0 and stats.tost_p(np.full(3, 0.5), 0.02) == 1.0


def test_hierarchical_bootstrap_of_a_constant_shift_is_the_shift() -> None:
    """Seeds that agree, and every case of a is b's + 0.1: every draw differs by exactly 0.1."""
    b = np.tile(np.random.default_rng(1).random(8), (3, 1))
    lo, hi = stats.hierarchical_bootstrap(b + 0.1, b, np.random.default_rng(0))
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.1)


def test_hierarchical_bootstrap_covers_the_seed_spread() -> None:
    """Two rows whose seeds differ by +-0.2 around the same case means: the interval straddles 0 and is wider
    than the cases alone would make it (the cases are identical across rows)."""
    cases = np.linspace(0.5, 0.9, 8)
    a = np.stack([cases + 0.2, cases - 0.2])
    lo, hi = stats.hierarchical_bootstrap(a, cases[None, :], np.random.default_rng(0))
    assert lo < 0 < hi and hi - lo > 0.3


def test_readings() -> None:
    """better / worse need Holm p < 0.05 (and a 95 % interval clear of 0); level needs TOST p < 0.05 (and a 90 %
    interval inside the margin); otherwise undecided."""
    assert stats.reading({"p_holm": 0.01, "delta": 0.03, "tost_p": 0.5}) == "better"
    assert stats.reading({"p_holm": 0.01, "delta": -0.03, "tost_p": 0.5}) == "worse"
    assert stats.reading({"p_holm": 0.4, "delta": 0.001, "tost_p": 0.01}) == "level"
    assert stats.reading({"p_holm": 0.4, "delta": 0.001, "tost_p": 0.2}) == "undecided"
    assert math.isclose(stats.MARGIN, 0.02)
    # with the bootstrap intervals: a 95 % interval that straddles 0 keeps "better" back; a 90 % interval that
    # leaves the margin keeps "level" back
    assert stats.reading({"p_holm": 0.01, "delta": 0.03, "tost_p": 0.5, "ci95": [0.01, 0.05]}) == "better"
    assert stats.reading({"p_holm": 0.01, "delta": 0.03, "tost_p": 0.5, "ci95": [-0.01, 0.07]}) == "undecided"
    assert stats.reading({"p_holm": 0.01, "delta": -0.03, "tost_p": 0.5, "ci95": [-0.05, -0.01]}) == "worse"
    assert stats.reading({"p_holm": 0.4, "delta": 0.0, "tost_p": 0.01, "ci90": [-0.01, 0.01]}) == "level"
    assert stats.reading({"p_holm": 0.4, "delta": 0.0, "tost_p": 0.01, "ci90": [-0.01, 0.03]}) == "undecided"


def test_paired_p_is_scipys_paired_t() -> None:
    """The paired t over cases equals scipy's ttest_rel of the two rows' case values."""
    rng = np.random.default_rng(3)
    a, b = rng.random(8), rng.random(8)
    assert stats.paired_p(a - b) == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue, rel=1e-12)
    assert stats.paired_p(np.zeros(8)) == 1.0


def test_compare_family_holm_and_readings() -> None:
    """Two rows against one reference: a constant +0.1 shift on every case and seed is "better" (p = 0, Holm
    keeps 0) with the bootstrap interval [0.1, 0.1]; a copy of the reference is "level" (TOST p = 0)."""
    ref = np.tile(np.linspace(0.5, 0.8, 8), (3, 1))
    family = stats.compare_family({"up": ref + 0.1, "same": ref.copy()}, ref)
    up, same = family
    assert up["delta"] == pytest.approx(0.1) and up["ci95"] == pytest.approx([0.1, 0.1])
    assert up["reading"] == "better" and up["cases_up"] == 8
    assert same["p"] == 1.0 and same["tost_p"] == 0.0 and same["reading"] == "level"


def test_prediction_interval_by_hand() -> None:
    """x = (1, 2, 3): mean 2, sd 1, t(0.975, 2) = 4.302653, sqrt(1 + 1/3) = 1.154701 -> half 4.968275."""
    lo, hi = stats.prediction_interval([1.0, 2.0, 3.0])
    assert lo == pytest.approx(2 - 4.968275, abs=1e-5) and hi == pytest.approx(2 + 4.968275, abs=1e-5)


def test_pareto_front() -> None:
    """(Qabf, seg): (0.6, 0.8) and (0.7, 0.7) are on the front; (0.55, 0.75) is beaten by (0.6, 0.8)."""
    entries = [{"Qabf": 0.6, "segmentability": 0.8}, {"Qabf": 0.7, "segmentability": 0.7},
               {"Qabf": 0.55, "segmentability": 0.75}]
    assert frontier.pareto(entries) == [entries[0], entries[1]]


def test_convergence_rule() -> None:
    """Best val Dice over the last 25 % of steps at most 0.005 above the best before: converged."""
    flat = [[s, 0.8 + (0.001 if s > 600 else 0.0)] for s in range(100, 900, 100)]
    rising = [[s, s / 1000] for s in range(100, 900, 100)]
    assert frontier.converged(flat) and not frontier.converged(rising)
    assert not frontier.converged([[50, 0.1], [100, 0.2]])


def _record(seed: int, case_values: dict[str, float], qabf: float | None = None, retrained: dict | None = None
            ) -> dict:
    """A study record whose every region scores the given value on each case."""
    out = {"seed": seed, "train_s": 1.0, "case_dice": {c: {"WT": v, "TC": v, "ET": v} for c, v in case_values.items()}}
    if qabf is not None:
        out["fusion"] = {"Qabf": qabf, "SSIM": 1.4}
    if retrained is not None:
        out["retrained"] = {"case_dice": {c: {"WT": v, "TC": v, "ET": v} for c, v in retrained.items()}}
    return out


def test_upper_target_needs_both_references_and_the_qabf(tmp_path: Path) -> None:
    """Two bi-level rows against the mean and Laplacian references on 8 cases: "good" is 0.1 above both on every
    case (with a little spread) and has Qabf 0.70 >= 0.665, so it meets the target; "blurry" is as segmentable
    but its Qabf 0.60 is below the Laplacian image's, so it does not."""
    import json

    import upper

    cases = [f"c{i}" for i in range(8)]
    base = {c: 0.6 + 0.01 * i for i, c in enumerate(cases)}
    up = {c: v + 0.1 + 0.002 * (i % 3) for i, (c, v) in enumerate(base.items())}
    rows = {"good": 0.70, "blurry": 0.60}
    for name, qabf in rows.items():
        for seed in range(3):
            path = tmp_path / name / f"seed-{seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(_record(seed, base, qabf, retrained=up)))
    for ref in ("retrain-mean", "retrain-laplacian"):
        for seed in range(3):
            path = tmp_path / ref / f"seed-{seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(_record(seed, base)))
    spec = {"rows": {name: {"mode": "bilevel", "retrain": True} for name in rows}}
    quality = {"laplacian": {"Qabf": 0.665}, "mean": {"Qabf": 0.585}}
    summary = upper.summarise(tmp_path, spec, quality)
    met = {t["row"]: t["met"] for t in summary["target"]}
    assert met == {"good": True, "blurry": False}
    assert all(e["reading"] == "better" for family in summary["families"].values() for e in family)
    assert summary["not_run"] == []
