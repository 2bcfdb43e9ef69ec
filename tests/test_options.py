"""fuse4seg.options: dataclass fields as the one declaration of an option (Typer option, recorded argv, errors)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fuse4seg.errors import ConfigError, DataError
from fuse4seg.options import (
    available_cpus,
    cli_text,
    command_argv,
    fields_by_name,
    flag_of,
    for_option,
    option,
    typer_option,
)


@dataclasses.dataclass(frozen=True)
class Example:
    """A small options class for the tests."""

    out: str = option(help="Where to write.")
    steps: int = option(10, "Total steps.")
    ratio: float = option(0.5, "A fraction.", flag="--mix")
    inputs: tuple[str, ...] = option(("a", "b"), "Comma-separated inputs.")
    tags: list = option([], "Mutable default.")  # noqa: RUF009 (option() makes a default_factory for it)
    fast: bool = option(False, "A switch.")
    threads: int = option(1, "Not recorded.", recorded=False)
    note: str | None = option(None, "Optional.")


def test_fields_flags_and_cli_text() -> None:
    """Flags derive from names unless declared; values print as the command line writes them."""
    fields = fields_by_name(Example)
    assert list(fields)[:3] == ["out", "steps", "ratio"]
    assert flag_of(fields["steps"]) == "--steps" and flag_of(fields["ratio"]) == "--mix"
    assert [cli_text(v) for v in (1.0, 0.25, 1 / 3, (0.7, 0.1, 0.2), ("t1", "flair"), Path("a/b"), 3)] == [
        "1", "0.25", "0.3333333333333333", "0.7,0.1,0.2", "t1,flair", "a/b", "3"]
    assert Example("o").tags == [] and Example("o").tags is not Example("o").tags


@dataclasses.dataclass
class Inner:
    """A mutable dataclass used as a default."""

    n: int = 0


@dataclasses.dataclass
class Holder:
    """Options with mutable defaults and extra declaration keys."""

    table: dict = option({"a": 1}, "A table.", modes=("x",), check=None)  # noqa: RUF009 (default_factory)
    names: set = option({"s"}, "A set.")  # noqa: RUF009 (option() makes a default_factory for it)
    inner: Inner = option(Inner(), "A group.")  # noqa: RUF009 (option() makes a default_factory for it)


def test_mutable_defaults_are_copied_and_none_keys_dropped() -> None:
    """Two instances never share a dict, set or dataclass default; metadata keys whose value is None are left out."""
    one, two = Holder(), Holder()
    one.table["b"] = 2
    one.names.add("t")
    one.inner.n = 5
    assert (two.table, two.names, two.inner) == ({"a": 1}, {"s"}, Inner(0))
    assert Holder().table == {"a": 1} and Holder().inner == Inner()
    table = fields_by_name(Holder)["table"]
    assert dict(table.metadata) == {"help": "A table.", "recorded": True, "modes": ("x",)}
    assert "flag" not in fields_by_name(Example)["steps"].metadata


def test_command_argv_leaves_out_none_false_unrecorded_and_omitted() -> None:
    """--flag value per recorded field, bare --flag for True; None, False, recorded=False and omit are left out."""
    options = Example("my out", steps=3, fast=True, threads=4, note=None)
    assert command_argv(options) == ["--out", "my out", "--steps", "3", "--mix", "0.5", "--inputs", "a,b",
                                     "--tags", "", "--fast"]
    assert command_argv(options, omit=("tags", "ratio")) == ["--out", "my out", "--steps", "3", "--inputs", "a,b",
                                                             "--fast"]


def test_typer_option_gives_help_default_and_flag() -> None:
    """A Typer command built from the fields shows their help, uses their defaults (sequences as text) and requires
    a field without default."""
    fields = fields_by_name(Example)
    seen = {}
    app = typer.Typer()

    @app.command()
    def run(out: str = typer_option(fields["out"]), ratio: float = typer_option(fields["ratio"]),
            inputs: str = typer_option(fields["inputs"]), steps: int = typer_option(fields["steps"], default=5)) -> None:
        """Record the parsed values."""
        seen.update(out=out, ratio=ratio, inputs=inputs, steps=steps)

    runner = CliRunner()
    assert runner.invoke(app, ["--out", "x"]).exit_code == 0
    assert seen == {"out": "x", "ratio": 0.5, "inputs": "a,b", "steps": 5}
    assert runner.invoke(app, ["--out", "x", "--mix", "0.25"]).exit_code == 0 and seen["ratio"] == 0.25
    assert runner.invoke(app, []).exit_code == 2  # --out is required
    assert "Comma-separated inputs." in runner.invoke(app, ["--help"]).output


def test_for_option_attaches_the_parameter_once() -> None:
    """An error without a parameter gets the block's; one that names its own keeps it; other errors pass."""
    with pytest.raises(ConfigError) as caught, for_option("fusion"):
        raise ConfigError("unknown rule")
    assert (caught.value.option, str(caught.value)) == ("fusion", "fusion: unknown rule")
    with pytest.raises(DataError, match="^size: too big$"), for_option("fusion"):
        raise DataError("too big", option="size")
    with pytest.raises(KeyError), for_option("fusion"):
        raise KeyError("x")


def test_available_cpus_is_what_this_process_may_use() -> None:
    """The bound of worker counts: at least 1, at most the machine's CPUs."""
    assert 1 <= available_cpus() <= (os.cpu_count() or 1)
