"""The ``fuse4seg`` command line: parses options and calls the library; holds no logic of its own."""

from __future__ import annotations

import sys

import typer

from fuse4seg.errors import Fuse4SegError

app = typer.Typer(
    name="fuse4seg",
    help="Image-level fusion of multi-modal medical images trained by bi-level optimisation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# ---- commands are added below, one function each, grouped by library module -------------------


@app.command("models")
def models_command(
    size: bool = typer.Option(False, "--size", help="Also report output shapes at 240 and 128 px."),
) -> None:
    """List the registered networks with their default options and parameter counts."""
    from fuse4seg.models import format_model_table, model_summary

    typer.echo(format_model_table(model_summary(sizes=(240, 128) if size else ())))


def main(argv: list[str] | None = None) -> int:
    """Run the command line; bad input becomes a one-line ``error:`` message and exit status 1.

    Usage errors (unknown option, bad value) are reported by Typer itself with exit status 2.
    """
    try:
        app(args=argv, prog_name="fuse4seg")
    except Fuse4SegError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
