"""Evaluation outputs: metrics.json, a Markdown report with tables, and a PNG gallery (PIL)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from fuse4seg.conventions import REGIONS
from fuse4seg.metrics.fusion import FUSION_METRIC_NAMES
from fuse4seg.runkit.visual import column_titles, panel_grid, panel_row
from fuse4seg.train.config import TrainConfig

GALLERY_NAME = "gallery.png"
#: Fusion metrics shown in the report's table: every one fusion_metrics computes, in its order.
FUSION_COLUMNS = FUSION_METRIC_NAMES


def _fmt(value: float) -> str:
    """Number for a table cell: 4 significant digits."""
    return f"{value:.4g}"


def segmentation_table(metrics: dict[str, Any]) -> list[list[str]]:
    """Rows [what, WT Dice, TC Dice, ET Dice, mean Dice, WT/TC/ET HD95] of the run and its baselines."""
    rows = []

    def add(name: str, seg: dict[str, dict[str, float]]) -> None:
        """One row from a per-region metric dict."""
        d = [seg[r]["dice"] for r in REGIONS]
        rows.append([name, *map(_fmt, d), _fmt(float(np.mean(d))), *(_fmt(seg[r]["hd95"]) for r in REGIONS)])

    volumes = metrics.get("dims") == 3  # a 3-D run: whole volumes per case, no per-slice rows
    if not volumes:
        add("trained, per slice", metrics["segmentation"]["per_slice"])
    add("trained, per case (whole volume)" if volumes else "trained, per case (stacked)",
        metrics["segmentation"]["per_case"])
    if "untrained" in metrics:
        add("untrained network, per " + ("case" if volumes else "slice"),
            metrics["untrained"]["segmentation"]["per_case" if volumes else "per_slice"])
    bg = metrics.get("background_dice_per_case_mean" if volumes else "background_dice_per_slice_mean")
    if bg:
        d = [bg[r] for r in REGIONS]
        rows.append(["all background, per " + ("case" if volumes else "slice"), *map(_fmt, d), _fmt(float(np.mean(d))),
                     "-", "-", "-"])
    return rows


def extent(metrics: dict[str, Any]) -> str:
    """What was scored, in words: "N slices from M cases", or "M whole volumes" for a 3-D run."""
    if metrics.get("dims") == 3:
        return f"{metrics['cases']} whole volumes"
    return f"{metrics['slices']} slices from {metrics['cases']} cases"


SEG_HEADER = ["", "Dice WT", "Dice TC", "Dice ET", "Dice mean", "HD95 WT", "HD95 TC", "HD95 ET"]


def seg_header(metrics: dict[str, Any]) -> list[str]:
    """SEG_HEADER with the HD95 unit of ``metrics`` ("mm" or "pixels"; absent in older metrics) in the titles."""
    unit = metrics.get("hd95_unit")
    return SEG_HEADER if not unit else [f"{h} ({'px' if unit == 'pixels' else unit})" if h.startswith("HD95") else h
                                        for h in SEG_HEADER]


def fusion_table(metrics: dict[str, Any]) -> list[list[str]]:
    """Rows [which fused image, metric values...] for the learned and the stored classical fusion."""
    rows = []
    learned = metrics["fusion"].get("learned") or {}
    if learned:
        rows.append(["learned (" + metrics["mode"] + ")", *(_fmt(learned[k]) for k in FUSION_COLUMNS)])
    untrained = (metrics.get("untrained") or {}).get("fusion") or {}
    if untrained:
        rows.append(["untrained fusion net", *(_fmt(untrained[k]) for k in FUSION_COLUMNS)])
    stored = metrics["fusion"].get("benchmark_stored") or {}
    if stored:
        method = metrics.get("benchmark_fusion_method") or "classical"
        rows.append([f"benchmark's stored fusion ({method})", *(_fmt(stored[k]) for k in FUSION_COLUMNS)])
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table with aligned columns (for the terminal)."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


CLASSIFICATION_COLUMNS = ("auroc", "accuracy", "f1", "precision", "recall", "support")


def classification_report(metrics: dict[str, Any], markdown: bool = False) -> str:
    """A ``--task classify`` evaluation: one row per region and the macro means, as text or a Markdown page."""
    table = metrics["classification"]
    rows = [[name, *(_fmt(table[name][k]) if k != "support" else str(int(table[name][k]))
                     for k in CLASSIFICATION_COLUMNS)] for name in table]
    head = (f"{metrics['split']} split: {metrics['slices']} slices (checkpoint {metrics['checkpoint']}, step "
            f"{metrics['step']}); slice-level presence")
    if not markdown:
        return head + "\n" + text_table(["", *CLASSIFICATION_COLUMNS], rows)
    return "\n".join([f"# Evaluation of {metrics['run']}", "", head + ".", "",
                      markdown_table(["region", *CLASSIFICATION_COLUMNS], rows), "",
                      metrics["conventions"]["classification"] + ".", ""])


def format_summary(metrics: dict[str, Any]) -> str:
    """Terminal summary: the segmentation table and, when present, the fusion table (a classifier's table)."""
    if metrics.get("task") == "classify":
        return classification_report(metrics)
    out = [(f"{metrics['split']} split: {extent(metrics)} "
           f"(checkpoint {metrics['checkpoint']}, step {metrics['step']})"),
           text_table(seg_header(metrics), segmentation_table(metrics))]
    rows = fusion_table(metrics)
    if rows:
        out += ["", "fusion metrics (0-255 scale, vs " + ",".join(metrics["fusion_inputs"]) + "):",
                text_table(["", *FUSION_COLUMNS], rows)]
    if metrics.get("semantic"):
        out += ["", semantic_line(metrics)]
    return "\n".join(out)


def semantic_line(metrics: dict[str, Any]) -> str:
    """One line: the report-based semantic preservation score and the agreement of each field."""
    semantic = metrics["semantic"]
    fields = ", ".join(f"{k} {v:.3f}" for k, v in semantic["fields"].items())
    return (f"semantic preservation score (reports from the predicted vs the true labels, sizes within "
            f"{semantic['tolerance']:.0%}): {semantic['score']:.4f} over {semantic['slices']} slices; fields: {fields}")


def _titled(grid: np.ndarray, titles: list[str], tile_width: int, gap: int = 2) -> Image.Image:
    """The gallery grid with a white title strip naming each column."""
    strip = 14
    image = Image.new("RGB", (grid.shape[1], grid.shape[0] + strip), "white")
    image.paste(Image.fromarray(grid), (0, strip))
    draw = ImageDraw.Draw(image)
    for i, title in enumerate(titles):
        draw.text((i * (tile_width + gap) + 2, 1), title, fill=(0, 0, 0))
    return image


def write_gallery(path: Path, rows: list[dict[str, Any]], source_names: list[str], upscale: int = 2) -> None:
    """PNG: one row per slice: sources | fused | truth | prediction (labels over the fused image)."""
    grid = panel_grid([panel_row(r["sources"], r["fused"], r["truth"], r["pred"]) for r in rows])
    if upscale > 1:  # small benchmark slices are hard to see at 1:1
        grid = np.repeat(np.repeat(grid, upscale, axis=0), upscale, axis=1)
    width = rows[0]["truth"].shape[1] * upscale
    titles = column_titles(source_names, rows[0]["fused"] is not None)
    _titled(grid, titles, width, gap=2 * upscale).save(path)


def write_eval_outputs(directory: Path, metrics: dict[str, Any], rows: list[dict[str, Any]], config: TrainConfig
                       ) -> None:
    """Write metrics.json, gallery.png and report.md into ``directory``."""
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_gallery(directory / GALLERY_NAME, rows, list(config.fusion_inputs))
    lines = [
        f"# Evaluation of {metrics['run']}",
        "",
        f"Mode `{metrics['mode']}`" + (f", hypergradient `{metrics['hypergrad']}`" if metrics["hypergrad"] else "")
        + f"; checkpoint `{metrics['checkpoint']}.pt` (step {metrics['step']}); benchmark `{metrics['benchmark']}`, "
        f"split `{metrics['split']}`: {extent(metrics)}.",
        f"Fusion inputs: {', '.join(config.fusion_inputs)}; segmentation inputs: {', '.join(config.seg_inputs())}.",
        "",
        "## Segmentation (BraTS regions)",
        "",
        markdown_table(seg_header(metrics), segmentation_table(metrics)),
        "",
        ("" if metrics.get("dims") == 3 else "Per slice: 2-D metrics averaged over slices. ")
        + "Per case: " + metrics["conventions"]["per_case"] + ". "
        + metrics["conventions"]["empty_masks"] + ". " + metrics["conventions"].get("hd95", "") + ".",
    ]
    frows = fusion_table(metrics)
    if frows:
        lines += ["", "## Fusion", "", markdown_table(["fused image", *FUSION_COLUMNS], frows), "",
                  metrics["conventions"]["fusion"] + "."]
    if metrics.get("semantic"):
        lines += ["", "## Report-based evaluation", "", semantic_line(metrics) + ".", "",
                  metrics["conventions"]["semantic"] + ". Per slice: `reports.csv`."]
    for note in metrics.get("notes", []):
        lines += ["", f"Note: {note}."]
    lines += ["", "## Gallery", "",
              f"Columns: {', '.join(column_titles(list(config.fusion_inputs), rows[0]['fused'] is not None))}; "
              "labels drawn over the fused image (NCR red, ED green, ET yellow). "
              + ("Middle axial planes of the cropped volumes: " if metrics.get("dims") == 3 else "Slices: ")
              + ", ".join(f"{r['case_id']} z={r['slice_index']}" for r in rows) + ".",
              "", f"![gallery]({GALLERY_NAME})", ""]
    (directory / "report.md").write_text("\n".join(lines), encoding="utf-8")
