"""Report-based evaluation: a report generated from a predicted segmentation, compared field by field with the
report of the true labels (the semantic preservation score).

A slice's report facts (:func:`report_facts`) are those its text description is written from
(fuse4seg.data.package.describe): which labels are present, the areas (mm^2) of WT, TC, ET, NCR and ED, the tumour's
hemisphere and anterior/posterior third, and how the labels relate. :func:`compare_reports` checks the fields:

- ``present_ET``, ``present_NCR``, ``present_ED``: the label is present in both reports or absent in both;
- ``size_<region>`` for each region present in either report: present in both with the predicted area within
  ``tolerance`` (relative, default :data:`SIZE_TOLERANCE`) of the true one;
- ``hemisphere``, ``ap``: the same words, for either report locating a tumour;
- ``relation``: the same relation sentence (or no tumour in both).

The slice's score is the share of its fields that agree, in [0, 1]; a split's semantic preservation score is
the mean over its slices, reported with each field's agreement rate over the slices where it applies. The
superior/inferior level is left out: it comes from the slice's position, not from its labels, so it always agrees.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from fuse4seg.data.package.describe import LABELS, region_areas, tumour_location, tumour_relation

#: Relative area error within which a predicted region's size agrees with the true one.
SIZE_TOLERANCE = 0.25
_LABEL_NAMES = tuple(name for _, name, _ in LABELS)
_SIZED = ("WT", "TC", "ET", "NCR", "ED")
_PLACES = ("hemisphere", "ap")


def report_facts(label: np.ndarray, sources: np.ndarray, spacing: tuple[float, float]) -> dict[str, Any]:
    """The facts of one slice's report: canonical (H, W) ``label``, (C, H, W) ``sources`` in [0, 1] (brain = any
    source > 0), pixel ``spacing`` (dy, dx) mm -> {"areas": {region: mm^2}, "location": {hemisphere, ap},
    "relation": str or None}."""
    brain = np.asarray(sources).max(axis=0) > 0
    return {"areas": region_areas(label, spacing), "location": tumour_location(label, brain),
            "relation": tumour_relation(label)}


def compare_reports(predicted: Mapping[str, Any], truth: Mapping[str, Any], tolerance: float = SIZE_TOLERANCE
                    ) -> dict[str, bool]:
    """{field: agrees} of two :func:`report_facts` (module doc for the fields and when each applies)."""
    p_areas, t_areas = predicted["areas"], truth["areas"]
    fields = {f"present_{name}": (name in p_areas) == (name in t_areas) for name in _LABEL_NAMES}
    for name in _SIZED:
        if name in p_areas or name in t_areas:
            fields[f"size_{name}"] = (name in p_areas and name in t_areas
                                      and abs(p_areas[name] - t_areas[name]) <= tolerance * t_areas[name])
    for key in _PLACES:
        if key in predicted["location"] or key in truth["location"]:
            fields[key] = predicted["location"].get(key) == truth["location"].get(key)
    fields["relation"] = predicted["relation"] == truth["relation"]
    return fields


def report_score(fields: Mapping[str, bool]) -> float:
    """Share of agreeing fields, in [0, 1]."""
    return float(np.mean(list(fields.values())))


def summarise_reports(per_slice: Iterable[Mapping[str, bool]], tolerance: float = SIZE_TOLERANCE) -> dict[str, Any]:
    """{"score": mean slice score, "slices": n, "fields": {field: agreement rate over the slices it applies to},
    "tolerance": the size tolerance they were compared with} of per-slice :func:`compare_reports` results."""
    scores, hits = [], defaultdict(list)
    for fields in per_slice:
        scores.append(report_score(fields))
        for key, ok in fields.items():
            hits[key].append(ok)
    if not scores:
        return {}
    return {"score": float(np.mean(scores)), "slices": len(scores), "tolerance": tolerance,
            "fields": {key: float(np.mean(v)) for key, v in sorted(hits.items())}}
