"""Every option of a BraTS-Fuse build, declared once: :class:`BuildOptions`.

``fuse4seg build-benchmark`` derives its command-line options (flags, defaults, help) from these
fields, :func:`fuse4seg.data.build.builder.build_benchmark` takes them, and the dataset card records
the build as :meth:`BuildOptions.command_line`.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fuse4seg.conventions import DEFAULT_FUSION_INPUTS, parse_modalities
from fuse4seg.data.package.schema import MAX_SLICE_SIDE as MAX_SIZE
from fuse4seg.data.phantom.options import MAX_CASES
from fuse4seg.errors import ConfigError
from fuse4seg.io import check_separate
from fuse4seg.options import (
    MAX_SEED,
    check_options,
    command_argv,
    for_option,
    in_range,
    option,
    seed_problem,
)
from fuse4seg.parallel import MAX_WORKERS

DEFAULT_PHANTOM_CASES = 10
#: Most phantom cases: twice the largest BraTS training release (BraTS 2023's cohorts, ~2,600 cases), as
#: ``fuse4seg phantom --cases``.
MAX_PHANTOM_CASES = MAX_CASES
#: Most slices per case: a volume of the largest size read (512^3 voxels) has 8192 axial slices of 128 x 128;
#: a larger value cannot pick more and would only be recorded in the card.
MAX_SLICES_PER_CASE = 8192


def parse_split(split: str | Sequence[float]) -> tuple[float, float, float]:
    """Parse '0.7,0.1,0.2' (or a sequence) into train/val/test fractions >= 0 summing to 1 (+-1e-6)."""
    try:
        parts = [float(p) for p in (split.split(",") if isinstance(split, str) else split)]
    except ValueError:
        raise ConfigError(f"{split!r}: expected three numbers such as 0.7,0.1,0.2", option="split") from None
    if len(parts) != 3 or not all(np.isfinite(parts)) or min(parts) < 0:
        raise ConfigError(f"{split!r}: expected three non-negative fractions (train,val,test)", option="split")
    if abs(sum(parts) - 1.0) > 1e-6:
        raise ConfigError(f"{split!r}: fractions sum to {sum(parts):.6g}, not 1", option="split")
    return parts[0], parts[1], parts[2]


@dataclass(frozen=True)
class BuildOptions:
    """The options of one build. Construction normalises them (paths to str, ``fusion_inputs`` to a
    tuple of names, ``split`` to three fractions; ConfigError naming the option if they do not parse);
    :meth:`validate` checks ranges and combinations."""

    out: str = option(help="Package directory to create (brats_fuse.h5, card, citation, croissant); not the "
                           "--brats release, nor a folder inside or around it.", path=True)
    brats: str | None = option(None, "BraTS release directory (2020, 2021 or 2023+ layout).", path=True)
    phantom: int | None = option(None, f"Build from a phantom release of N cases, 1 to {MAX_PHANTOM_CASES} (the "
                                       f"default when no --brats is given: {DEFAULT_PHANTOM_CASES} cases).",
                                 check=in_range(1, MAX_PHANTOM_CASES))
    phantom_scale: float = option(1.0, "Phantom grid scale (0.25 for fast tests).", check=in_range(0, 1, low_open=True))
    fusion_inputs: tuple[str, ...] = option(DEFAULT_FUSION_INPUTS, "Modalities to fuse, comma-separated.")
    fusion: str = option("laplacian", "Fusion rule: mean, max, pca, laplacian, wavelet.")
    size: int | None = option(None, "Crop to the brain and resize slices to PX x PX.",
                              check=in_range(8, MAX_SIZE, unit=" pixels"))
    slices_per_case: int = option(8, f"Tumour slices kept per case (1 to {MAX_SLICES_PER_CASE}).",
                                  check=in_range(1, MAX_SLICES_PER_CASE))
    split: tuple[float, float, float] = option((0.7, 0.1, 0.2), "Train,val,test fractions of the cases (sum 1).")
    workers: int = option(1, f"Cases processed in parallel (1 to {MAX_WORKERS}).", recorded=False,
                          check=in_range(1, MAX_WORKERS, integer=True))
    seed: int = option(0, f"Seed of the patient split (and of the phantom release), 0 to {MAX_SEED}.",
                       check=seed_problem)
    overwrite: bool = option(False, "Replace an existing --out directory.", recorded=False)
    fusion_checkpoint: str | None = option(None, "Fuse with the trained fusion network of a run checkpoint "
                                                 "(e.g. RUN/best.pt) instead of --fusion.", path=True)
    volumes: bool = option(False, "Also store every case's whole volume, cropped to its brain box at the native "
                                  "voxel grid (--size not applied), under /volumes/<split>/<case_id> for 3-D training.")
    reports: str | None = option(None, "UTF-8 CSV of user reports (columns case_id,slice_index,text; slice_index "
                                       "empty for every slice of a case) replacing the generated slice texts.", path=True)
    parquet: bool = option(False, "Also write the records as Parquet shards under OUT/parquet (croissant.json record "
                                  "sets parquet-<split>, the card's configs), as `fuse4seg export OUT --format parquet`.")

    def __post_init__(self) -> None:
        """Normalise the values (see the class docstring)."""
        def set_field(name: str, value: object) -> None:
            """Set a field of this frozen instance (normalising is part of construction)."""
            object.__setattr__(self, name, value)

        set_field("out", os.fspath(self.out))
        for name in ("brats", "fusion_checkpoint", "reports"):
            if getattr(self, name) is not None:
                set_field(name, os.fspath(getattr(self, name)))
        with for_option("fusion_inputs"):
            set_field("fusion_inputs", parse_modalities(self.fusion_inputs))
        set_field("split", parse_split(self.split))

    def validate(self, custom_fusion: bool = False) -> BuildOptions:
        """ConfigError naming the option for any invalid value (each field's declared check) or combination,
        checked before any work (``custom_fusion``: a fusion callable replaces the rule, so ``fusion`` is not
        checked); returns self."""
        if self.brats is not None and self.phantom is not None:
            raise ConfigError("cannot be combined with phantom: give one source (or none for the phantom default)",
                              option="brats")
        check_options(self)
        if not custom_fusion and self.fusion_checkpoint is None:
            from fuse4seg.fusion import get_rule

            with for_option("fusion"):
                get_rule(self.fusion)
        if self.brats is not None:
            check_separate(self.out, {"brats": self.brats})
        return self

    def command_line(self) -> str:
        """The ``fuse4seg build-benchmark`` command line (shell-quoted) that builds with these options, as the
        dataset card records it: options that do not change the package (workers, overwrite) are left
        out, and so is phantom_scale when no phantom is built or it is 1."""
        omit = ("phantom_scale",) if self.brats is not None or self.phantom_scale == 1.0 else ()
        return shlex.join(["fuse4seg", "build-benchmark", *command_argv(self, omit)])
