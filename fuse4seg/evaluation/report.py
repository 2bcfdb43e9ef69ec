"""Evaluation outputs: metrics.json, a Markdown report with tables, and a PNG gallery (PIL)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from fuse4seg.conventions import REGIONS
from fuse4seg.metrics.fusion import FUSION_METRIC_NAMES
from fuse4seg.runkit.visual import column_titles, panel_grid, panel_row
from fuse4seg.train.config import TrainConfig
from fuse4seg.train.variant_facts import variant_name

GALLERY_NAME = "gallery.png"
#: Fusion metrics shown in the report's table: every one fusion_metrics computes, in its order.
FUSION_COLUMNS = FUSION_METRIC_NAMES


def _fmt(value: float) -> str:
    """Number for a table cell: 4 significant digits."""
    return f"{value:.4g}"


@dataclass(frozen=True)
class SegmentationLayout:
    """How a segmentation variant's scores read in a report: ``unit``, what one scored item is ("slice" or "case";
    the untrained and all-background rows are per unit); ``trained``: (row title, key of metrics["segmentation"])
    of the trained network's rows; ``extent``: what was scored, a template of the metrics' keys; ``method``: the
    sentence on per-item metrics before the per-case conventions; ``gallery``: what the gallery rows show."""

    unit: str
    trained: tuple[tuple[str, str], ...]
    extent: str
    method: str
    gallery: str


#: The report layout of each segmentation variant, by variant name.
LAYOUTS: dict[str, SegmentationLayout] = {
    "segment-2d": SegmentationLayout("slice", (("trained, per slice", "per_slice"),
                                               ("trained, per case (stacked)", "per_case")),
                                     "{slices} slices from {cases} cases",
                                     "Per slice: 2-D metrics averaged over slices. ", "Slices: "),
    "segment-3d": SegmentationLayout("case", (("trained, per case (whole volume)", "per_case"),),
                                     "{cases} whole volumes", "", "Middle axial planes of the cropped volumes: "),
}


def metrics_variant(metrics: dict[str, Any]) -> str:
    """The name of the run variant that wrote ``metrics`` (a 2-D segmentation run records neither task nor dims)."""
    return variant_name(metrics.get("task", "segment"), metrics.get("dims", 2))


def layout(metrics: dict[str, Any]) -> SegmentationLayout:
    """The report layout of the segmentation variant that wrote ``metrics``."""
    return LAYOUTS[metrics_variant(metrics)]


def segmentation_table(metrics: dict[str, Any]) -> list[list[str]]:
    """Rows [what, WT Dice, TC Dice, ET Dice, mean Dice, WT/TC/ET HD95] of the run and its baselines."""
    rows, shape = [], layout(metrics)

    def add(name: str, seg: dict[str, dict[str, float]]) -> None:
        """One row from a per-region metric dict."""
        d = [seg[r]["dice"] for r in REGIONS]
        rows.append([name, *map(_fmt, d), _fmt(float(np.mean(d))), *(_fmt(seg[r]["hd95"]) for r in REGIONS)])

    for title, key in shape.trained:
        add(title, metrics["segmentation"][key])
    if "untrained" in metrics:
        add(f"untrained network, per {shape.unit}", metrics["untrained"]["segmentation"][f"per_{shape.unit}"])
    bg = metrics.get(f"background_dice_per_{shape.unit}_mean")
    if bg:
        d = [bg[r] for r in REGIONS]
        rows.append([f"all background, per {shape.unit}", *map(_fmt, d), _fmt(float(np.mean(d))), "-", "-", "-"])
    return rows


def extent(metrics: dict[str, Any]) -> str:
    """What was scored, in words: "N slices from M cases", or "M whole volumes" for a 3-D run."""
    return layout(metrics).extent.format(**metrics)


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
    """Terminal summary of an evaluation, by the run variant's summary (:data:`SUMMARIES`)."""
    return SUMMARIES[metrics_variant(metrics)](metrics)


def segmentation_summary(metrics: dict[str, Any]) -> str:
    """Terminal summary of a segmentation run: the segmentation table and, when present, the fusion table."""
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
        layout(metrics).method + "Per case: " + metrics["conventions"]["per_case"] + ". "
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
              + layout(metrics).gallery
              + ", ".join(f"{r['case_id']} z={r['slice_index']}" for r in rows) + ".",
              "", f"![gallery]({GALLERY_NAME})", ""]
    (directory / "report.md").write_text("\n".join(lines), encoding="utf-8")


#: The terminal summary of each run variant's evaluation, by variant name.
SUMMARIES: dict[str, Callable[[dict[str, Any]], str]] = {
    "segment-2d": segmentation_summary, "segment-3d": segmentation_summary, "classify-2d": classification_report,
}
