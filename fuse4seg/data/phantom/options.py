"""The options of ``fuse4seg phantom``, declared once: :class:`PhantomOptions`, and :func:`write_release`, which
writes the release they describe."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fuse4seg.options import option


@dataclass(frozen=True)
class PhantomOptions:
    """A synthetic BraTS release to write (checked by :func:`fuse4seg.data.phantom.generator.write_phantom_release`)."""

    out: str = option(help="Release directory to create (BraTS layout).", path=True)
    cases: int = option(help="Number of cases.")
    naming: str = option("brats2021", "Release layout and labels: brats2021, brats2020 or brats2023.")
    seed: int = option(0, "Random seed; the same seed writes the same bytes.")
    scale: float = option(1.0, "Grid scale: 1.0 -> 240x240x155 at 1 mm, 0.25 -> 60x60x39 at 4 mm.")
    workers: int = option(1, "Cases generated in parallel.", recorded=False)
    overwrite: bool = option(False, "Replace an existing --out directory.", recorded=False)


def write_release(options: PhantomOptions) -> Path:
    """Write the phantom release ``options`` describe; returns its directory."""
    from fuse4seg.data.phantom.generator import write_phantom_release

    return write_phantom_release(options.out, options.cases, naming=options.naming, seed=options.seed,
                                 scale=options.scale, workers=options.workers, overwrite=options.overwrite)
