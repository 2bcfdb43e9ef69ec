"""Aggregate the study's per-run JSON files: the primary metric with intervals, corrected comparisons, curves.

Primary metric, for the headline, the differences and the tests alike: Dice per test CASE (the case's slices
stacked; mean of WT/TC/ET), one value per seed = its mean over the test cases. Per row (n = seeds that finished):
- mean +- sd (ddof 1) over seeds and the 95 % t-interval mean +- t(0.975, n-1) sd / sqrt(n);
- the regions' per-case Dice, HD95 of WT per slice (a secondary, descriptive column), Qabf and training time;
- against the reference row (experiments/stats.py): the difference of means with a hierarchical bootstrap 95 %
  interval over cases and seeds, the paired t-test over the test cases of the seed-averaged values, Holm over the
  whole family (every row against the reference), TOST with a 0.02 margin, and the reading;
- a learning curve PNG: val Dice mean at every --eval-every step, one thin line per seed, the
  seed mean in bold; and one summary PNG of every row's Dice with its interval.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import stats
from scipy import stats as scipy_stats

REGIONS = ("WT", "TC", "ET")


def load_runs(results: Path) -> dict[str, list[dict[str, Any]]]:
    """ROW -> its finished runs (seed order), read from RESULTS/ROW/seed-S.json."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(results.glob("*/seed-*.json"), key=lambda p: (p.parent.name, int(p.stem[5:]))):
        rows.setdefault(path.parent.name, []).append(json.loads(path.read_text(encoding="utf-8")))
    return rows


def row_records(folder: Path) -> list[dict[str, Any]]:
    """The seed-S.json records of one row folder, in seed order ([] when there is none)."""
    paths = sorted(folder.glob("seed-*.json"), key=lambda p: int(p.stem[5:]))
    return [json.loads(p.read_text(encoding="utf-8")) for p in paths]


def variants(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The scored variants of a row: "" (the run itself) and "retrained" where the row retrains."""
    out = {"": [{"seed": r["seed"], **r} for r in runs]}
    if all("retrained" in r for r in runs) and runs:
        out["retrained"] = [{"seed": r["seed"], **r["retrained"]} for r in runs]
    return out


def interval(values: list[float]) -> dict[str, float]:
    """Mean, sd (ddof 1), and the 95 % t-interval half width of ``values`` (nan where n < 2)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    sd = float(x.std(ddof=1)) if n > 1 else math.nan
    half = float(scipy_stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)) if n > 1 else math.nan
    return {"n": n, "mean": float(x.mean()), "sd": sd, "ci95": [float(x.mean()) - half, float(x.mean()) + half]}


def per_case(runs: list[dict[str, Any]]) -> tuple[list[str], np.ndarray]:
    """(cases, (seeds, cases) Dice per case (mean of WT/TC/ET)) of a row's runs."""
    return stats.case_matrix([stats.case_scores(r["case_dice"]) for r in runs])


def region_per_case(runs: list[dict[str, Any]], region: str) -> list[float]:
    """Per seed: the mean over test cases of one region's per-case Dice."""
    return [float(np.mean([d[region] for d in r["case_dice"].values()])) for r in runs]


def summarise(rows: dict[str, list[dict[str, Any]]], spec: dict[str, Any]) -> list[dict[str, Any]]:
    """One summary per scored variant of each row, in the spec's row order, with the family against the
    reference (Holm over every compared variant)."""
    reference = spec["reference"]
    out, compared = [], {}
    for name in [n for n in spec["rows"] if n in rows]:
        for variant, runs in variants(rows[name]).items():
            label = f"{name} ({variant})" if variant else name
            cases, m = per_case(runs)
            if label != reference and "analysis" not in spec["rows"][name]:  # other analyses test their own rows
                compared[label] = (cases, m)
            out.append({
                "row": label, "note": spec["rows"][name].get("note", ""), "seeds": sorted(r["seed"] for r in runs),
                "dice_case": interval(m.mean(axis=1).tolist()),
                **{f"dice_case_{k}": interval(region_per_case(runs, k)) for k in REGIONS},
                "dice_slice": interval([r["dice"]["mean"] for r in runs]),
                "hd95_WT": interval([r["hd95"]["WT"] for r in runs]),
                "steps": runs[0]["steps"], "train_s": float(np.mean([r["train_s"] for r in runs])),
                "qabf": (interval([r["fusion"]["Qabf"] for r in runs]) if runs[0].get("fusion") else None),
                "vs_reference": None,
            })
    if reference in rows and compared:
        family = {e["row"]: e for e in stats.compare_family(*stats.aligned(compared, per_case(rows[reference])))}
        for summary in out:
            summary["vs_reference"] = family.get(summary["row"])
    return out


def _pm(s: dict[str, Any] | None, digits: int = 3) -> str:
    """'mean +- sd' of an interval dict ('' for None)."""
    if s is None:
        return ""
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}" if s["n"] > 1 else f"{s['mean']:.{digits}f}"


def markdown(summaries: list[dict[str, Any]], reference: str) -> str:
    """The study table in Markdown."""
    head = ("| row | seeds | steps | Dice per case ± sd | 95 % CI | WT | TC | ET | Δ vs " + reference +
            " [95 % interval] | cases up | p (Holm) | TOST p | reading | HD95 WT (mm) | Qabf | train s |")
    lines = [head, "|" + "---|" * 16]
    for s in summaries:
        ci = s["dice_case"]["ci95"]
        v = s["vs_reference"]
        lines.append(" | ".join([
            f"| {s['row']}", str(len(s["seeds"])), str(s["steps"]), _pm(s["dice_case"]),
            f"[{ci[0]:.3f}, {ci[1]:.3f}]" if s["dice_case"]["n"] > 1 else "",
            *(_pm(s[f"dice_case_{k}"], 2) for k in REGIONS),
            "" if v is None else f"{v['delta']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]",
            "" if v is None else f"{v['cases_up']}/{v['cases']}",
            "" if v is None else f"{v['p_holm']:.2g}", "" if v is None else f"{v['tost_p']:.2g}",
            "" if v is None else v["reading"],
            _pm(s["hd95_WT"], 1), _pm(s["qabf"], 3), f"{s['train_s']:.0f}",
        ]) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(rows: dict[str, list[dict[str, Any]]], out_dir: Path) -> list[Path]:
    """One PNG per row (and per retrained variant): val Dice mean against step, per seed and mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, runs in rows.items():
        for variant, vruns in variants(runs).items():
            curves = [np.asarray(r["curve"], dtype=float) for r in vruns if r.get("curve")]
            if not curves:
                continue
            fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
            for r, c in zip(vruns, curves):
                ax.plot(c[:, 0], c[:, 1], lw=0.8, alpha=0.5, label=f"seed {r['seed']}")
            n = min(len(c) for c in curves)
            ax.plot(curves[0][:n, 0], np.mean([c[:n, 1] for c in curves], axis=0), lw=2.2, color="k", label="mean")
            title = f"{name} ({variant})" if variant else name
            ax.set(title=title, xlabel="step", ylabel="val Dice mean", ylim=(0, 1))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, loc="lower right", ncol=2)
            fig.tight_layout()
            path = out_dir / f"{name}{'-' + variant if variant else ''}.png"
            fig.savefig(path)
            plt.close(fig)
            paths.append(path)
    return paths


def plot_summary(summaries: list[dict[str, Any]], path: Path) -> Path:
    """One PNG: each row's test Dice mean over seeds with its 95 % interval, best at the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(summaries, key=lambda s: s["dice_case"]["mean"])
    fig, ax = plt.subplots(figsize=(6.5, 0.26 * len(rows) + 1.0), dpi=100)
    for y, s in enumerate(rows):
        m, (lo, hi) = s["dice_case"]["mean"], s["dice_case"]["ci95"]
        colour = "tab:red" if s["row"].startswith("bilevel") else "tab:blue"
        ax.errorbar(m, y, xerr=[[m - lo], [hi - m]] if s["dice_case"]["n"] > 1 else None, fmt="o", color=colour,
                    ms=4, capsize=2)
    ax.set_yticks(range(len(rows)), [s["row"] for s in rows], fontsize=7)
    ax.set(xlabel="test Dice per case (mean over seeds, 95 % CI)", xlim=(0.4, 1.0))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(results: Path, spec: dict[str, Any], out: Path, suffix: str = "") -> str:
    """Write OUT/study{suffix}.md/.json, the curves and a copy of every run's JSON; returns the table."""
    rows = load_runs(results)
    summaries = summarise(rows, spec)
    table = markdown(summaries, spec["reference"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"study{suffix}.md").write_text(table, encoding="utf-8")
    (out / f"study{suffix}.json").write_text(json.dumps({"reference": spec["reference"], "data": spec["data"],
                                                          "common": spec["common"], "rows": summaries},
                                                         indent=1) + "\n", encoding="utf-8")
    plot_curves({n: r for n, r in rows.items() if n in spec["rows"]}, out / f"study{suffix}_curves")
    if summaries:
        plot_summary(summaries, out / f"study{suffix}_dice.png")
    runs_copy = out / f"study{suffix}_runs"
    for name in [n for n in rows if n in spec["rows"]]:  # other experiments' runs share the folder
        (runs_copy / name).mkdir(parents=True, exist_ok=True)
        for path in (results / name).glob("seed-*.json"):
            shutil.copyfile(path, runs_copy / name / path.name)
    return table
