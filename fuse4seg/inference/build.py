"""``fuse4seg build-benchmark``: the data builder with a run checkpoint's fusion network in place of a rule.

:func:`fuse4seg.data.build.builder.build_benchmark` takes any fusion callable and knows nothing of training;
here ``--fusion-checkpoint`` is turned into one (:func:`fuse4seg.inference.fuse.fusion_fn_from_checkpoint`),
so the package records the same command line and fusion method as when the builder loaded it itself.
"""

from __future__ import annotations

import dataclasses
import os

from fuse4seg.data.build import builder
from fuse4seg.data.build.options import BuildOptions

__all__ = ["build_benchmark"]


def build_benchmark(options: str | os.PathLike | BuildOptions, *, progress: bool = True, command: str | None = None,
                    **keywords: object) -> dict:
    """Build the package of ``options`` (a BuildOptions, or the output folder with the options as keywords) and
    return the builder's summary; with ``fusion_checkpoint``, fused by that run's trained fusion network."""
    opts = builder.build_options(options, keywords)
    if opts.fusion_checkpoint is None:
        return builder.build_benchmark(opts, progress=progress, command=command)
    # Options first, then the checkpoint: a bad option is reported before a network is loaded.
    opts.validate()
    # torch and the trained networks are imported only when a checkpoint is given.
    from fuse4seg.inference.fuse import fusion_fn_from_checkpoint

    fusion_fn, fusion_name = fusion_fn_from_checkpoint(opts.fusion_checkpoint, opts.fusion_inputs)
    return builder.build_benchmark(dataclasses.replace(opts, fusion_checkpoint=None), fusion_fn=fusion_fn,
                                   fusion_name=fusion_name, progress=progress,
                                   command=opts.command_line() if command is None else command)
