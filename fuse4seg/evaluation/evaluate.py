"""``fuse4seg evaluate``: a run's metrics on a benchmark split, by its run variant's evaluator.

Each variant (fuse4seg.train.variants) has one :data:`EVALUATORS` entry, keyed by its name: what it opens,
predicts and scores, and what it writes to RUN/eval (metrics.json, report.md, and per variant gallery.png and
reports.csv): 2-D segmentation scores slices and stacked cases (:mod:`fuse4seg.evaluation.segment2d`), 3-D
segmentation whole stored volumes (:mod:`fuse4seg.evaluation.segment3d`), a classifier slice-level presence
(:mod:`fuse4seg.evaluation.classify`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fuse4seg.evaluation.classify import evaluate_classifier
from fuse4seg.evaluation.common import EvalRequest
from fuse4seg.evaluation.segment2d import evaluate_slices
from fuse4seg.evaluation.segment3d import evaluate_3d
from fuse4seg.train.run import load_run

#: The evaluation of each run variant, by variant name: (request) -> metrics, with RUN/eval written.
EVALUATORS: dict[str, Callable[[EvalRequest], dict[str, Any]]] = {
    "segment-2d": evaluate_slices, "segment-3d": evaluate_3d, "classify-2d": evaluate_classifier,
}


def evaluate_run(run: str | Path, benchmark: str | Path | None = None, split: str = "test", checkpoint: str = "best",
                 device: str = "cpu", max_slices: int | None = None, compare_untrained: bool = False,
                 gallery: int = 6, texts: bool = True) -> dict[str, Any]:
    """Evaluate RUN on a benchmark split (the first ``max_slices`` slices, or cases of a 3-D run) by its variant's
    evaluator; writes RUN/eval; returns the metrics. ``texts`` False: a text-guided fusion net fuses without the
    slices' texts (its "no text" token)."""
    config, pipeline, state = load_run(run, checkpoint, device)
    if not texts:
        pipeline = dataclasses.replace(pipeline, text_encoder=None)
    bench = Path(benchmark) if benchmark is not None else Path(config.benchmark)
    request = EvalRequest(run, config, pipeline, state, bench, split, checkpoint, max_slices, compare_untrained,
                          gallery)
    return EVALUATORS[pipeline.variant.name](request)


__all__ = ["EVALUATORS", "evaluate_run"]
