"""The options of ``fuse4seg models``, declared once: :class:`ModelsOptions`, and :func:`model_table`."""

from __future__ import annotations

from dataclasses import dataclass

from fuse4seg.options import option


@dataclass(frozen=True)
class ModelsOptions:
    """What the list of registered networks reports."""

    size: bool = option(False, "Also report output shapes at 240 and 128 px.")


def model_table(options: ModelsOptions) -> str:
    """The registered networks with their default options and parameter counts (and output shapes with ``size``)."""
    from fuse4seg.models import format_model_table, model_summary

    return format_model_table(model_summary(sizes=(240, 128) if options.size else ()))
