"""The fusion-segmentation frontier (issue 23): every way of making one fused channel, as (fusion quality,
segmentability) points, one per seed, with each method's Pareto front.

    python experiments/frontier.py --out /tmp/study     # the weighted-mean images' segmenters (2 jobs), the table
    python experiments/frontier.py --report-only         # the table and plot from the committed records

x = fusion quality of the fused image on the test split: Qabf (and the SSIM sum to the two sources).
y = segmentability: test Dice per case (the case's slices stacked, mean of WT/TC/ET) of a segmenter trained from
scratch on the frozen image at one budget, 600 steps (the study's direct rows and every retrain).

Methods and where their points come from (all on the study's phantom release, slices and split):
- classical rules (mean, Laplacian, max, PCA, wavelet): the study's segmenters on each rule's benchmark;
- the weighted mean w T1ce + (1 - w) FLAIR, w = 0.6 ... 1.0 (w = 0.5 is the mean rule): this script trains
  them, a benchmark per w built by the library's builder with that fusion function;
- bi-level at each lambda_seg, with the full fusion loss and with its edge terms only: the study's rows with
  ``retrain = true`` (the run's best.pt fusion, frozen, then the retrain);
- joint and two-stage: the last probe of experiments/trajectory.py (the row's final fusion, frozen, retrained);
- the single-channel ceiling (joint without fusion loss, 5 seeds, 1,500 steps): the study's ceiling-1ch-long row.
The classical images have one Qabf (no seed); a learned image's Qabf is its run's. A bi-level or ceiling image is
its run's best.pt (chosen by validation Dice, as `fuse4seg train` keeps it); a joint or two-stage image is the
row's last probe (last.pt at the row's final step). "train s": the segmenter alone for fixed images; learning the
image plus its retrained segmenter for study rows; the whole probed run (its restarts included) for the trajectory's
joint and two-stage rows.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stats
import study
from study_report import row_records

WEIGHTS = (0.6, 0.7, 0.8, 0.9, 1.0)
SEEDS = (0, 1, 2)
RULES = {"mean": "retrain-mean", "laplacian": "retrain-laplacian", "max": "direct-max", "pca": "direct-pca",
         "wavelet": "direct-wavelet"}
#: Learned methods: name -> the study rows whose retrained images are its points.
LEARNED = {
    "bi-level, full fusion loss": ("bilevel-lambda0p25", "bilevel-lambda1", "bilevel-lambda4", "bilevel-lambda16",
                                   "bilevel-lambda64"),
    "bi-level, edge terms only": ("bilevel-edges-lambda4", "bilevel-edges-lambda16"),
    "bi-level, constrained (--fusion-budget)": ("bilevel-budget1p2", "bilevel-budget1p0"),
    "bi-level, 1 - Qabf + SSIM as fusion loss": ("bilevel-qabf-lambda1", "bilevel-qabf-lambda4"),
    "bi-level, 1 - Qabf + SSIM, constrained": ("bilevel-qabf-budget1p0",),
    "ceiling (joint, no fusion loss)": ("ceiling-1ch-long", "ceiling-1ch-3k"),
}


def weighted_name(w: float) -> str:
    """Row name of the weighted mean with T1ce weight ``w``, e.g. weighted-t1ce0.8."""
    return f"weighted-t1ce{w:g}"


def weighted_fusion(w: float) -> Any:
    """(N, 2, H, W) T1ce, FLAIR in [0, 1] -> (N, H, W) w T1ce + (1 - w) FLAIR."""
    def fuse(sources: np.ndarray) -> np.ndarray:
        """The weighted mean of the two sources."""
        return w * sources[:, 0] + (1.0 - w) * sources[:, 1]
    fuse.__name__ = weighted_name(w)
    return fuse


def build_weighted(w: float, out: Path, release: Path | None = None, split: list[float] | None = None) -> Path:
    """OUT/bench-weighted-t1ceW: the study's slices and split (or ``release`` and ``split``, for a hold-out), fused
    by the weighted mean (built once)."""
    from fuse4seg.data.build.builder import build_benchmark

    bench = out / f"bench-{weighted_name(w)}"
    if not (bench / "brats_fuse.h5").is_file():
        data = study.SPEC["data"]
        build_benchmark(bench, brats=str(release or out / "release"), size=data["size"],
                        slices_per_case=data["slices_per_case"], split=tuple(split or data["split"]), seed=data["seed"],
                        fusion_inputs=("t1ce", "flair"), workers=2, overwrite=True, fusion_fn=weighted_fusion(w),
                        fusion_name=weighted_name(w), progress=False)
    return bench


def train_weighted(w: float, seed: int, out: Path, committed: Path) -> Path:
    """The segmenter on the weighted-mean image (the direct rows' options); committed/NAME/seed-S.json."""
    name = weighted_name(w)
    target = committed / name / f"seed-{seed}.json"
    if not target.is_file():
        row = {"mode": "direct", "inputs": "fused", "benchmark": name}
        result = study.run_one(name, row, seed, study.SPEC["common"], {name: out / f"bench-{name}"}, out)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result, target)
    return target


def image_quality(h5: Path, laplacian: Path) -> dict[str, float]:
    """Qabf and SSIM sum of a benchmark's stored fused image against T1ce and FLAIR, mean over the test slices;
    and its fusion loss (the training default's weights, and the edge terms only) over that of the Laplacian
    image of the same slices: what the upper level's fusion term prefers."""
    import h5py
    import torch

    from fuse4seg.losses import fusion_loss
    from fuse4seg.metrics.fusion import fusion_metrics

    with h5py.File(h5, "r") as f, h5py.File(laplacian, "r") as g:
        fused, src, lap = f["test/fused"][:], f["test/source"][:][:, [1, 3]], g["test/fused"][:]
    scores = [fusion_metrics(fused[i, 0] * 255.0, [src[i, 0] * 255.0, src[i, 1] * 255.0]) for i in range(len(fused))]
    out = {k: float(np.mean([s[k] for s in scores])) for k in ("Qabf", "SSIM")}
    sources = torch.from_numpy(src)
    for name, weights in (("fusion_loss_vs_laplacian", None), ("edge_loss_vs_laplacian", {"intensity": 0.0})):
        mine = float(fusion_loss(torch.from_numpy(fused), sources, weights)[0])
        out[name] = mine / float(fusion_loss(torch.from_numpy(lap), sources, weights)[0])
    return out


def points(out: Path | None, committed: Path) -> list[dict[str, Any]]:
    """Every (method, setting, seed) point: Qabf, SSIM, segmentability."""
    pts: list[dict[str, Any]] = []
    runs = HERE / "results" / "study_runs"
    quality_file = committed / "image_quality.json"
    quality = json.loads(quality_file.read_text(encoding="utf-8")) if quality_file.is_file() else {}
    fixed = {**{rule: (runs / row, f"bench-{rule}") for rule, row in RULES.items()},
             **{weighted_name(w): (committed / weighted_name(w), f"bench-{weighted_name(w)}") for w in WEIGHTS}}
    for setting, (folder, bench) in fixed.items():
        if "edge_loss_vs_laplacian" not in quality.get(setting, {}) and out is not None \
                and (out / bench / "brats_fuse.h5").is_file():
            quality[setting] = image_quality(out / bench / "brats_fuse.h5", out / "bench-laplacian" / "brats_fuse.h5")
        method = "classical rule" if setting in RULES else "weighted mean of T1ce and FLAIR"
        for r in row_records(folder):
            pts.append({"method": method, "setting": setting, "seed": r["seed"], **quality.get(setting, {}),
                        "segmentability": stats.case_mean(r["case_dice"]), "curve": r["curve"], "train_s": r["train_s"]})
    quality_file.parent.mkdir(parents=True, exist_ok=True)
    quality_file.write_text(json.dumps(quality, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    for method, rows in LEARNED.items():
        for row in rows:
            for r in row_records(runs / row):
                if "retrained" in r:
                    pts.append({"method": method, "setting": row, "seed": r["seed"], "Qabf": r["fusion"]["Qabf"],
                                "SSIM": r["fusion"]["SSIM"], "segmentability": stats.case_mean(r["retrained"]["case_dice"]),
                                "curve": r["retrained"]["curve"], "learning_curve": r["curve"],
                                "train_s": r["train_s"] + r["retrained"]["train_s"]})
    for row in ("joint", "two-stage"):
        for r in row_records(HERE / "results" / "trajectory_runs" / row):
            last = r["points"][-1]
            pts.append({"method": row, "setting": f"{row} (step {last['step']})", "seed": r["seed"],
                        "Qabf": last["fusion_stored"]["Qabf"], "SSIM": last["fusion_stored"]["SSIM"],
                        "segmentability": stats.case_mean(last["case_dice"]), "curve": last["curve"],
                        "train_s": r["train_s"]})
    return pts


def converged(curve: list[list[float]], tol: float = 0.005) -> bool:
    """The convergence rule: the best validation Dice of the last 25 % of steps is within ``tol`` of the best
    before them (it did not improve by more than ``tol``)."""
    if len(curve) < 4:
        return False
    last = curve[-1][0]
    before = [v for s, v in curve if s <= 0.75 * last]
    after = [v for s, v in curve if s > 0.75 * last]
    return bool(before and after and max(after) - max(before) <= tol)


def settings(pts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, setting): mean and sd over seeds of each coordinate, and how many seeds' curves converged."""
    out = []
    for key in dict.fromkeys((p["method"], p["setting"]) for p in pts):
        mine = [p for p in pts if (p["method"], p["setting"]) == key]
        entry = {"method": key[0], "setting": key[1], "seeds": len(mine),
                 "converged": sum(converged(p["curve"]) for p in mine),
                 "learning_converged": (sum(converged(p["learning_curve"]) for p in mine)
                                        if all("learning_curve" in p for p in mine) else None)}
        for coord in ("Qabf", "SSIM", "segmentability", "train_s"):
            v = np.array([p[coord] for p in mine if coord in p], dtype=float)
            entry[coord] = float(v.mean()) if len(v) else float("nan")
            entry[coord + "_sd"] = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
        out.append(entry)
    return out


def pareto(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries no other entry beats on both Qabf and segmentability (ties are kept), by Qabf."""
    front = [e for e in entries if not any(o["Qabf"] >= e["Qabf"] and o["segmentability"] >= e["segmentability"]
                                           and (o["Qabf"], o["segmentability"]) != (e["Qabf"], e["segmentability"])
                                           for o in entries)]
    return sorted(front, key=lambda e: e["Qabf"])


def markdown(table: list[dict[str, Any]]) -> str:
    """Every setting, then each method's Pareto front, then the front over all methods."""
    def line(e: dict[str, Any]) -> str:
        """One table line."""
        sd = (lambda k: "" if np.isnan(e[k + "_sd"]) else f" ± {e[k + '_sd']:.3f}")
        learned = "" if e.get("learning_converged") is None else f"{e['learning_converged']}/{e['seeds']}"
        return (f"| {e['method']} | {e['setting']} | {e['seeds']} | {e['Qabf']:.3f}{sd('Qabf')} | "
                f"{e['SSIM']:.3f}{sd('SSIM')} | {e['segmentability']:.3f}{sd('segmentability')} | "
                f"{e['converged']}/{e['seeds']} | {learned} | {e['train_s']:.0f} |")
    head = [("| method | setting | seeds | Qabf | SSIM (sum over both sources) | segmentability (retrained Dice per "
            "case) | segmenter curves converged | learning curves converged | train s |"),
            "|---|---|---|---|---|---|---|---|---|"]
    parts = ["All settings (mean ± sd over seeds):", "", *head, *map(line, table), ""]
    for method in dict.fromkeys(e["method"] for e in table):
        parts += [f"Pareto front of {method}:", "", *head,
                  *map(line, pareto([e for e in table if e["method"] == method])), ""]
    parts += ["Pareto front over all methods:", "", *head, *map(line, pareto(table)), ""]
    return "\n".join(parts)


def plot(pts: list[dict[str, Any]], table: list[dict[str, Any]], path: Path) -> None:
    """Qabf against segmentability: one marker per seed (small), the setting's mean with sd bars, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    for i, method in enumerate(dict.fromkeys(e["method"] for e in table)):
        colour = f"C{i}"
        mine = [p for p in pts if p["method"] == method]
        ax.scatter([p["Qabf"] for p in mine], [p["segmentability"] for p in mine], s=8, color=colour, alpha=0.35)
        rows = sorted((e for e in table if e["method"] == method), key=lambda e: e["Qabf"])
        ax.errorbar([e["Qabf"] for e in rows], [e["segmentability"] for e in rows],
                    xerr=[0 if np.isnan(e["Qabf_sd"]) else e["Qabf_sd"] for e in rows],
                    yerr=[0 if np.isnan(e["segmentability_sd"]) else e["segmentability_sd"] for e in rows],
                    fmt="o-" if len(rows) > 1 and method != "classical rule" else "o", color=colour, capsize=2,
                    label=method, markersize=4)
        if method in ("classical rule", "weighted mean of T1ce and FLAIR"):
            for e in rows:
                ax.annotate(e["setting"].replace("weighted-", ""), (e["Qabf"], e["segmentability"]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("fusion quality: Qabf of the fused test image")
    ax.set_ylabel("segmentability: retrained test Dice per case")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Train the weighted-mean segmenters that are missing, then write experiments/results/frontier.{md,json,png}."""
    args, _, out = study.experiment_args(HERE / "study.toml", __doc__.splitlines()[0], argv)
    committed = args.results / "frontier_runs"
    if not args.report_only:
        study.prepare_data(study.SPEC, out, out / "data_log.txt")
        for w in WEIGHTS:
            build_weighted(w, out)
        study.run_all(train_weighted, [(w, s, out, committed) for w in WEIGHTS for s in SEEDS], args.jobs)
    pts = points(None if args.report_only else out, committed)
    table = settings(pts)
    text = markdown(table)
    (args.results / "frontier.md").write_text(text, encoding="utf-8")
    kept = [{k: v for k, v in p.items() if k not in ("curve", "learning_curve")} for p in pts]
    (args.results / "frontier.json").write_text(json.dumps({"settings": table, "points": kept}, indent=1) + "\n",
                                                encoding="utf-8")
    plot(pts, table, args.results / "frontier.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
