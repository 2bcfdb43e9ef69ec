"""The options of the commands that score files on disk, declared once: ``fuse4seg score`` (:class:`ScoreOptions`)
and ``fuse4seg fusion-metrics`` (:class:`FusionMetricsOptions`), with :func:`score` and :func:`fusion_metrics`."""

from __future__ import annotations

from dataclasses import dataclass

from fuse4seg.options import CheckedOptions, in_range, one_of_named, option
from fuse4seg.parallel import MAX_WORKERS

_CONVENTIONS = "fuse4seg.metrics.conventions:CONVENTIONS"
_CHALLENGES = "fuse4seg.metrics.conventions:CHALLENGES"
#: Largest --data-range and --scale (fuse4seg.metrics.fusion_files.MAX_DATA_RANGE, MAX_SCALE, named here so that
#: the options do not import the metrics): squares of scaled 16-bit values stay far inside float64 (SSIM's
#: constants are (0.01 L)^2 and (0.03 L)^2; 1e300 overflows them to inf).
MAX_DATA_RANGE: float = 1e9
MAX_SCALE: float = 1e6


@dataclass(frozen=True, kw_only=True)
class ScoreOptions(CheckedOptions):
    """BraTS predictions scored against a release (checked by :func:`fuse4seg.metrics.scoring.score_directory`)."""

    pred: str = option(help="Predictions: one <case id>.nii.gz per case, the release's label values.", path=True)
    truth: str = option(help="BraTS release directory holding the truth seg files.", path=True)
    convention: str = option(help="monai, brats2023 (2023-24 challenge code) or brats2025 (brats-evaluation / "
                                  "panoptica).", check=one_of_named(_CONVENTIONS, ignore_case=True))
    challenge: str = option("gli", "gli, ssa, ped, men or met: brats2023's lesion dilation and volume threshold.",
                            check=one_of_named(_CHALLENGES, ignore_case=True))
    out: str = option(help="Output FILE.json; FILE.csv (one row per case and region) goes next to it.", path=True)
    workers: int = option(1, f"Cases scored in parallel (1 to {MAX_WORKERS}).", recorded=False,
                          check=in_range(1, MAX_WORKERS, integer=True))
    overwrite: bool = option(False, "Replace an existing --out written by fuse4seg score.", recorded=False)


@dataclass(frozen=True, kw_only=True)
class FusionMetricsOptions(CheckedOptions):
    """Fused images scored against their sources (checked by
    :func:`fuse4seg.metrics.fusion_files.fusion_metrics_directory`)."""

    fused: str = option(help="Folder of fused 2-D images (PNG/JPEG/BMP/TIFF or NIfTI slices).", path=True)
    sources: list[str] = option(help="Folder of one source modality, images named as the fused ones; repeat the "  # noqa: RUF009
                                     "option for each source (at least two).", path=True)
    out: str = option(help="Output FILE.json: one row per image and the mean.", path=True)
    data_range: float = option(255.0, f"SSIM's data range (CDDFuse's published tables: 2), > 0 and at most "
                                      f"{MAX_DATA_RANGE:g}.", check=in_range(0, MAX_DATA_RANGE, low_open=True))
    scale: float = option(1.0, f"Multiply every image by this first (255 for images in [0, 1]), > 0 and at most "
                               f"{MAX_SCALE:g}.", check=in_range(0, MAX_SCALE, low_open=True))
    workers: int = option(1, f"Images scored in parallel (1 to {MAX_WORKERS}).", recorded=False,
                          check=in_range(1, MAX_WORKERS, integer=True))
    overwrite: bool = option(False, "Replace an --out written by fuse4seg fusion-metrics.", recorded=False)
