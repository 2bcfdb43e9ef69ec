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


@app.command("phantom")
def phantom_command(
    out: str = typer.Option(..., "--out", help="Release directory to create (BraTS layout)."),
    cases: int = typer.Option(..., "--cases", help="Number of cases."),
    naming: str = typer.Option("brats2021", "--naming", help="Release layout and labels: brats2021, brats2020 or brats2023."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes the same bytes."),
    scale: float = typer.Option(1.0, "--scale", help="Grid scale: 1.0 -> 240x240x155 at 1 mm, 0.25 -> 60x60x39 at 4 mm."),
    workers: int = typer.Option(1, "--workers", help="Cases generated in parallel."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out directory."),
) -> None:
    """Write a synthetic BraTS release (phantom anatomy from the MNI152 templates) in real BraTS layout."""
    from fuse4seg.data.phantom import write_phantom_release

    path = write_phantom_release(out, cases, naming=naming, seed=seed, scale=scale, workers=workers,
                                 overwrite=overwrite)
    typer.echo(f"wrote {cases} phantom cases ({naming}, scale {scale}) to {path}")


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
