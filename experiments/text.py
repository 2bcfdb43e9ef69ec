"""Text-guided fusion (fusion-text) against the plain fusion CNN, under bi-level and two-stage training.

    python experiments/text.py                 # train what is missing (2 jobs), evaluate, aggregate
    python experiments/text.py --report-only   # re-aggregate the committed records

Rows (experiments/text.toml), 3 seeds each, on the study's phantom release and laplacian benchmark (whose
slices carry their generated text descriptions): fusion-cnn and fusion-text under bi-level and two-stage
training, and fusion-text with the medical semantic loss under bi-level. Every run is evaluated on the test
split twice: with the slices' texts (the default) and with ``--no-texts`` (the network's "no text" token).
The texts are generated from the true labels, so a text-guided net that reads them at test time is given
information the other rows do not have (like a radiologist's report written before fusion); the ``--no-texts``
column is the fair comparison with the text-free rows, and the gap between the two columns measures how much
the network uses the text.

Primary metric, for the headline, the differences and the tests alike: Dice per test CASE (the case's slices
stacked into a volume, mean of WT/TC/ET; the evaluation's ``per_case``), held per row and test-text setting as
a (seeds, cases) matrix; one value per seed = its mean over the test cases. Reported per row and setting: that
value's mean +- sd (ddof 1) over seeds with the 95 % t-interval, the per-slice Dice as a secondary, untested
column, the report-based semantic preservation score, three fusion metrics of the learned fused image (Qabf,
SSIM, VIF) and the training seconds. Then one comparison family per reference (experiments/stats.py): every
row and setting against the fusion-cnn row it names in ``against`` (default ``bilevel-cnn``; its own test
split, with texts, which a fusion-cnn ignores), with the difference of means, a hierarchical bootstrap 95 %
interval (cases, then seeds within each row), cases up, the paired t-test over the cases of the seed-averaged
values, Holm over the family, TOST with a 0.02 Dice margin and the reading (experiments/stats.py: better / worse
needs Holm p < 0.05 and a 95 % interval clear of 0; level needs TOST p < 0.05 and a 90 % interval inside the
margin; else undecided). A last family asks whether the nets use their texts: each text-guided
row with texts against the same runs without (each its own reference; Holm over those rows). Validation curves go to experiments/results/text_curves/. Records go to
experiments/results/text_runs/.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stats
import study
from study_report import interval, load_runs, plot_curves

REGIONS = ("WT", "TC", "ET")
FUSION = ("Qabf", "SSIM", "VIF")


def _scores(metrics: dict[str, Any]) -> dict[str, Any]:
    """Dice per slice (regions and mean), Dice per case (mean of regions), semantic score, fusion metrics."""
    per_slice = metrics["segmentation"]["per_slice"]
    dice = {r: per_slice[r]["dice"] for r in REGIONS}
    return {"dice": {**dice, "mean": float(np.mean(list(dice.values())))},
            "case_dice": {c: float(np.mean([v[r]["dice"] for r in REGIONS])) for c, v in metrics["per_case"].items()},
            "semantic": metrics["semantic"]["score"],
            "fusion": {k: metrics["fusion"]["learned"].get(k) for k in FUSION} if metrics["fusion"]["learned"] else {}}


def train_and_score(name: str, row: dict[str, Any], seed: int, spec: dict[str, Any], bench: Path, out: Path,
                    committed: Path) -> Path:
    """Train and evaluate (the study's run_one); a text-guided row again without texts; write
    committed/NAME/seed-S.json."""
    target = committed / name / f"seed-{seed}.json"
    if target.is_file():
        return target
    record = json.loads(study.run_one(name, row, seed, spec["common"], {"laplacian": bench}, out)
                        .read_text(encoding="utf-8"))
    run = out / "runs" / name / f"seed-{seed}" / "run"  # run_one evaluated it with texts
    log = out / "runs" / name / f"seed-{seed}" / "log.txt"
    result = {"row": name, "seed": seed, "options": record["options"], "train_s": record["train_s"],
              "steps": record["steps"], "curve": record["curve"],
              "with_text": _scores(json.loads((run / "eval" / "metrics.json").read_text(encoding="utf-8")))}
    derived = json.loads((run / "config.json").read_text(encoding="utf-8"))["derived"]
    result["text_facts"] = {k: v for k, v in derived.items() if k.startswith(("text_", "alignment_"))}
    if row.get("fusion_model") == "fusion-text":
        study.fuse4seg("evaluate", "--run", str(run), "--split", "test", "--no-texts", log=log)
        result["no_text"] = _scores(json.loads((run / "eval" / "metrics.json").read_text(encoding="utf-8")))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return target


def case_matrix_of(runs: list[dict[str, Any]], key: str) -> tuple[list[str], np.ndarray]:
    """(cases, (seeds, cases) matrix) of Dice per case (mean of regions) of a row's runs under ``key``
    (with_text or no_text)."""
    return stats.case_matrix([r[key]["case_dice"] for r in runs])


def label_of(name: str, key: str, has_no_text: bool) -> str:
    """A compared row's label: the row, with its test-text setting where it has both."""
    return f"{name} (test text {'yes' if key == 'with_text' else 'no'})" if has_no_text else name


def families_of(rows: dict[str, list[dict[str, Any]]], spec: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Reference row -> its comparison family (:func:`stats.compare_family`): every other row and test-text setting
    that names it in ``against`` (default: the spec's reference), on the cases they all share; Holm within it."""
    members: dict[str, dict[str, tuple[list[str], np.ndarray]]] = {}
    for name, runs in rows.items():
        against = spec["rows"][name].get("against", spec["reference"])
        if against == name or against not in rows:
            continue
        for key in ("with_text", "no_text"):
            if key in runs[0]:
                members.setdefault(against, {})[label_of(name, key, "no_text" in runs[0])] = case_matrix_of(runs, key)
    out = {}
    for ref_name, compared in members.items():
        ref_cases, ref = case_matrix_of(rows[ref_name], "with_text")
        keep = [c for c in ref_cases if all(c in cases for cases, _ in compared.values())]
        pick = {name: m[:, [cases.index(c) for c in keep]] for name, (cases, m) in compared.items()}
        out[ref_name] = stats.compare_family(pick, ref[:, [ref_cases.index(c) for c in keep]], seed=0)
    return out


def text_use_family(rows: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every row evaluated both ways, with texts against without (the same runs, on the cases both share), as one
    family. The two settings are paired by run: :func:`stats.compare_family` gets each row's per-run differences
    (with - without) against zero, so the bootstrap resamples cases, then runs, and the paired t and TOST see the
    same seed-averaged differences as they would unpaired; then Holm over the rows."""
    out = []
    for name, runs in rows.items():
        if "no_text" not in runs[0]:
            continue
        (cases, yes), (no_cases, no) = case_matrix_of(runs, "with_text"), case_matrix_of(runs, "no_text")
        keep = [c for c in cases if c in no_cases]
        diff = yes[:, [cases.index(c) for c in keep]] - no[:, [no_cases.index(c) for c in keep]]
        out += stats.compare_family({name: diff}, np.zeros_like(diff), seed=0)
    stats.apply_holm(out)
    return out


def aggregate(committed: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Per row and test-time text setting: Dice per case over seeds, per-slice Dice, semantic score, fusion metrics,
    training time; one comparison family per reference."""
    rows = {name: [json.loads(p.read_text()) for p in sorted((committed / name).glob("seed-*.json"))]
            for name in spec["rows"]}
    rows = {name: runs for name, runs in rows.items() if runs}
    families = families_of(rows, spec)
    out: dict[str, Any] = {"reference": spec["reference"], "margin": stats.MARGIN, "draws": stats.DRAWS,
                           "metric": "Dice per test case (slices stacked), mean of WT/TC/ET", "rows": [],
                           "families": families, "text_use": text_use_family(rows)}
    for name, runs in rows.items():
        against = spec["rows"][name].get("against", spec["reference"])
        for key in ("with_text", "no_text"):
            if key not in runs[0]:
                continue
            label = label_of(name, key, "no_text" in runs[0])
            _, m = case_matrix_of(runs, key)
            entry = {"row": name, "test_text": key == "with_text" and "no_text" in runs[0],
                     "note": spec["rows"][name].get("note", ""), "seeds": len(runs), "steps": runs[0]["steps"],
                     "dice_case": interval(m.mean(axis=1).tolist()),
                     "dice_slice": interval([r[key]["dice"]["mean"] for r in runs]),
                     "regions_slice": {k: float(np.mean([r[key]["dice"][k] for r in runs])) for k in REGIONS},
                     "semantic": interval([r[key]["semantic"] for r in runs]),
                     "fusion": {k: float(np.mean([r[key]["fusion"][k] for r in runs])) for k in FUSION
                                if all(r[key]["fusion"].get(k) is not None for r in runs)},
                     "train_s": float(np.mean([r["train_s"] for r in runs]))}
            vs = next((e for e in families.get(against, []) if e["row"] == label), None)
            if vs is not None:
                entry["vs"] = {"against": against, **vs}
            facts = [r.get("text_facts", {}) for r in runs]
            if facts and "alignment_val_retrieval" in facts[0]:
                entry["alignment_val_retrieval"] = float(np.mean([f["alignment_val_retrieval"] for f in facts]))
                entry["alignment_val_chance"] = facts[0]["alignment_val_chance"]
            out["rows"].append(entry)
    return out


def markdown(agg: dict[str, Any]) -> str:
    """The rows table, then one comparison table per reference."""
    lines = ["# Text-guided fusion against the fusion CNN", "",
             ("Primary metric (headline, differences and tests): Dice per test case (the case's slices stacked, "
              "(WT + TC + ET) / 3); per seed its mean over the test cases; mean ± sd over seeds and the 95 % "
              "t-interval. Secondary, not tested: the per-slice Dice, the report-based semantic preservation score "
              "(share of report fields that agree between the predicted and the true labels) and fusion metrics of "
              "the learned fused image. *test text*: yes = the net read the slices' texts at test time (texts "
              "generated from the true labels: privileged information), no = its 'no text' token. Generated by "
              "`python experiments/text.py`."), "",
             "| row | test text | seeds | steps | Dice per case | 95 % CI | Dice per slice | semantic | "
             + " | ".join(FUSION) + " | train s |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(FUSION) + "---|"]
    for e in agg["rows"]:
        d, sl = e["dice_case"], e["dice_slice"]
        text = "yes" if e["test_text"] else ("no" if "text" in e["row"] else "-")
        fusion = " | ".join(f"{e['fusion'][k]:.3f}" if k in e["fusion"] else "" for k in FUSION)
        lines.append(f"| {e['row']} | {text} | {e['seeds']} | {e['steps']} | {d['mean']:.3f} ± {d['sd']:.3f} | "
                     f"[{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}] | {sl['mean']:.3f} ± {sl['sd']:.3f} | "
                     f"{e['semantic']['mean']:.3f} ± {e['semantic']['sd']:.3f} | {fusion} | {e['train_s']:.0f} |")
    for ref, family in agg["families"].items():
        title = (f"## Against `{ref}`\n\nΔ: row minus `{ref}`, Dice per test case. Interval: hierarchical bootstrap "
                 f"({agg['draws']} draws: cases, then each row's seeds). p: paired t over the {family[0]['cases']} "
                 f"test cases of the seed-averaged values; Holm over this table ({len(family)} comparisons, one "
                 f"family); TOST margin ±{agg['margin']} Dice. Reading: better / worse when Holm p < 0.05 and the 95 % "
                 "interval excludes 0, level when TOST p < 0.05 and the 90 % interval lies inside the margin, else "
                 "undecided.")
        lines += ["", stats.family_markdown(family, title).rstrip()]
    if agg["text_use"]:
        title = ("## Reading the texts at test time: with texts against without, the same runs\n\nΔ: the row "
                 "evaluated with its slices' texts minus the same runs with the 'no text' token, Dice per test case. "
                 "Paired by run: the interval is the hierarchical bootstrap of the per-run differences (cases, "
                 "then runs); p and TOST as above; Holm over this table "
                 f"({len(agg['text_use'])} comparisons, one family).")
        lines += ["", stats.family_markdown(agg["text_use"], title).rstrip()]
    retrieval = [e for e in agg["rows"] if "alignment_val_retrieval" in e]
    if retrieval:
        e = retrieval[0]
        lines += ["", (f"The semantic loss's image-text model retrieves the right text for a val slice's fused image "
                       f"{e['alignment_val_retrieval']:.1%} of the time (chance {e['alignment_val_chance']:.1%}; mean "
                       "over seeds).")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Train and score the missing (row, seed) pairs, then aggregate into experiments/results/."""
    args, spec, out = study.experiment_args(HERE / "text.toml", __doc__.splitlines()[0], argv)
    committed = args.results / "text_runs"
    if not args.report_only:
        benches = study.prepare_data(spec, out, out / "data_log.txt")
        jobs = [(name, row, seed) for seed in range(spec["seeds"]) for name, row in spec["rows"].items()]
        study.run_all(train_and_score, [(*job, spec, benches["laplacian"], out, committed) for job in jobs], args.jobs)
    agg = aggregate(committed, spec)
    plot_curves(load_runs(committed), args.results / "text_curves")  # validation Dice during training
    (args.results / "text.json").write_text(json.dumps(agg, indent=1) + "\n", encoding="utf-8")
    text = markdown(agg)
    (args.results / "text.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
