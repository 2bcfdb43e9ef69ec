"""Label scarcity for semi-supervised training: which training patients keep their labels."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fuse4seg.errors import ConfigError, DataError
from fuse4seg.options import check_seed

#: Stream tag of the draw, so it does not coincide with the other seeded draws of one --seed.
_STREAM = 0x4C41424C  # "LABL"


def labelled_cases(case_ids: Sequence[str], fraction: float, seed: int) -> set[str]:
    """The training cases (patients) that keep their labels: round-half-up(``fraction`` * number of distinct
    cases), at least 1, drawn uniformly by ``seed``; ``fraction`` in (0, 1] (1: every case).

    ``case_ids`` may repeat (one per slice); they are sorted and made unique first, so the choice depends on
    the set of cases only, never on slice order. ConfigError for a bad fraction or seed, DataError for no case.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (0 < fraction <= 1):
        raise ConfigError(f"must be in (0, 1], got {fraction!r}", option="label_fraction")
    check_seed(seed)
    cases = np.unique(np.asarray([str(c) for c in case_ids], dtype=object).astype(str))
    if len(cases) == 0:
        raise DataError("no training cases to choose labelled ones from")
    keep = min(len(cases), max(1, math.floor(fraction * len(cases) + 0.5)))
    order = np.random.default_rng(np.random.SeedSequence([int(seed), _STREAM])).permutation(len(cases))
    return {str(c) for c in cases[order[:keep]]}
