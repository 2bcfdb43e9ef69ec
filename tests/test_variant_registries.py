"""The run-variant registries agree: every variant has its training behaviour, its evaluator, its report layout and,
when it segments, its predictor for ``fuse``."""

from __future__ import annotations

from fuse4seg.evaluation.evaluate import EVALUATORS
from fuse4seg.evaluation.report import LAYOUTS, SUMMARIES
from fuse4seg.inference.fuse import PREDICTORS
from fuse4seg.train.variant_facts import VARIANT_FACTS
from fuse4seg.train.variants import VARIANTS


def test_every_variant_has_an_entry_in_every_registry() -> None:
    """The same variant names in the facts, the training variants, the evaluators and the report summaries; the
    segmenting ones (and only those) in the predictors and report layouts."""
    names = set(VARIANT_FACTS)
    assert names == {"segment-2d", "segment-3d", "classify-2d"}
    assert set(VARIANTS) == names
    assert set(EVALUATORS) == names
    segmenting = {name for name, facts in VARIANT_FACTS.items() if facts.segments}
    assert segmenting == {"segment-2d", "segment-3d"}
    assert set(PREDICTORS) == segmenting
    assert set(LAYOUTS) <= names and set(SUMMARIES) <= names


def test_variant_facts_match_their_axes() -> None:
    """Each variant's name states its task and dims (the registry's key is how configs find it)."""
    for name, facts in VARIANT_FACTS.items():
        task = "segment" if facts.segments else "classify"
        assert name == f"{task}-{facts.dims}d" == facts.name
        assert facts.slices == (facts.dims == 2)
