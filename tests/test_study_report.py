"""The study aggregate (experiments/study_report.py): intervals, paired tests and tables, hand-worked."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

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
    return {"seed": seed, "case_dice": {c: {"WT": d, "TC": d, "ET": d} for c, d in cases.items()}}


def test_paired_wilcoxon_over_cases() -> None:
    """Five cases all better by distinct amounts: exact two-sided p = 2 / 2^5 = 0.0625."""
    ref = [_run(0, {f"c{i}": 0.5 for i in range(5)}), _run(1, {f"c{i}": 0.5 for i in range(5)})]
    row = [_run(0, {f"c{i}": 0.5 + 0.01 * (i + 1) for i in range(5)}),
           _run(1, {f"c{i}": 0.5 + 0.03 * (i + 1) for i in range(5)}),
           _run(2, {f"c{i}": 0.0 for i in range(5)})]  # seed 2 has no reference run: left out
    out = study_report.paired(row, ref)
    assert out["cases"] == 5 and out["seeds"] == 2
    assert out["mean_diff"] == pytest.approx(0.02 * 3)  # mean over cases of 0.02 * (i + 1)
    assert out["p"] == pytest.approx(0.0625)
    assert (out["wins"], out["losses"]) == (5, 0)


def test_report_writes_tables_curves_and_copies(tmp_path: Path) -> None:
    """Two rows, two seeds: the Markdown row shows mean +- sd; curves and run copies are written."""
    results = tmp_path / "results"
    for row, base in (("ref", 0.5), ("other", 0.7)):
        for seed in (0, 1):
            d = base + 0.1 * seed
            record = {"row": row, "seed": seed, "dice": {"WT": d, "TC": d, "ET": d, "mean": d},
                      "hd95": {"WT": 3.0, "TC": 3.0, "ET": 3.0}, "steps": 10, "train_s": 1.0, "fusion": None,
                      "curve": [[5, d - 0.1], [10, d]], **_run(seed, {"a": d, "b": d + 0.05})}
            (results / row).mkdir(parents=True, exist_ok=True)
            (results / row / f"seed-{seed}.json").write_text(json.dumps(record))
    spec = {"reference": "ref", "data": {}, "common": {}, "rows": {"ref": {}, "other": {"note": "x"}}}
    table = study_report.write_report(results, spec, tmp_path / "out")
    lines = table.splitlines()
    assert lines[2].startswith("| ref | 2 | 10 | 0.550 ± 0.071 |")  # sd of (0.5, 0.6) = 0.0707
    assert "+0.200 (2/2 cases up)" in lines[3]
    assert (tmp_path / "out" / "study_curves" / "other.png").stat().st_size > 0
    assert (tmp_path / "out" / "study_runs" / "ref" / "seed-1.json").is_file()
    summary = json.loads((tmp_path / "out" / "study.json").read_text())
    assert [r["row"] for r in summary["rows"]] == ["ref", "other"]
