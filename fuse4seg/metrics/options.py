"""The options of the commands that score files on disk, declared once: ``fuse4seg score`` (:class:`ScoreOptions`)
and ``fuse4seg fusion-metrics`` (:class:`FusionMetricsOptions`), with :func:`score` and :func:`fusion_metrics`."""

from __future__ import annotations

from dataclasses import dataclass

from fuse4seg.options import option


@dataclass(frozen=True, kw_only=True)
class ScoreOptions:
    """BraTS predictions scored against a release (checked by :func:`fuse4seg.metrics.scoring.score_directory`)."""

    pred: str = option(help="Predictions: one <case id>.nii.gz per case, the release's label values.", path=True)
    truth: str = option(help="BraTS release directory holding the truth seg files.", path=True)
    convention: str = option(help="monai, brats2023 (2023-24 challenge code) or brats2025 (brats-evaluation / "
                                  "panoptica).")
    challenge: str = option("gli", "gli, ssa, ped, men or met: brats2023's lesion dilation and volume threshold.")
    out: str = option(help="Output FILE.json; FILE.csv (one row per case and region) goes next to it.", path=True)
    workers: int = option(1, "Cases scored in parallel.", recorded=False)
    overwrite: bool = option(False, "Replace an existing --out written by fuse4seg score.", recorded=False)


@dataclass(frozen=True, kw_only=True)
class FusionMetricsOptions:
    """Fused images scored against their sources (checked by
    :func:`fuse4seg.metrics.fusion_files.fusion_metrics_directory`)."""

    fused: str = option(help="Folder of fused 2-D images (PNG/JPEG/BMP/TIFF or NIfTI slices).", path=True)
    sources: list[str] = option(help="Folder of one source modality, images named as the fused ones; repeat the "  # noqa: RUF009
                                     "option for each source (at least two).", path=True)
    out: str = option(help="Output FILE.json: one row per image and the mean.", path=True)
    data_range: float = option(255.0, "SSIM's data range (CDDFuse's published tables: 2).")
    scale: float = option(1.0, "Multiply every image by this first (255 for images in [0, 1]).")
    workers: int = option(1, "Images scored in parallel.", recorded=False)
    overwrite: bool = option(False, "Replace an --out written by fuse4seg fusion-metrics.", recorded=False)


def score(options: ScoreOptions) -> dict:
    """Score the predictions as ``options`` say (:func:`fuse4seg.metrics.scoring.score_directory`)."""
    from fuse4seg.metrics.scoring import score_directory

    o = options
    return score_directory(o.pred, o.truth, o.out, convention=o.convention, challenge=o.challenge, workers=o.workers,
                           overwrite=o.overwrite)


def fusion_metrics(options: FusionMetricsOptions) -> dict:
    """Score the fused images as ``options`` say (:func:`fuse4seg.metrics.fusion_files.fusion_metrics_directory`)."""
    from fuse4seg.metrics.fusion_files import fusion_metrics_directory

    o = options
    return fusion_metrics_directory(o.fused, o.sources, o.out, data_range=o.data_range, scale=o.scale,
                                    workers=o.workers, overwrite=o.overwrite)
