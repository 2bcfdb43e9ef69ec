"""Issue 23's target at power: learned fused images against the mean and Laplacian images on a 48-case hold-out.

    python experiments/target.py --out /tmp/study     # fusion nets, segmenters, hold-out scores (2 jobs), tables
    python experiments/target.py --report-only         # the tables from the committed records
    python experiments/target.py --design confirm.toml --out /tmp/study   # the confirmation (results/confirm.md)

With the study's 8 test cases nothing, not even T1ce alone (+0.054), could be shown more segmentable than the mean
image (experiments/results/converge.md): the target's first condition was beyond the study's power. Here the
candidates of experiments/target.toml, fixed before the hold-out existed, are tested on fresh cases:

- training data: the study's release and split, unchanged (fusion nets: the study's options, 800 outer steps);
- hold-out: a second phantom release ([holdout] of target.toml), every case a test case, sliced as the study's
  benchmarks and fused by the same rule or by each seed's frozen fusion net;
- segmentability: a segmenter from scratch on each frozen image of the training split, at one budget for every
  image (segmenter_steps), seed s for fusion seed s, its best checkpoint picked on the study's validation split,
  scored on the hold-out cases (Dice per case, mean of WT/TC/ET);
- fusion quality: Qabf of each image per hold-out case (mean over its slices);
- statistics (experiments/stats.py): each family against the mean image and against the Laplacian image, Holm
  over each, hierarchical bootstrap over seeds and cases, TOST (margin 0.02); the Qabf family against the Laplacian
  image the same way. The target is met by a learned image read "better" in both segmentability families and
  "better" or "level" in Qabf (Qabf at least the Laplacian image's).
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

import frontier
import stats
import study
from study_report import row_records

#: The design in use (``--design``, default target.toml): candidates, fixed images, seeds, budget, hold-out release.
TARGET: dict[str, Any] = {}
HOLDOUT_SPLIT = [0.0, 0.0, 1.0]
#: The weighted means of T1ce and FLAIR (the frontier's) among the fixed images, by T1ce weight.
WEIGHTS = (1.0,)
#: The fixed images: setting -> (benchmark image, segmenter inputs): a fusion rule of the study's benchmarks or a
#: weighted mean, fed as the fused channel; or the sources stacked (the stretch goal), read from the Laplacian one.
FIXED: dict[str, tuple[str, str]] = {
    "mean": ("mean", "fused"),
    "laplacian": ("laplacian", "fused"),
    **{frontier.weighted_name(w): (frontier.weighted_name(w), "fused") for w in WEIGHTS},
    "dual": ("laplacian", "t1ce,flair"),
}
REFERENCES = ("mean", "laplacian")


def load_design(path: Path) -> str:
    """Load a design into :data:`TARGET`; returns its name (the file's stem: its records go to results/NAME_runs,
    its tables to results/NAME.md and .json)."""
    TARGET.clear()
    TARGET.update(tomllib.loads(path.read_text(encoding="utf-8")))
    return path.stem


def seeds() -> range:
    """The design's seeds: ``seeds`` of them from ``first_seed`` (default 0)."""
    first = TARGET.get("first_seed", 0)
    return range(first, first + TARGET["seeds"])


def fixed() -> list[str]:
    """The design's fixed images (``fixed``, default every one of :data:`FIXED`)."""
    return TARGET.get("fixed", list(FIXED))


def holdout_home(out: Path) -> Path:
    """OUT's directory of the design's hold-out release and its benchmarks ([holdout] dir, default "holdout")."""
    return out / TARGET["holdout"].get("dir", "holdout")


def candidates() -> dict[str, dict[str, Any]]:
    """Candidate name -> its row options (a study.toml row, or target.toml's own table)."""
    return {name: study.SPEC["rows"][name] if row == "study" else row for name, row in TARGET["candidates"].items()}


def settings() -> list[str]:
    """Every setting: the candidates first (the longest jobs), then the fixed images."""
    return [*TARGET["candidates"], *fixed()]


def prepare(out: Path) -> dict[str, Path]:
    """The study's release and rule benchmarks, the hold-out release and its rule benchmarks, the weighted images;
    returns "study-RULE" / "holdout-RULE" -> benchmark directory."""
    benches = {f"study-{k}": v for k, v in study.prepare_data(study.SPEC, out, out / "data_log.txt").items()}
    held = {**study.SPEC["data"], "cases": TARGET["holdout"]["cases"], "split": HOLDOUT_SPLIT,
            "release_seed": TARGET["holdout"]["release_seed"], "fusion_rules": ["mean", "laplacian"]}
    home = holdout_home(out)
    home.mkdir(parents=True, exist_ok=True)
    benches.update({f"holdout-{k}": v for k, v in study.prepare_data({"data": held}, home, home / "data_log.txt").items()})
    for w in WEIGHTS:
        name = frontier.weighted_name(w)
        benches[f"study-{name}"] = frontier.build_weighted(w, out)
        benches[f"holdout-{name}"] = frontier.build_weighted(w, home, home / "release", HOLDOUT_SPLIT)
    return benches


def images(setting: str, seed: int, out: Path, benches: dict[str, Path]) -> tuple[Path, Path, str, dict[str, Any]]:
    """(training benchmark, hold-out benchmark, segmenter inputs, the fusion run's record or {}) of one setting and
    seed; a candidate's fusion net is trained (study.run_one, resuming) and its frozen image stored on both."""
    if setting in FIXED:
        image, inputs = FIXED[setting]
        return benches[f"study-{image}"], benches[f"holdout-{image}"], inputs, {}
    row = candidates()[setting]
    record = study.run_one(f"target-{setting}", row, seed, study.SPEC["common"],
                           {"laplacian": benches["study-laplacian"]}, out)
    work = out / "runs" / f"target-{setting}" / f"seed-{seed}"
    options = study.row_options(row)
    log = work / "log.txt"
    built = []
    for bench, release, split in ((work / "bench-learned", out / "release", None),
                                  (work / "holdout-learned", holdout_home(out) / "release", HOLDOUT_SPLIT)):
        if not (bench / "brats_fuse.h5").is_file():
            study.build_learned(fusion_checkpoint(setting, seed, out), options, release, bench, log, split)
        built.append(bench)
    return built[0], built[1], "fused", json.loads(record.read_text(encoding="utf-8"))


def case_qabf(h5: Path) -> dict[str, float]:
    """Hold-out case -> mean Qabf of the benchmark's stored fused image against T1ce and FLAIR over its test slices
    (0-255 scale, as the study's fusion metrics)."""
    import h5py

    from fuse4seg.metrics.fusion_structure import qabf

    with h5py.File(h5, "r") as f:
        fused, src = f["test/fused"][:, 0] * 255.0, f["test/source"][:][:, [1, 3]] * 255.0
        cases = list(f["test/case_id"].asstr()[()])
    per_slice: dict[str, list[float]] = {}
    for i, case in enumerate(cases):
        per_slice.setdefault(case, []).append(qabf(fused[i], src[i]))
    return {case: float(np.mean(v)) for case, v in sorted(per_slice.items())}


def base_weights(checkpoint: Path) -> list[float] | None:
    """The learned base's weights per fusion input (fusion-cnn output "weighted": softmax(BASE_GAIN * logits)) of a
    run's checkpoint; None for a fusion net without them."""
    import torch

    from fuse4seg.models.fusion import mixing_weights

    logits = torch.load(checkpoint, map_location="cpu", weights_only=True)["models"]["fusion"].get("base_logits")
    return None if logits is None else mixing_weights(logits).tolist()


def fusion_checkpoint(setting: str, seed: int, out: Path) -> Path:
    """The frozen fusion net of a candidate's seed (the checkpoint its images were built from)."""
    return out / "runs" / f"target-{setting}" / f"seed-{seed}" / "run" / "best.pt"


def backfill_base_weights(committed: Path, out: Path) -> None:
    """Add ``fusion_base_weights`` to the candidates' records made before it was recorded, from their checkpoints."""
    for setting in TARGET["candidates"]:
        for path in sorted((committed / setting).glob("seed-*.json")):
            record = json.loads(path.read_text(encoding="utf-8"))
            checkpoint = fusion_checkpoint(setting, record["seed"], out)
            if "fusion_base_weights" not in record and checkpoint.is_file():
                study.write_record(path, {**record, "fusion_base_weights": base_weights(checkpoint)})


def run_setting(setting: str, seed: int, out: Path, benches: dict[str, Path], committed: Path) -> Path:
    """One (setting, seed): its images, a segmenter from scratch on the training image, scored on the hold-out;
    writes committed/SETTING/seed-S.json."""
    target = committed / setting / f"seed-{seed}.json"
    if target.is_file():
        return target
    train_bench, holdout_bench, inputs, fusion = images(setting, seed, out, benches)
    row = {"mode": "direct", "inputs": inputs, "benchmark": "image", "steps": TARGET["segmenter_steps"]}
    name = f"target-seg-{setting}"
    study_record = json.loads(study.run_one(name, row, seed, study.SPEC["common"], {"image": train_bench}, out)
                              .read_text(encoding="utf-8"))
    run = out / "runs" / name / f"seed-{seed}" / "run"
    study.fuse4seg("evaluate", "--run", str(run), "--benchmark", str(holdout_bench), "--split", "test",
                   log=run.parent / "log.txt")
    held = study.scores(run)
    record = {"setting": setting, "seed": seed, "options": study_record["options"],
              "case_dice": held["case_dice"], "dice": held["dice"],
              "case_qabf": case_qabf(holdout_bench / "brats_fuse.h5") if inputs == "fused" else None,
              "study_test_case_dice": study_record["case_dice"], "curve": study_record["curve"],
              "best_step": study_record["best_step"], "train_s": study_record["train_s"],
              "fusion_run": {k: fusion[k] for k in ("options", "fusion", "train_s", "wall_s", "case_dice")
                             if k in fusion} or None,
              "fusion_base_weights": base_weights(fusion_checkpoint(setting, seed, out)) if fusion else None}
    study.write_record(target, record)
    return target


def summarise(committed: Path) -> dict[str, Any]:
    """Per setting: hold-out segmentability and Qabf over seeds, converged curves; the two segmentability families,
    the Qabf family and the target table."""
    seg, qab, table = {}, {}, []
    for setting in settings():
        runs = row_records(committed / setting)
        if not runs:
            continue
        seg[setting] = stats.case_matrix([stats.case_scores(r["case_dice"]) for r in runs])
        if runs[0]["case_qabf"] is not None:
            qab[setting] = stats.case_matrix([r["case_qabf"] for r in runs])
        study_test = stats.case_matrix([stats.case_scores(r["study_test_case_dice"]) for r in runs])[1]
        table.append({"setting": setting, "learned": setting not in FIXED, "seeds": len(runs),
                      "seed_ids": [r["seed"] for r in runs],
                      "cases": len(seg[setting][0]), "segmentability": seg[setting][1].mean(axis=1).tolist(),
                      "study_test": study_test.mean(axis=1).tolist(),
                      "qabf": qab[setting][1].mean(axis=1).tolist() if setting in qab else None,
                      "converged": sum(frontier.converged(r["curve"]) for r in runs),
                      "base_weights": [r.get("fusion_base_weights") for r in runs],
                      "train_s": [r["train_s"] + (r["fusion_run"] or {}).get("wall_s", 0.0) for r in runs]})
    families = {ref: stats.compare_family(*stats.aligned({k: v for k, v in seg.items() if k != ref}, seg[ref]))
                for ref in REFERENCES if ref in seg}
    qabf_family = (stats.compare_family(*stats.aligned({k: v for k, v in qab.items() if k != "laplacian"},
                                                       qab["laplacian"])) if "laplacian" in qab else [])
    reference = next((t for t in table if t["setting"] == "mean"), None)
    target = []
    for t in table:
        if not t["learned"]:
            continue
        # What one more fusion run gives: its image's segmentability less the mean image's (mean over its seeds).
        one_run = (stats.prediction_interval(np.subtract(t["segmentability"], np.mean(reference["segmentability"])))
                   if reference is not None and t["seeds"] > 1 else None)
        read = {ref: next((e["reading"] for e in families.get(ref, []) if e["row"] == t["setting"]), "")
                for ref in REFERENCES}
        q = next((e["reading"] for e in qabf_family if e["row"] == t["setting"]), "")
        target.append({"setting": t["setting"], **read, "qabf": q, "one_run_vs_mean": one_run,
                       "met": all(v == "better" for v in read.values()) and q in ("better", "level")})
    return {"holdout": TARGET["holdout"], "segmenter_steps": TARGET["segmenter_steps"], "table": table,
            "families": families, "qabf_family": qabf_family, "target": target}


def markdown(summary: dict[str, Any]) -> str:
    """The settings table, the three families and the target table."""
    h = summary["holdout"]
    lines = [(f"Hold-out: {h['cases']} phantom cases (release seed {h['release_seed']}); segmenters from scratch at "
             f"{summary['segmenter_steps']} steps on each frozen image of the study's training split (mean ± sd over "
             "seeds; train s includes the fusion net's run):"), "",
             ("| setting | image | seeds | hold-out cases | segmentability, hold-out | study test (8 cases) | "
             "Qabf, hold-out | curves converged | train s |"), "|---|---|---|---|---|---|---|---|---|"]
    for t in summary["table"]:
        q = "" if t["qabf"] is None else stats.mean_sd(t["qabf"])
        lines.append(f"| {t['setting']} | {'learned' if t['learned'] else 'fixed'} | {t['seeds']} | {t['cases']} | "
                     f"{stats.mean_sd(t['segmentability'])} | {stats.mean_sd(t['study_test'])} | {q} | "
                     f"{t['converged']}/{t['seeds']} | {np.mean(t['train_s']):.0f} |")
    based = [t for t in summary["table"] if any(w is not None for w in t.get("base_weights") or [])]
    if based:
        lines += ["", ("Learned base of the residual (fusion-cnn output \"weighted\", starting at 0.5): its T1ce "
                  "weight per seed, beside that seed's hold-out segmentability and Qabf:"), "",
                  "| setting | seed | T1ce weight | segmentability, hold-out | Qabf, hold-out |", "|---|---|---|---|---|"]
        for t in based:
            for seed, w, dice, q in zip(t["seed_ids"], t["base_weights"], t["segmentability"], t["qabf"], strict=True):
                lines.append(f"| {t['setting']} | {seed} | {w[0]:.2f} | {dice:.3f} | {q:.3f} |")
    for ref, entries in summary["families"].items():
        lines += ["", stats.family_markdown(entries, f"Segmentability against {ref} (hold-out cases, Holm over "
                                                     f"{len(entries)}):").rstrip()]
    if summary["qabf_family"]:
        lines += ["", stats.family_markdown(summary["qabf_family"], "Qabf against the Laplacian image (hold-out "
                                            f"cases, Holm over {len(summary['qabf_family'])}):").rstrip()]
    lines += ["", ("The target (segmentability better than both references; Qabf better than or level with the "
              "Laplacian image's; one run: the 95 % prediction interval of one more fusion run's segmentability less "
              "the mean image's, from the seeds above):"), "",
              "| candidate | vs mean | vs laplacian | Qabf vs laplacian | target met | one run, vs mean image |",
              "|---|---|---|---|---|---|"]
    for t in summary["target"]:
        pi = t.get("one_run_vs_mean")
        lines.append(f"| {t['setting']} | {t['mean']} | {t['laplacian']} | {t['qabf']} | "
                     f"{'yes' if t['met'] else 'no'} | {'' if pi is None else f'{pi[0]:+.3f} to {pi[1]:+.3f}'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Train and score what is missing, then write experiments/results/target.{md,json}."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--design", type=Path, default=HERE / "target.toml", help="the design (target.toml, confirm.toml)")
    known, rest = first.parse_known_args(argv)
    design = known.design if known.design.is_absolute() or known.design.exists() else HERE / known.design
    if not design.is_file():
        first.error(f"--design: no such file: {known.design}")
    name = load_design(design)
    args, _, out = study.experiment_args(HERE / "study.toml", __doc__.splitlines()[0], rest)
    committed = args.results / f"{name}_runs"
    failures = []
    if not args.report_only:
        benches = prepare(out)
        jobs = [(s, seed, out, benches, committed) for s in settings() for seed in seeds()]
        failures = study.run_grid(run_setting, jobs, args.jobs, lambda job: f"{job[0]} seed {job[1]}")
        backfill_base_weights(committed, out)
    summary = summarise(committed)
    return study.finish_report(args.results, name, summary, markdown(summary), failures)


if __name__ == "__main__":
    sys.exit(main())
