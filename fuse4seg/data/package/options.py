"""The options of the commands that read a finished BraTS-Fuse package, declared once: ``fuse4seg verify``
(:class:`VerifyOptions`), ``cite`` (:class:`CiteOptions`) and ``export`` (:class:`ExportOptions`)."""

from __future__ import annotations

from dataclasses import dataclass

from fuse4seg.options import option

_DIRECTORY = "BraTS-Fuse package directory."


@dataclass(frozen=True)
class VerifyOptions:
    """What ``fuse4seg verify`` checks (:func:`fuse4seg.data.package.verify.verify`)."""

    directory: str = option(help=_DIRECTORY, argument=True, path=True)


@dataclass(frozen=True)
class CiteOptions:
    """What ``fuse4seg cite`` prints (:func:`fuse4seg.data.package.citation.cite`)."""

    directory: str = option(help=_DIRECTORY, argument=True, path=True)
    output_format: str = option("bibtex", "bibtex or cff.", flag="--format")


@dataclass(frozen=True)
class ExportOptions:
    """What ``fuse4seg export`` writes (:func:`fuse4seg.data.package.export.export`)."""

    directory: str = option(help=_DIRECTORY, argument=True, path=True)
    output_format: str = option("parquet", "parquet: the records as Parquet shards in DIR/parquet, added to "
                                           "croissant.json and the card; nifti: per-case NIfTI stacks in --out.",
                                flag="--format")
    out: str | None = option(None, "With --format nifti: the folder to create (outside DIR).", path=True)
    overwrite: bool = option(False, "Replace DIR/parquet or --out written by fuse4seg.", recorded=False)
