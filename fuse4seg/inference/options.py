"""The options of ``fuse4seg fuse``, declared once: :class:`FuseOptions`, and :func:`fuse`, which applies a run
as they say."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fuse4seg.options import CheckedOptions, device_problem, one_of, option
from fuse4seg.runkit.rundir import CHECKPOINTS


@dataclass(frozen=True)
class FuseOptions(CheckedOptions):
    """A trained run applied to one case (checked by :func:`fuse4seg.inference.fuse.fuse_case`)."""

    run: str = option(help="Run directory written by `fuse4seg train`.", path=True)
    case: str = option(help="One BraTS-layout case directory.", path=True)
    out: str = option(help="Output directory (fused.nii.gz, seg.nii.gz).", path=True)
    checkpoint: str = option("best", "best or last.", check=one_of(CHECKPOINTS))
    device: str = option("cpu", "cpu or cuda.", recorded=False, check=device_problem)
    overwrite: bool = option(False, "Replace an existing --out directory.", recorded=False)
    reports: str | None = option(None, "UTF-8 CSV (case_id,slice_index,text; slice_index empty for every slice) of "
                                       "texts guiding a text-guided fusion net.", path=True)


def fuse(options: FuseOptions) -> dict[str, Any]:
    """Fuse and segment the case ``options`` name; the summary of :func:`fuse4seg.inference.fuse.fuse_case`."""
    from fuse4seg.inference.fuse import fuse_case

    return fuse_case(options.run, options.case, options.out, options.checkpoint, options.device, options.overwrite,
                     options.reports)
