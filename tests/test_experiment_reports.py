"""The experiment aggregators' own report logic (experiments/robustness.py, text.py, labels.py, dims.py,
demo_seeds.py): building the (seeds, cases) matrices from small synthetic records, the comparison families and
their Holm scope, the seed-paired family of labels.py, on hand-worked values or against scipy. The shared
statistics themselves are tested in tests/test_experiment_stats.py."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as scipy_stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import demo_seeds
import dims
import labels
import robustness
import text

CASES = ("c1", "c2", "c3", "c4")


def _write(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record), encoding="utf-8")


# --- robustness.py ---------------------------------------------------------------------------------------------

def _rob_record(seed: int, scores: dict[str, dict[tuple[str, float], list[float]]]) -> dict[str, Any]:
    """One seed's robustness.json: row -> (degradation, severity) -> case scores (in CASES order)."""
    rows = [{"run": f"{row}/seed-{seed}/run", "degradation": deg, "severity": sev,
             "dice_mean": float(np.mean(values)), "case_dice": dict(zip(CASES, values, strict=True))}
            for row, by in scores.items() for (deg, sev), values in by.items()]
    return {"degradations": ["noise"], "severities": [0.0, 1.0], "rows": rows}


def test_robustness_matrix_keeps_the_cases_every_seed_scored() -> None:
    """Seed 1 lacks c3: the matrix is (2 seeds, 2 cases) over c1, c2 in sorted order."""
    entries = [{"case_dice": {"c2": 0.2, "c1": 0.1, "c3": 0.3}}, {"case_dice": {"c1": 0.5, "c2": 0.6}}]
    cases, m = robustness.matrix_of(entries)
    assert cases == ["c1", "c2"]
    np.testing.assert_allclose(m, [[0.1, 0.2], [0.5, 0.6]])
    np.testing.assert_allclose(robustness.on_cases(cases, m, ["c2"]), [[0.2], [0.6]])


def test_robustness_holm_over_the_whole_table_by_hand() -> None:
    """p (0.01, 0.04, 0.03) over one table: Holm 0.03, 0.06, 0.06; the first reads better (Δ > 0), the second level
    (TOST p 0.01), the third undecided."""
    entries = [{"p": 0.01, "delta": 0.1, "tost_p": 0.9}, {"p": 0.04, "delta": 0.001, "tost_p": 0.01},
               {"p": 0.03, "delta": -0.05, "tost_p": 0.5}]
    robustness.holm_over(entries)
    assert [e["p_holm"] for e in entries] == pytest.approx([0.03, 0.06, 0.06])
    assert [e["reading"] for e in entries] == ["better", "level", "undecided"]
    assert all(e["family_size"] == 3 for e in entries)


def test_robustness_conditions_are_clean_then_each_degradation_at_the_worst() -> None:
    assert robustness.conditions(["noise", "blur"], [0.0, 0.5, 1.0]) == [
        ("clean", "noise", 0.0), ("noise", "noise", 1.0), ("blur", "blur", 1.0)]


def test_robustness_aggregate_headline_and_families() -> None:
    """Two seeds, four cases. ``rob-bilevel-robust`` is the reference plus a per-case shift d (the same for both
    seeds, so the seed-averaged difference is d); ``rob-direct-all4`` the reference plus 0.2 exactly."""
    ref = {0: [0.50, 0.60, 0.70, 0.80], 1: [0.52, 0.58, 0.74, 0.76]}
    d = np.array([0.05, 0.10, 0.02, 0.07])
    records = {}
    for seed, base in ref.items():
        b = np.array(base)
        scores = {"rob-bilevel": {("noise", 0.0): list(b), ("noise", 1.0): list(b - 0.1)},
                  "rob-bilevel-robust": {("noise", 0.0): list(b + d), ("noise", 1.0): list(b - 0.1 + d)},
                  "rob-direct-all4": {("noise", 0.0): list(b + 0.2), ("noise", 1.0): list(b + 0.1)}}
        records[seed] = _rob_record(seed, scores)
    spec = {"reference": "rob-bilevel", "rows": {"rob-bilevel": {}, "rob-bilevel-robust": {}, "rob-direct-all4": {}}}
    agg = robustness.aggregate(records, spec)
    head = next(e for e in agg["table"] if e["row"] == "rob-bilevel" and e["severity"] == 0.0)
    seed_means = [np.mean(ref[0]), np.mean(ref[1])]  # 0.65 and 0.65
    assert head["dice"]["mean"] == pytest.approx(np.mean(seed_means))
    assert head["cases"] == 4
    first, second = agg["families"]["rob-bilevel"], agg["families"]["rob-bilevel-robust"]
    assert [(e["row"], e["condition"]) for e in first] == [
        ("rob-bilevel-robust", "clean"), ("rob-direct-all4", "clean"),
        ("rob-bilevel-robust", "noise"), ("rob-direct-all4", "noise")]
    assert [(e["row"], e["condition"]) for e in second] == [("rob-direct-all4", "clean"), ("rob-direct-all4", "noise")]
    robust_clean = first[0]
    assert robust_clean["delta"] == pytest.approx(d.mean())
    assert robust_clean["p"] == pytest.approx(scipy_stats.ttest_1samp(d, 0.0).pvalue)
    assert robust_clean["cases_up"] == 4 and robust_clean["cases"] == 4 and robust_clean["seeds"] == 2
    # Holm over the 4 comparisons of the first table: the two exact +0.2 / +0.2 shifts have p = 0, the two
    # robust rows share p, so both get 2 * p (ranks 3 and 4: max(2p, 1p) = 2p)
    assert all(e["family_size"] == 4 for e in first)
    assert first[2]["p_holm"] == pytest.approx(min(1.0, 2 * first[2]["p"]))
    # the bootstrap draws each row's seeds independently, and the seeds differ: an interval around +0.2
    assert first[1]["delta"] == pytest.approx(0.2) and first[1]["ci95"][0] < 0.2 < first[1]["ci95"][1]
    assert first[1]["reading"] == "better"
    assert second[0]["delta"] == pytest.approx(0.2 - d.mean())


def test_robustness_clean_stacked_reads_the_training_records() -> None:
    """Per seed: the mean over cases of (WT + TC + ET) / 3; then mean +- sd over seeds."""
    training = {"rob-bilevel": [
        {"case_dice": {"a": {"WT": 0.9, "TC": 0.6, "ET": 0.6}, "b": {"WT": 0.6, "TC": 0.6, "ET": 0.3}}},
        {"case_dice": {"a": {"WT": 0.9, "TC": 0.9, "ET": 0.6}, "b": {"WT": 0.6, "TC": 0.6, "ET": 0.6}}}]}
    out = robustness.clean_stacked(training, ["rob-bilevel", "absent"])
    assert list(out) == ["rob-bilevel"]
    assert out["rob-bilevel"]["mean"] == pytest.approx(np.mean([0.6, 0.7]))  # seeds: (0.7+0.5)/2, (0.8+0.6)/2
    assert out["rob-bilevel"]["sd"] == pytest.approx(np.std([0.6, 0.7], ddof=1))


# --- text.py ---------------------------------------------------------------------------------------------------

def _text_run(seed: int, with_text: list[float], no_text: list[float] | None = None) -> dict[str, Any]:
    def scores(values: list[float]) -> dict[str, Any]:
        return {"dice": {"WT": 0.5, "TC": 0.5, "ET": 0.5, "mean": 0.5},
                "case_dice": dict(zip(CASES, values, strict=True)), "semantic": 0.7, "fusion": {}}
    run = {"row": "r", "seed": seed, "steps": 10, "train_s": 1.0, "with_text": scores(with_text)}
    if no_text is not None:
        run["no_text"] = scores(no_text)
    return run


def test_text_families_pair_each_setting_with_its_reference() -> None:
    """bilevel-text (both settings) and two-stage-cnn against bilevel-cnn; two-stage-text against two-stage-cnn.
    Deltas by hand: +0.1 and -0.05 (exact shifts), two-stage-cnn -0.2 then +0.05 against it."""
    base = [0.6, 0.7, 0.8, 0.5]
    rows = {"bilevel-cnn": [_text_run(s, base) for s in range(2)],
            "bilevel-text": [_text_run(s, [v + 0.1 for v in base], [v - 0.05 for v in base]) for s in range(2)],
            "two-stage-cnn": [_text_run(s, [v - 0.2 for v in base]) for s in range(2)],
            "two-stage-text": [_text_run(s, [v - 0.15 for v in base], [v - 0.2 for v in base]) for s in range(2)]}
    spec = {"reference": "bilevel-cnn", "rows": {"bilevel-cnn": {}, "bilevel-text": {}, "two-stage-cnn": {},
                                                 "two-stage-text": {"against": "two-stage-cnn"}}}
    families = text.families_of(rows, spec)
    assert list(families) == ["bilevel-cnn", "two-stage-cnn"]
    first = {e["row"]: e for e in families["bilevel-cnn"]}
    assert list(first) == ["bilevel-text (test text yes)", "bilevel-text (test text no)", "two-stage-cnn"]
    assert first["bilevel-text (test text yes)"]["delta"] == pytest.approx(0.1)
    assert first["bilevel-text (test text no)"]["delta"] == pytest.approx(-0.05)
    assert first["two-stage-cnn"]["delta"] == pytest.approx(-0.2)
    assert [e["reading"] for e in first.values()] == ["better", "worse", "worse"]
    second = {e["row"]: e for e in families["two-stage-cnn"]}
    assert second["two-stage-text (test text yes)"]["delta"] == pytest.approx(0.05)
    assert second["two-stage-text (test text no)"]["delta"] == pytest.approx(0.0)
    assert second["two-stage-text (test text no)"]["reading"] == "level"  # no difference at all: TOST p = 0


def test_text_use_family_is_paired_by_run() -> None:
    """Both runs read their texts to the same effect d = (0.01, -0.01, 0.02, 0.00) per case, on different bases:
    Δ = 0.005; paired t as scipy's; TOST by hand (mean 0.005, se 0.006455, df 3, margin 0.02) p = 0.05136, so
    undecided; the paired bootstrap never leaves [min d, max d]."""
    d = [0.01, -0.01, 0.02, 0.0]
    bases = ([0.6, 0.7, 0.8, 0.5], [0.3, 0.9, 0.4, 0.6])
    rows = {"cnn": [_text_run(0, bases[0])],
            "txt": [_text_run(s, [b + x for b, x in zip(bases[s], d, strict=True)], bases[s]) for s in range(2)]}
    (e,) = text.text_use_family(rows)
    assert e["row"] == "txt" and e["seeds"] == 2
    assert e["delta"] == pytest.approx(0.005)
    assert e["p"] == pytest.approx(scipy_stats.ttest_1samp(d, 0.0).pvalue)
    assert e["tost_p"] == pytest.approx(0.05136, abs=2e-4) and e["reading"] == "undecided"
    assert -0.01 - 1e-12 <= e["ci95"][0] <= e["ci95"][1] <= 0.02 + 1e-12


def test_text_label_and_matrix() -> None:
    assert text.label_of("x", "no_text", True) == "x (test text no)"
    assert text.label_of("x", "with_text", False) == "x"
    cases, m = text.case_matrix_of([_text_run(0, [0.1, 0.2, 0.3, 0.4]), _text_run(1, [0.5, 0.6, 0.7, 0.8])],
                                   "with_text")
    assert cases == list(CASES) and m.shape == (2, 4) and m[1, 2] == pytest.approx(0.7)


# --- dims.py ---------------------------------------------------------------------------------------------------

def test_dims_aggregate_against_scipy(tmp_path: Path) -> None:
    """Whole-volume Dice per case = (WT + TC + ET) / 3; the difference's p is scipy's paired t of the
    seed-averaged cases."""
    rng = np.random.default_rng(3)
    vals = {"dims-2d": rng.uniform(0.3, 0.7, (2, 4, 3)), "dims-3d": rng.uniform(0.3, 0.7, (2, 4, 3))}
    for row, v in vals.items():
        for seed in range(2):
            _write(tmp_path / row / f"seed-{seed}.json",
                   {"row": row, "seed": seed, "steps": 5, "train_s": 2.0,
                    "volume_case_dice": {c: dict(zip(("WT", "TC", "ET"), v[seed, i].tolist(), strict=True))
                                         for i, c in enumerate(CASES)}})
    spec = {"reference": "dims-2d", "rows": {"dims-2d": {}, "dims-3d": {}}}
    agg = dims.aggregate(tmp_path, spec)
    per_case = {row: v.mean(axis=2) for row, v in vals.items()}  # (seeds, cases)
    _, m = dims.volume_matrix([json.loads((tmp_path / "dims-3d" / f"seed-{s}.json").read_text()) for s in range(2)])
    np.testing.assert_allclose(m, per_case["dims-3d"])
    assert agg["rows"][0]["dice"]["mean"] == pytest.approx(per_case["dims-2d"].mean())
    assert agg["rows"][1]["regions"]["TC"] == pytest.approx(vals["dims-3d"][:, :, 1].mean())
    (entry,) = agg["family"]
    assert entry["delta"] == pytest.approx(per_case["dims-3d"].mean() - per_case["dims-2d"].mean())
    p = scipy_stats.ttest_rel(per_case["dims-3d"].mean(axis=0), per_case["dims-2d"].mean(axis=0)).pvalue
    assert entry["p"] == pytest.approx(p) and entry["p_holm"] == pytest.approx(p)  # a family of one
    assert agg["rows"][1]["vs"]["row"] == "dims-3d"


# --- labels.py -------------------------------------------------------------------------------------------------

def test_labels_seed_family_by_hand() -> None:
    """diff by seed (0.1, 0.1, 0.0) (seed 3 has no reference, dropped): mean 1/15, se 1/30, t = 2 with df 2, so
    p = 1 - 2/sqrt(6); 95 % t-interval mean +- t(0.975, 2) se. TOST margin 0.02: t = 2.6 and 1.4, and for df 2
    sf(t) = (1 - t / sqrt(t^2 + 2)) / 2, so p = max(sf(2.6), 1 - sf(1.4))."""
    (e,) = labels.seed_family({"x": ({0: 0.7, 1: 0.8, 2: 0.75, 3: 0.9}, {0: 0.6, 1: 0.7, 2: 0.75})})

    def sf(t: float) -> float:
        return (1 - t / math.sqrt(t * t + 2)) / 2

    assert e["seeds"] == 3 and e["seeds_up"] == 2
    assert e["delta"] == pytest.approx(1 / 15)
    assert e["p"] == pytest.approx(1 - 2 / math.sqrt(6))
    half = 4.302652729911275 / 30
    assert e["ci95"] == pytest.approx([1 / 15 - half, 1 / 15 + half])
    assert e["tost_p"] == pytest.approx(max(sf(2.6), 1 - sf(1.4)))
    assert e["p_holm"] == pytest.approx(e["p"]) and e["reading"] == "undecided"


def test_labels_seed_family_holm_within_the_family() -> None:
    """Two rows: Holm doubles the smaller p and keeps the larger (if larger than the doubled one)."""
    family = labels.seed_family({"a": ({0: 0.7, 1: 0.8, 2: 0.75}, {0: 0.6, 1: 0.7, 2: 0.75}),
                                 "b": ({0: 0.5, 1: 0.7, 2: 0.6}, {0: 0.6, 1: 0.6, 2: 0.6})})
    p = [e["p"] for e in family]
    assert p[1] == 1.0  # b: diff (-0.1, 0.1, 0) has mean 0
    assert [e["p_holm"] for e in family] == pytest.approx([min(1, 2 * p[0]), 1.0])


def test_labels_aggregate_one_family_per_task(tmp_path: Path) -> None:
    """segment at 10 % (scratch, pretrained, labels-only) and 100 % (scratch, pretrained): one family of three."""
    scores = {("0.1", "scratch"): [0.70, 0.72, 0.74], ("0.1", "pretrained"): [0.75, 0.74, 0.80],
              ("0.1", "labels-only"): [0.69, 0.73, 0.72], ("1", "scratch"): [0.88, 0.89, 0.87],
              ("1", "pretrained"): [0.86, 0.89, 0.85]}
    for (fraction, init), values in scores.items():
        for seed, v in enumerate(values):
            _write(tmp_path / f"segment-f{fraction}-{init}" / f"seed-{seed}.json",
                   {"seed": seed, "score": {"dice": v}, "labelled_cases": 2, "train_s": 1.0})
    spec = {"tasks": {"segment": {}}, "fractions": [0.1, 1.0]}
    agg = labels.aggregate(tmp_path, spec)
    family = agg["families"]["segment"]
    assert [e["row"] for e in family] == ["10% pretrained", "10% labels-only", "100% pretrained"]
    diff = np.subtract(scores[("0.1", "pretrained")], scores[("0.1", "scratch")])
    assert family[0]["delta"] == pytest.approx(diff.mean())
    assert family[0]["p"] == pytest.approx(scipy_stats.ttest_1samp(diff, 0.0).pvalue)
    p1, p2, p3 = sorted(e["p"] for e in family)  # Holm by hand over the family of three
    holm = {p1: min(1.0, 3 * p1), p2: min(1.0, max(3 * p1, 2 * p2)), p3: min(1.0, max(3 * p1, 2 * p2, p3))}
    assert [e["p_holm"] for e in family] == pytest.approx([holm[e["p"]] for e in family])
    rows = {(r["fraction"], r["init"]): r for r in agg["rows"]}
    assert "vs_scratch" not in rows[(0.1, "scratch")]
    assert rows[(1.0, "pretrained")]["vs_scratch"]["row"] == "100% pretrained"
    assert rows[(0.1, "scratch")]["value"]["mean"] == pytest.approx(0.72)


# --- demo_seeds.py ---------------------------------------------------------------------------------------------

def test_demo_seeds_prediction_interval_by_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeds scoring 1, 2, 3: mean 2, sd 1, so the interval is 2 +- t(0.975, 2) sqrt(4/3) = 2 +- 4.968275."""
    keys = ("WT", "TC", "ET", "mean", "untrained_mean", "background_mean", "qabf_learned", "qabf_untrained",
            "qabf_stored")
    monkeypatch.setattr(demo_seeds, "run_seed", lambda seed, out: dict.fromkeys(keys, float(seed + 1)))
    demo_seeds.main(["--seeds", "0", "1", "2", "--jobs", "1", "--out", str(tmp_path / "runs"),
                     "--results", str(tmp_path)])
    summary = json.loads((tmp_path / "demo_seeds.json").read_text())["stats"]["mean"]
    assert summary["pi95"] == pytest.approx([2 - 4.968275, 2 + 4.968275], abs=1e-6)
    assert summary["range"] == [1.0, 3.0]


# --- target.py designs and the documented recipe ------------------------------------------------------------------

def test_the_documented_recipe_is_the_confirmed_configuration() -> None:
    """docs/training.md's TOML recipe resolves to the same training options as confirm.toml's candidate on top of
    the study's [common] and [common_fusion] (what target.py trained), so the page cannot drift from the record."""
    import re
    import tomllib

    from fuse4seg.train.resolve import build_config

    root = Path(__file__).resolve().parents[1]
    page = (root / "docs" / "training.md").read_text(encoding="utf-8")
    recipe = tomllib.loads(re.search(r"```toml\n(# fuse4seg train --config segmentable.toml.*?)```", page, re.DOTALL)[1])
    study_spec = tomllib.loads((root / "experiments" / "study.toml").read_text(encoding="utf-8"))
    confirm = tomllib.loads((root / "experiments" / "confirm.toml").read_text(encoding="utf-8"))
    (candidate,) = confirm["candidates"].values()
    run = {**study_spec["common"], **study_spec["common_fusion"], **candidate}
    drop = ("threads", "progress", "eval_every")  # how the experiment ran, not what it trained
    documented = build_config({**recipe, "benchmark": "B", "out": "R"}).to_dict()
    trained = build_config({**{k: v for k, v in run.items() if k not in drop}, "benchmark": "B", "out": "R"}).to_dict()
    assert documented == trained


def test_target_designs_name_their_seeds_and_hold_out(tmp_path: Path) -> None:
    """target.py --design: confirm.toml runs seeds 5-9 on its own hold-out directory and fixed images; target.toml
    keeps seeds 0-4, every fixed image and OUT/holdout."""
    import target

    root = Path(__file__).resolve().parents[1] / "experiments"
    assert target.load_design(root / "confirm.toml") == "confirm"
    assert list(target.seeds()) == [5, 6, 7, 8, 9]
    assert target.fixed() == ["mean", "laplacian", "weighted-t1ce1"]
    assert target.holdout_home(tmp_path) == tmp_path / "holdout-confirm"
    assert target.settings() == ["bilevel-qabfonly-weighted-lambda0p25", "mean", "laplacian", "weighted-t1ce1"]
    assert target.load_design(root / "target.toml") == "target"
    assert list(target.seeds()) == [0, 1, 2, 3, 4]
    assert target.fixed() == list(target.FIXED) and target.holdout_home(tmp_path) == tmp_path / "holdout"
