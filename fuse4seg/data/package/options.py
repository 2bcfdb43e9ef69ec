"""The options of the commands that read a finished BraTS-Fuse package, declared once: ``fuse4seg verify``
(:class:`VerifyOptions`), ``cite`` (:class:`CiteOptions`) and ``export`` (:class:`ExportOptions`)."""

from __future__ import annotations

from dataclasses import dataclass

from fuse4seg.errors import ConfigError
from fuse4seg.options import check_options, one_of, option

_DIRECTORY = "BraTS-Fuse package directory."
#: What ``cite --format`` prints (fuse4seg.data.package.citation.cite) and ``export --format`` writes
#: (fuse4seg.data.package.export.FORMATS), named here so that the options import neither.
CITE_FORMATS: tuple[str, ...] = ("bibtex", "cff")
EXPORT_FORMATS: tuple[str, ...] = ("parquet", "nifti")


def checked(options: object) -> None:
    """:func:`fuse4seg.options.check_options`, an error about ``output_format`` naming its flag, --format (as the
    library's own errors do: option ``format``)."""
    try:
        check_options(options)
    except ConfigError as exc:
        if exc.option != "output_format":
            raise
        raise ConfigError(exc.message, option="format") from None


@dataclass(frozen=True)
class VerifyOptions:
    """What ``fuse4seg verify`` checks (:func:`fuse4seg.data.package.verify.verify`)."""

    directory: str = option(help=_DIRECTORY, argument=True, path=True)


@dataclass(frozen=True)
class CiteOptions:
    """What ``fuse4seg cite`` prints (:func:`fuse4seg.data.package.citation.cite`)."""

    directory: str = option(help=_DIRECTORY, argument=True, path=True)
    output_format: str = option("bibtex", "bibtex or cff.", flag="--format", check=one_of(CITE_FORMATS))

    def __post_init__(self) -> None:
        """ConfigError naming the first option out of its declared bounds."""
        checked(self)


@dataclass(frozen=True)
class ExportOptions:
    """What ``fuse4seg export`` writes (:func:`fuse4seg.data.package.export.export`)."""

    directory: str = option(help=_DIRECTORY, argument=True, path=True)
    output_format: str = option("parquet", "parquet: the records as Parquet shards in DIR/parquet, added to "
                                           "croissant.json and the card; nifti: per-case NIfTI stacks in --out.",
                                flag="--format", check=one_of(EXPORT_FORMATS))
    out: str | None = option(None, "With --format nifti: the folder to create (outside DIR).", path=True)
    overwrite: bool = option(False, "Replace DIR/parquet or --out written by fuse4seg.", recorded=False)

    def __post_init__(self) -> None:
        """ConfigError naming the first option out of its declared bounds."""
        checked(self)
