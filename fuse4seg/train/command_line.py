"""The ``train`` command's options, derived from the declarations of :class:`fuse4seg.train.config.TrainConfig`:
one command-line option per declared option (tables by their entries, plus shortcut flags), and the map back
from command-line values to option keys."""

from __future__ import annotations

from dataclasses import Field
from typing import Any

from fuse4seg.errors import ConfigError, flag_for
from fuse4seg.options import cli_text
from fuse4seg.options import option as cli_option
from fuse4seg.train.config import OPTIONS, TrainConfig
from fuse4seg.train.resolve import where_used


def _entry_key(key: str, entry: str) -> str:
    """The command-line name of an option table's entry: seg_options, depth -> seg_depth."""
    return key.removesuffix("options") + entry


#: --config: the one command-line option that is not a training option (it names the file that holds them).
CONFIG_FILE: Field = cli_option(None, "TOML file of options, keyed by option name (command-line options override it). "
                                "Only there: the fusion_options/seg_options tables (model options beyond width/depth) "
                                "and fusion_loss_weights.", flag="--config", path=True)


def command_line_options() -> list[tuple[str, Any, Field]]:
    """(parameter name, type, declaration) of every ``train`` command-line option, in declaration order: each
    option (tables by their entries) and each shortcut flag (``--bilevel``). The declaration is a
    :func:`fuse4seg.options.option` field (for :func:`fuse4seg.options.typer_option`) with default None, so a
    value not given on the command line leaves the TOML file's or the declared default; its help adds where
    the option applies and the default."""
    out = []
    for key, d in OPTIONS.items():
        only = f" Only with {where}." if (where := where_used(d)[1]) else ""
        for value, text in d.metadata.get("shortcuts", {}).items():
            out.append((value, bool, cli_option(None, text, flag=flag_for(value))))
        for entry, (tp, text) in d.metadata.get("entries", {}).items():
            out.append((_entry_key(key, entry), tp, cli_option(None, text + only, flag=flag_for(_entry_key(key, entry)))))
        if d.base_type is dict:
            continue
        default = d.get(TrainConfig())
        if isinstance(default, bool) and "/" in d.flag:
            shown = d.flag.split("/")[0 if default else 1]
        else:
            shown = None if isinstance(default, bool) or default in (None, "") else cli_text(default)
        text = d.metadata["help"] + only + (f" Default: {shown}." if shown else "")
        out.append((key, str if "parse" in d.metadata else d.base_type, cli_option(None, text, flag=d.flag)))
    out.append(("config", str, CONFIG_FILE))
    return out


def error_flags() -> dict[str, str]:
    """How the command line names options that have no flag of their own (tables: by their entries)."""
    return {key: "/".join([*(flag_for(_entry_key(key, e)) for e in d.metadata["entries"]), key])
            for key, d in OPTIONS.items() if "entries" in d.metadata}


def cli_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Map command-line values to option keys: shortcuts (--bilevel -> mode), table entries (--seg-width etc.).

    ``values`` holds every command-line option (None = not given); the result has only option keys.
    """
    values = dict(values)
    for key, d in OPTIONS.items():
        for shortcut in d.metadata.get("shortcuts", {}):
            if values.pop(shortcut, None):
                if values.get(key) not in (None, shortcut):
                    raise ConfigError(f"{flag_for(shortcut)} and {d.flag} {values[key]}: give one of them")
                values[key] = shortcut
        entries = {e: values.pop(_entry_key(key, e)) for e in d.metadata.get("entries", {})
                   if _entry_key(key, e) in values}
        entries = {e: v for e, v in entries.items() if v is not None}
        if entries:
            values[key] = {**(values.get(key) or {}), **entries}
    return values


__all__ = ["cli_overrides", "command_line_options", "error_flags"]
