"""The study aggregate (experiments/study_report.py): intervals, paired tests and tables, hand-worked."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import study_report


def test_interval_is_the_t_interval() -> None:
    """[1, 2, 3]: mean 2, sd 1, half width t(0.975, 2) / sqrt(3) = 4.302653 / 1.732051 = 2.484138."""
    s = study_report.interval([1.0, 2.0, 3.0])
    assert s["n"] == 3 and s["mean"] == 2.0 and s["sd"] == 1.0
    assert s["ci95"] == pytest.approx([2 - 2.484138, 2 + 2.484138], abs=1e-6)
    single = study_report.interval([0.5])
    assert single["mean"] == 0.5 and math.isnan(single["sd"])


def _run(seed: int, cases: dict[str, float]) -> dict:
    """A run record whose every region scores ``cases[case]`` on that case."""
    return {"seed": seed, "case_dice": {c: {"WT": d, "TC": d, "ET": d} for c, d in cases.items()},
            "dice": {"mean": 0.5}, "hd95": {"WT": 1.0}, "steps": 1, "train_s": 1.0, "fusion": None}


def test_family_against_the_reference_uses_every_seed_and_holm() -> None:
    """Rows against the reference on per-case Dice: a row better by 0.02 (i + 1) on case i (seeds 0.01 and 0.03
    around it) has Δ 0.06, all 5 cases up, and the paired t p of its seed-averaged case differences; the family
    of two rows is Holm-corrected."""
    ref = [_run(0, {f"c{i}": 0.5 for i in range(5)}), _run(1, {f"c{i}": 0.5 for i in range(5)})]
    up = [_run(0, {f"c{i}": 0.5 + 0.01 * (i + 1) for i in range(5)}),
          _run(1, {f"c{i}": 0.5 + 0.03 * (i + 1) for i in range(5)})]
    down = [_run(0, {f"c{i}": 0.5 - 0.001 * (i % 2) for i in range(5)})]
    spec = {"reference": "ref", "rows": {"ref": {}, "up": {}, "down": {}}}
    summaries = {s["row"]: s for s in study_report.summarise({"ref": ref, "up": up, "down": down}, spec)}
    v = summaries["up"]["vs_reference"]
    assert v["delta"] == pytest.approx(0.06) and v["cases_up"] == 5 and v["cases"] == 5
    diff = np.array([0.02 * (i + 1) for i in range(5)])
    p_up = scipy_stats.ttest_1samp(diff, 0.0).pvalue
    p_down = scipy_stats.ttest_1samp(np.array([-0.001 * (i % 2) for i in range(5)]), 0.0).pvalue
    assert v["p"] == pytest.approx(p_up)
    first = min(1.0, 2 * min(p_up, p_down))  # Holm over two: the smaller p doubled, the larger at least that
    assert v["p_holm"] == pytest.approx(first if p_up < p_down else max(p_up, first))
    assert summaries["ref"]["vs_reference"] is None


def test_report_writes_tables_curves_and_copies(tmp_path: Path) -> None:
    """Two rows, two seeds: the Markdown row shows mean +- sd; curves and run copies are written."""
    results = tmp_path / "results"
    for row, base in (("ref", 0.5), ("other", 0.7)):
        for seed in (0, 1):
            d = base + 0.1 * seed
            record = {"row": row, "seed": seed, "dice": {"WT": d, "TC": d, "ET": d, "mean": d},
                      "hd95": {"WT": 3.0, "TC": 3.0, "ET": 3.0}, "steps": 10, "train_s": 1.0, "fusion": None,
                      "curve": [[5, d - 0.1], [10, d]], **{k: v for k, v in _run(seed, {"a": d, "b": d + 0.05}).items()
                                                           if k == "case_dice"}}
            (results / row).mkdir(parents=True, exist_ok=True)
            (results / row / f"seed-{seed}.json").write_text(json.dumps(record))
    spec = {"reference": "ref", "data": {}, "common": {}, "rows": {"ref": {}, "other": {"note": "x"}}}
    table = study_report.write_report(results, spec, tmp_path / "out")
    lines = table.splitlines()
    # per case: seed 0 (0.5, 0.55) -> 0.525, seed 1 (0.6, 0.65) -> 0.625; sd 0.0707
    assert lines[2].startswith("| ref | 2 | 10 | 0.575 ± 0.071 |")
    # seeds resampled within each row: the difference of seed means spans 0.725 - 0.625 to 0.825 - 0.525
    assert "| +0.200 [+0.100, +0.300] | 2/2 |" in lines[3] and lines[3].count("better") == 1
    assert (tmp_path / "out" / "study_curves" / "other.png").stat().st_size > 0
    assert (tmp_path / "out" / "study_runs" / "ref" / "seed-1.json").is_file()
    summary = json.loads((tmp_path / "out" / "study.json").read_text())
    assert [r["row"] for r in summary["rows"]] == ["ref", "other"]


def test_run_grid_goes_on_past_a_failure(capsys: pytest.CaptureFixture) -> None:
    """Three jobs, the second raising: all three run, one "[i/3] LABEL: ok|FAILED" line each in job order, and the
    failure comes back as "LABEL: reason"."""
    import study

    done = []

    def job(name: str) -> None:
        """Record the job; fail on "b"."""
        done.append(name)
        if name == "b":
            raise RuntimeError("boom")

    failures = study.run_grid(job, [("a",), ("b",), ("c",)], 2, lambda j: f"row {j[0]}")
    assert sorted(done) == ["a", "b", "c"] and failures == ["row b: boom"]
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in out] == ["[1/3] row a: ok", "[2/3] row b: FAILED", "[3/3] row c: ok"]
