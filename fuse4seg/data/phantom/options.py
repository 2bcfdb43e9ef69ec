"""The options of ``fuse4seg phantom``, declared once: :class:`PhantomOptions`, and :func:`write_release`, which
writes the release they describe."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fuse4seg.options import (
    MAX_SEED,
    CheckedOptions,
    in_range,
    one_of_named,
    option,
    seed_problem,
)
from fuse4seg.parallel import MAX_WORKERS

#: Most cases: twice the largest BraTS training release (BraTS 2023's cohorts, ~2,600 cases); a full-scale case is
#: ~40 MB on disk, so the bound is ~200 GB. build-benchmark --phantom has the same bound.
MAX_CASES: int = 5000
#: Grid scales: 1.0 is BraTS's 240 x 240 x 155 at 1 mm (the largest grid the generator's templates hold); below 0.1
#: (24 x 24 x 16) no tumour structure survives.
MIN_SCALE, MAX_SCALE = 0.1, 1.0


@dataclass(frozen=True)
class PhantomOptions(CheckedOptions):
    """A synthetic BraTS release to write (checked on construction: each field's declared check; then by
    :func:`fuse4seg.data.phantom.generator.write_phantom_release`)."""

    out: str = option(help="Release directory to create (BraTS layout).", path=True)
    cases: int = option(help=f"Number of cases (1 to {MAX_CASES}).", check=in_range(1, MAX_CASES, integer=True))
    naming: str = option("brats2021", "Release layout and labels: brats2021, brats2020 or brats2023.",
                         check=one_of_named("fuse4seg.data.release.brats:SCHEMES", ignore_case=True))
    seed: int = option(0, f"Random seed, 0 to {MAX_SEED}; the same seed writes the same bytes.", check=seed_problem)
    scale: float = option(1.0, f"Grid scale ({MIN_SCALE:g} to {MAX_SCALE:g}): 1.0 -> 240x240x155 at 1 mm, 0.25 -> "
                               "60x60x39 at 4 mm.", check=in_range(MIN_SCALE, MAX_SCALE))
    workers: int = option(1, f"Cases generated in parallel (1 to {MAX_WORKERS}).", recorded=False,
                          check=in_range(1, MAX_WORKERS, integer=True))
    overwrite: bool = option(False, "Replace an existing --out directory.", recorded=False)


def write_release(options: PhantomOptions) -> Path:
    """Write the phantom release ``options`` describe; returns its directory."""
    from fuse4seg.data.phantom.generator import write_phantom_release

    return write_phantom_release(options.out, options.cases, naming=options.naming, seed=options.seed,
                                 scale=options.scale, workers=options.workers, overwrite=options.overwrite)
