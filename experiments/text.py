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
the network uses the text. Reported per row: Dice (mean of WT, TC, ET per slice) mean +- sd over seeds with
the 95 % t-interval, the paired Wilcoxon test over the test cases against ``bilevel-cnn`` (Dice per case
averaged over seeds), the report-based semantic preservation score, three fusion metrics of the learned fused
image (Qabf, SSIM, VIF) and the training seconds; validation curves go to experiments/results/text_curves/.
Records go to experiments/results/text_runs/.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

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


def aggregate(committed: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Per row and test-time text setting: Dice over seeds, paired test against the reference, semantic score,
    fusion metrics, training time."""
    from scipy import stats

    rows = {name: [json.loads(p.read_text()) for p in sorted((committed / name).glob("seed-*.json"))]
            for name in spec["rows"]}
    rows = {name: runs for name, runs in rows.items() if runs}

    def case_means(runs: list[dict[str, Any]], key: str) -> dict[str, float]:
        """Test case -> Dice (mean of regions) averaged over seeds."""
        return {c: float(np.mean([r[key]["case_dice"][c] for r in runs])) for c in runs[0][key]["case_dice"]}

    out: dict[str, Any] = {"reference": spec["reference"], "rows": []}
    for name, runs in rows.items():
        against = spec["rows"][name].get("against", spec["reference"])
        ref = case_means(rows[against], "with_text") if against in rows and against != name else None
        for key in ("with_text", "no_text"):
            if key not in runs[0]:
                continue
            entry = {"row": name, "test_text": key == "with_text" and "no_text" in runs[0],
                     "note": spec["rows"][name].get("note", ""), "seeds": len(runs), "steps": runs[0]["steps"],
                     "dice": interval([r[key]["dice"]["mean"] for r in runs]),
                     "regions": {k: float(np.mean([r[key]["dice"][k] for r in runs])) for k in REGIONS},
                     "semantic": interval([r[key]["semantic"] for r in runs]),
                     "fusion": {k: float(np.mean([r[key]["fusion"][k] for r in runs])) for k in FUSION
                                if all(r[key]["fusion"].get(k) is not None for r in runs)},
                     "train_s": float(np.mean([r["train_s"] for r in runs]))}
            if ref is not None:
                mine = case_means(runs, key)
                diff = np.array([mine[c] - ref[c] for c in sorted(ref)])
                entry["paired"] = {"against": against, "mean_difference": float(diff.mean()),
                                   "cases_up": int((diff > 0).sum()),
                                   "cases": len(diff),
                                   "wilcoxon_p": float(stats.wilcoxon(diff).pvalue) if np.any(diff) else 1.0}
            facts = [r.get("text_facts", {}) for r in runs]
            if facts and "alignment_val_retrieval" in facts[0]:
                entry["alignment_val_retrieval"] = float(np.mean([f["alignment_val_retrieval"] for f in facts]))
                entry["alignment_val_chance"] = facts[0]["alignment_val_chance"]
            out["rows"].append(entry)
    return out


def markdown(agg: dict[str, Any]) -> str:
    """The table."""
    lines = ["# Text-guided fusion against the fusion CNN", "",
             ("Mean ± sd over seeds of the test split's per-slice Dice ((WT + TC + ET) / 3), its 95 % t-interval, the "
              "paired Wilcoxon test over the test cases (Dice per case averaged over seeds) against the row named in "
              "*against* (its fusion-cnn twin), the report-based semantic "
              "preservation score (share of report fields that agree between the predicted and the true labels), "
              "and fusion metrics of the learned fused image. *test text*: yes = the net read the slices' texts at "
              "test time (texts generated from the true labels: privileged information), no = its 'no text' "
              "token. Generated by `python experiments/text.py`."), "",
             "| row | test text | seeds | steps | Dice | 95 % CI | against | Δ per case | p | semantic | "
             + " | ".join(FUSION) + " | train s |",
             "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(FUSION) + "---|"]
    for e in agg["rows"]:
        d, p = e["dice"], e.get("paired")
        delta = f"{p['mean_difference']:+.3f} ({p['cases_up']}/{p['cases']} up)" if p else ""
        pv = f"{p['wilcoxon_p']:.3g}" if p else ""
        text = "yes" if e["test_text"] else ("no" if "text" in e["row"] else "-")
        fusion = " | ".join(f"{e['fusion'][k]:.3f}" if k in e["fusion"] else "" for k in FUSION)
        lines.append(f"| {e['row']} | {text} | {e['seeds']} | {e['steps']} | {d['mean']:.3f} ± {d['sd']:.3f} | "
                     f"[{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}] | {p['against'] if p else ''} | {delta} | {pv} | "
                     f"{e['semantic']['mean']:.3f} ± {e['semantic']['sd']:.3f} | {fusion} | {e['train_s']:.0f} |")
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
