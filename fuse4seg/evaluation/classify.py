"""Evaluation of a presence classifier (variant ``classify-2d``): per-region AUROC, accuracy, F1, precision, recall
and support of slice-level WT/TC/ET presence (fuse4seg.metrics.classification)."""

from __future__ import annotations

import json
from typing import Any

from fuse4seg.evaluation.common import EvalRequest, open_evaluated_split

#: How a classifier's metrics are computed (metrics.json "conventions", quoted by report.md).
METRIC_NOTES: dict[str, str] = {
    "classification": "slice-level presence of WT, TC, ET; a slice is predicted positive when its sigmoid is >= 0.5; "
                      "AUROC by ranks (nan for a region present in every slice or in none; the macro mean skips it); "
                      "an empty denominator counts as 1",
}


def evaluate_classifier(request: EvalRequest) -> dict[str, Any]:
    """Evaluate a ``--task classify`` run on the slices of a benchmark split; writes RUN/eval/{metrics.json,
    report.md}; returns the metrics."""
    from fuse4seg.evaluation.report import classification_report
    from fuse4seg.metrics.classification import classification_metrics
    from fuse4seg.train.predict import presence_predictions

    r = request
    dataset = open_evaluated_split(r.run, r.config, r.bench, r.split)
    probs, targets = presence_predictions(r.pipeline, dataset, r.device, limit=r.limit)
    head = r.head()
    metrics: dict[str, Any] = {
        **{k: head[k] for k in ("run", "checkpoint", "step", "mode")}, "task": r.config.task,
        **{k: head[k] for k in ("split", "benchmark")}, "slices": len(probs),
        **{k: head[k] for k in ("fusion_inputs", "seg_inputs")}, "classification": classification_metrics(probs, targets),
        "conventions": dict(METRIC_NOTES),
    }
    if r.compare_untrained:
        base = presence_predictions(r.untrained(), dataset, r.device, limit=r.limit)
        metrics["untrained"] = {"classification": classification_metrics(*base)}
    with r.output_dir() as tmp:
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(classification_report(metrics, markdown=True), encoding="utf-8")
    return metrics
