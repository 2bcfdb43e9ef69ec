"""Pages of the documentation site generated at build time (run by mkdocs-gen-files, see ``mkdocs.yml``).

Nothing here is written by hand into ``docs/``; every page below is derived when ``mkdocs build`` runs:

- ``reference/commands/<command>.md``: one page per ``fuse4seg`` command, listing every option of the
  command as the command line itself is built (:mod:`fuse4seg.commands` turns each command's options
  dataclass into its click command; ``train``'s options come from
  :func:`fuse4seg.train.command_line.command_line_options`, where they apply from
  :func:`fuse4seg.train.resolve.where_used`). A command whose parameters do not all reach the table
  fails the build.
- ``reference/api/<module>.md``: the API reference, one page per package, rendered by mkdocstrings
  from the docstrings (static analysis: nothing is imported for it).
- ``tutorials/<name>.md``: every ``tutorials/*.py`` (percent format: ``# %%`` code cells,
  ``# %% [markdown]`` cells) as a page; the scripts are not run.
- ``results/experiments.md`` and ``results/tables/*``: ``experiments/README.md`` and the committed result
  tables and plots of ``experiments/results``.
- ``contributing.md`` and ``changelog.md``: ``CONTRIBUTING.md`` and ``CHANGELOG.md``.
"""

from __future__ import annotations

import html
import posixpath
import re
import sys
import typing
from pathlib import Path
from typing import Any

import click
import mkdocs_gen_files

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: API reference pages: (page name, module, one-line description).
API = [
    ("bilevel", "fuse4seg.bilevel", "Hypergradient methods, inner optimisers and solvers (independent of imaging)"),
    ("models", "fuse4seg.models", "Networks and their registry"),
    ("fusion", "fuse4seg.fusion", "Classical fusion rules"),
    ("losses", "fuse4seg.losses", "Fusion and segmentation losses"),
    ("metrics", "fuse4seg.metrics", "Fusion metrics, segmentation metrics and scoring conventions"),
    ("data", "fuse4seg.data", "Reading BraTS, the phantom, the BraTS-Fuse package, augmentation"),
    ("text", "fuse4seg.text", "Text encoders and the image-text model"),
    ("train", "fuse4seg.train", "Training: options, modes, run variants, the loop"),
    ("pretrain", "fuse4seg.pretrain", "Self-supervised pre-training"),
    ("runkit", "fuse4seg.runkit", "Run folders, checkpoints, resume, batches"),
    ("evaluation", "fuse4seg.evaluation", "Evaluation, whole volumes, robustness"),
    ("inference", "fuse4seg.inference", "Applying a trained run"),
    ("options", "fuse4seg.options", "Options declared once"),
    ("commands", "fuse4seg.commands", "Commands derived from options dataclasses"),
    ("conventions", "fuse4seg.conventions", "Modalities, labels, regions"),
    ("errors", "fuse4seg.errors", "User errors"),
    ("io", "fuse4seg.io", "Atomic writes, markers, locks"),
    ("distributed", "fuse4seg.distributed", "Data-parallel training"),
    ("parallel", "fuse4seg.parallel", "Process-parallel work in input order"),
]


# ---- option references -------------------------------------------------------------------------------------


def cell(text: object) -> str:
    """``text`` safe inside a Markdown table cell."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def code(text: object) -> str:
    """``text`` as inline code in a table cell (empty stays empty)."""
    text = str(text)
    return f"<code>{cell(text)}</code>" if text else ""


def type_name(tp: Any) -> str:
    """A readable name of a parameter type: ``int``, ``str | None``, ``tuple[str, ...]``."""
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return re.sub(r"\b(?:typing|pathlib|builtins)\.", "", str(tp)).replace("NoneType", "None")


def shown_default(value: Any) -> str:
    """A default as written on the command line; empty when there is none to show."""
    from fuse4seg.options import cli_text

    if value is None or value is ... or value == "" or value == ():
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    return cli_text(value)


def flags_of(param: Any) -> str:
    """A click parameter's flags (``--cache / --no-cache``) or, for an argument, its metavar."""
    if param.param_type_name == "argument":
        return param.name.upper()
    return " / ".join(list(param.opts) + list(param.secondary_opts))


def click_help(param: Any) -> str:
    """A click parameter's help text (arguments carry it on typer's subclass)."""
    return getattr(param, "help", None) or ""


def capture_options_classes() -> dict[str, type]:
    """Command name -> its options dataclass, recorded while :mod:`fuse4seg.commands` builds the command."""
    from fuse4seg import commands

    seen: dict[str, type] = {}
    original = commands.options_command

    def recording(name: str, cls: type, run: Any) -> Any:
        """Note the class, then build the command as the command line does."""
        seen[name] = cls
        return original(name, cls, run)

    commands.options_command = recording
    return seen


def dataclass_rows(command: Any, cls: type) -> list[list[str]]:
    """Table rows (flag, type, default, help) of a command built from the options dataclass ``cls``."""
    from fuse4seg.commands import parameters_of
    from fuse4seg.options import default_of

    declared = {name: (tp, field) for name, tp, field in parameters_of(cls)}
    hints = typing.get_type_hints(cls)
    rows = []
    for param in command.params:
        _tp, field = declared.pop(param.name)
        default = default_of(field)
        rows.append([code(flags_of(param)), code(type_name(hints[param.name])),
                     "required" if default is ... else code(shown_default(default)), cell(field.metadata.get("help", ""))])
    if declared:
        raise SystemExit(f"docs: options of {cls.__name__} missing from its command: {sorted(declared)}")
    return rows


def train_rows(command: Any) -> list[list[str]]:
    """Table rows (flag, type, default, where it applies, help) of ``train``: one per command-line option."""
    from fuse4seg.train.command_line import _entry_key, command_line_options
    from fuse4seg.train.config import OPTIONS, TrainConfig
    from fuse4seg.train.resolve import where_used

    defaults = TrainConfig()
    origin: dict[str, tuple[Any, str, Any, str]] = {}  # parameter name -> (declared, help, default, type)
    for key, d in OPTIONS.items():
        for value, text in d.metadata.get("shortcuts", {}).items():
            origin[value] = (d, text, f"off ({d.flag} {value})", "bool")
        table = d.get(defaults) if d.base_type is dict else {}
        for entry, (tp, text) in d.metadata.get("entries", {}).items():
            origin[_entry_key(key, entry)] = (d, text, (table or {}).get(entry), type_name(tp))
        if d.base_type is not dict:
            origin[key] = (d, d.metadata["help"], d.get(defaults), type_name(d.type))
    names = {name for name, _, _ in command_line_options()}
    rows = []
    for param in command.params:
        if param.name == "config":
            names.discard(param.name)
            rows.append([code(flags_of(param)), code("str | None"), "", "every run",
                         cell(click_help(param))])
            continue
        names.discard(param.name)
        d, text, default, tp = origin[param.name]
        default = default if isinstance(default, str) and default.startswith("off (") else shown_default(default)
        rows.append([code(flags_of(param)), code(tp), code(default) if not default.startswith("off (") else cell(default),
                     cell(where_used(d)[1] or "every run"), cell(text)])
    if names:
        raise SystemExit(f"docs: train options missing from the command: {sorted(names)}")
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def command_pages() -> list[str]:
    """Write one page per command; return their names in the order ``fuse4seg --help`` lists them."""
    from fuse4seg.cli import COMMANDS

    classes = capture_options_classes()
    names = list(COMMANDS)
    index = ["# Command options", "",
             ("Generated when the site is built, from the declarations the command line itself is built from "
             "(each command's options dataclass; `train`: `TrainConfig`). `fuse4seg COMMAND --help` prints the "
             "same options."), "", "| command | options | what it does |", "|---|---|---|"]
    for name in names:
        command = COMMANDS[name]()
        doc = (command.help or "").strip().split("\n\n")[0].replace("\n", " ")
        if name == "train":
            body = table(["flag", "type", "default", "applies to", "help"], train_rows(command))
            source = ("`fuse4seg.train.config.TrainConfig` (the bi-level engine's options: "
                      "`fuse4seg.bilevel.Options`, nested as `TrainConfig.engine`); derived by "
                      "`fuse4seg.train.command_line.command_line_options`. Every option is also a TOML key "
                      "(its name) for `--config`")
        else:
            cls = classes[name]
            body = table(["flag", "type", "default", "help"], dataclass_rows(command, cls))
            source = f"`{cls.__module__}.{cls.__qualname__}`"
        usage = " ".join(command.collect_usage_pieces(click.Context(command, info_name=name)))
        usage = re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), usage)  # typer's {directory}: DIRECTORY
        page = [f"# fuse4seg {name}", "", doc, "", f"    fuse4seg {name} {usage}", "",
                f"{len(command.params)} options, declared in {source}.", "", body]
        with mkdocs_gen_files.open(f"reference/commands/{name}.md", "w") as out:
            out.write("\n".join(page))
        index.append(f"| [`{name}`]({name}.md) | {len(command.params)} | {cell(doc)} |")
    with mkdocs_gen_files.open("reference/commands/index.md", "w") as out:
        out.write("\n".join(index) + "\n")
    return names


# ---- API reference -----------------------------------------------------------------------------------------


def api_pages() -> None:
    """One mkdocstrings page per package of :data:`API`, and an index."""
    index = ["# API reference", "", "Rendered from the docstrings when the site is built.", "",
             "| module | what it holds |", "|---|---|"]
    for page, module, what in API:
        with mkdocs_gen_files.open(f"reference/api/{page}.md", "w") as out:
            out.write(f"# `{module}`\n\n{what}.\n\n::: {module}\n")
        index.append(f"| [`{module}`]({page}.md) | {what} |")
    with mkdocs_gen_files.open("reference/api/index.md", "w") as out:
        out.write("\n".join(index) + "\n")


# ---- tutorials ---------------------------------------------------------------------------------------------

CELL = re.compile(r"^# %%(.*)$")


def percent_to_markdown(source: str) -> str:
    """A percent-format script as Markdown: ``# %% [markdown]`` cells as text, other cells as code blocks."""
    cells: list[tuple[str, list[str]]] = [("code", [])]
    for line in source.splitlines():
        match = CELL.match(line)
        if match:
            cells.append(("markdown" if "[markdown]" in match.group(1) else "code", []))
            continue
        cells[-1][1].append(line)
    first = cells[0][1]
    if first and first[0].startswith("# ---"):  # a jupytext header (# --- ... # ---): metadata, not content
        end = next((i for i, line in enumerate(first[1:], 1) if line.startswith("# ---")), 0)
        del first[:end + 1]
    intro = "\n".join(first).strip()
    docstring = None
    if intro[:3] in ('"""', "'''") and intro.endswith(intro[:3]) and intro.count(intro[:3]) == 2:
        docstring, cells[0] = intro[3:-3].strip(), ("code", [])  # the module docstring reads as text
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            text = [re.sub(r"^# ?", "", line) for line in lines]
            out.append("\n".join(text).strip())
        else:
            body = "\n".join(lines).strip("\n")
            if body.strip():
                out.append(f"```python\n{body}\n```")
    out = [part for part in out if part]
    if docstring:
        at = 1 if out and out[0].startswith("# ") else 0
        heading, _, rest = out[0].partition("\n") if at else ("", "", "")
        if at and rest.strip():  # the title cell holds more text: the docstring goes right after the title
            out[0:1] = [heading, docstring, rest.strip()]
        else:
            out.insert(at, docstring)
    return "\n\n".join(out) + "\n"


def tutorial_pages() -> list[str]:
    """One page per ``tutorials/*.py``; the scripts are not run."""
    names = []
    index = ["# Tutorials", "", ("Scripts in `tutorials/` (percent format: open them in an editor that runs `# %%` "
             "cells, or run them with `python tutorials/NAME.py`), rendered here without running them."), ""]
    for path in sorted((ROOT / "tutorials").glob("*.py")):
        text = percent_to_markdown(path.read_text(encoding="utf-8"))
        if not text.lstrip().startswith("# "):
            text = f"# {path.stem}\n\n" + text
        text += f"\n*Source: `tutorials/{path.name}`.*\n"
        copy_markdown(path, f"tutorials/{path.stem}.md", site_files(), text)
        title = text.lstrip().splitlines()[0].lstrip("# ").strip()
        index.append(f"- [{title}]({path.stem}.md) (`tutorials/{path.name}`)")
        names.append(path.stem)
    if not names:
        index.append("No tutorials yet.")
    with mkdocs_gen_files.open("tutorials/index.md", "w") as out:
        out.write("\n".join(index) + "\n")
    return names


# ---- files from outside docs/ ------------------------------------------------------------------------------

LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def copy_markdown(source: Path, target: str, available: dict[str, str], text: str | None = None) -> None:
    """Copy a Markdown file (or ``text``, read from it) into the site at ``target``, pointing its relative links
    at the site's copies (``available``: repository path -> site path); a link to anything else becomes plain
    code text."""
    text = source.read_text(encoding="utf-8") if text is None else text
    here = source.parent.relative_to(ROOT).as_posix()

    def relink(match: re.Match) -> str:
        """One link, rewritten for the site."""
        link, anchor = match.group(1), match.group(2) or ""
        if re.match(r"^[a-z]+:", link):
            return match.group(0)
        repo_path = posixpath.normpath(posixpath.join(here, link))
        if repo_path in available:
            return "](" + posixpath.relpath(available[repo_path], posixpath.dirname(target)) + anchor + ")"
        return match.group(0)

    text = LINK.sub(relink, text)
    # Links whose targets the site does not hold: keep the text, drop the link.
    def unlink(match: re.Match) -> str:
        """A link the site cannot resolve, as its text."""
        label, link = match.group(1), match.group(2)
        if re.match(r"^[a-z]+:", link) or link.startswith("#"):
            return match.group(0)
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(target), link.split("#")[0]))
        return match.group(0) if resolved in available.values() else f"{label} (`{posixpath.join(here, link)}`)"

    text = re.sub(r"\[([^\]]*)\]\(([^)\s]+)\)", unlink, text)
    with mkdocs_gen_files.open(target, "w") as out:
        out.write(text)


def site_files() -> dict[str, str]:
    """Repository path -> site path of every page and image the site holds (docs/, the experiments' pages,
    CONTRIBUTING.md, CHANGELOG.md, tutorials)."""
    results = ROOT / "experiments" / "results"
    available = {"experiments/README.md": "results/experiments.md", "CONTRIBUTING.md": "contributing.md",
                 "CHANGELOG.md": "changelog.md", "README.md": "index.md"}
    for path in sorted(results.glob("*.md")) + sorted(results.glob("*.png")):
        available[f"experiments/results/{path.name}"] = f"results/tables/{path.name}"
    for path in sorted((ROOT / "tutorials").glob("*.py")):
        available[f"tutorials/{path.name}"] = f"tutorials/{path.stem}.md"
    available.update({f"docs/{p.relative_to(ROOT / 'docs').as_posix()}": p.relative_to(ROOT / "docs").as_posix()
                      for p in (ROOT / "docs").rglob("*") if p.is_file()})
    return available


def repository_pages() -> None:
    """experiments/README.md and its result tables and plots; CONTRIBUTING.md and CHANGELOG.md."""
    results = ROOT / "experiments" / "results"
    available = site_files()
    for path in sorted(results.glob("*.png")):
        with mkdocs_gen_files.open(f"results/tables/{path.name}", "wb") as out:
            out.write(path.read_bytes())
    copy_markdown(ROOT / "experiments" / "README.md", "results/experiments.md", available)
    for path in sorted(results.glob("*.md")):
        copy_markdown(path, f"results/tables/{path.name}", available)
    for name, target in (("CONTRIBUTING.md", "contributing.md"), ("CHANGELOG.md", "changelog.md")):
        if (ROOT / name).exists():
            copy_markdown(ROOT / name, target, available)


def main() -> None:
    """Generate every page."""
    command_pages()
    api_pages()
    tutorial_pages()
    repository_pages()


main()
