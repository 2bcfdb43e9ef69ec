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


@app.command("build-benchmark")
def build_benchmark_command(
    out: str = typer.Option(..., "--out", help="Package directory to create (brats_fuse.h5, card, citation, croissant)."),
    brats: str | None = typer.Option(None, "--brats", help="BraTS release directory (2020, 2021 or 2023+ layout)."),
    phantom: int | None = typer.Option(None, "--phantom", help="Build from a phantom release of N cases (the default "
                                                               "when no --brats is given: 10 cases)."),
    phantom_scale: float = typer.Option(1.0, "--phantom-scale", help="Phantom grid scale (0.25 for fast tests)."),
    fusion_inputs: str = typer.Option("t1ce,flair", "--fusion-inputs", help="Modalities to fuse, comma-separated."),
    fusion: str = typer.Option("laplacian", "--fusion", help="Fusion rule: mean, max, pca, laplacian, wavelet."),
    size: int | None = typer.Option(None, "--size", help="Crop to the brain and resize slices to PX x PX."),
    slices_per_case: int = typer.Option(8, "--slices-per-case", help="Tumour slices kept per case."),
    split: str = typer.Option("0.7,0.1,0.2", "--split", help="Train,val,test fractions of the cases (sum 1)."),
    workers: int = typer.Option(1, "--workers", help="Cases processed in parallel."),
    seed: int = typer.Option(0, "--seed", help="Seed of the patient split (and of the phantom release)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out directory."),
) -> None:
    """Build the BraTS-Fuse benchmark package (tumour slices, fused images, patient-level splits)."""
    import shlex

    from fuse4seg.data.benchmark import build_benchmark, format_summary

    argv = ["fuse4seg", "build-benchmark", "--out", out]
    argv += ["--brats", brats] if brats is not None else []
    argv += ["--phantom", str(phantom)] if phantom is not None else []
    argv += ["--phantom-scale", str(phantom_scale)] if brats is None and phantom_scale != 1.0 else []
    argv += ["--fusion-inputs", fusion_inputs, "--fusion", fusion]
    argv += ["--size", str(size)] if size is not None else []
    argv += ["--slices-per-case", str(slices_per_case), "--split", split, "--seed", str(seed)]
    summary = build_benchmark(out, brats=brats, phantom=phantom, fusion_inputs=fusion_inputs, fusion=fusion,
                              size=size, slices_per_case=slices_per_case, split=split, workers=workers, seed=seed,
                              overwrite=overwrite, phantom_scale=phantom_scale, command=shlex.join(argv))
    typer.echo(format_summary(summary))


@app.command("verify")
def verify_command(directory: str = typer.Argument(..., help="BraTS-Fuse package directory.")) -> None:
    """Re-hash a package's files against croissant.json and check its HDF5 schema and patient splits."""
    from fuse4seg.data.package import verify

    report = verify(directory)
    counts = ", ".join(f"{s} {c['slices']} slices / {c['cases']} cases" for s, c in report["splits"].items())
    typer.echo(f"ok: {directory}: {len(report['files'])} files match croissant.json; {counts}")


@app.command("cite")
def cite_command(
    directory: str = typer.Argument(..., help="BraTS-Fuse package directory."),
    format: str = typer.Option("bibtex", "--format", help="bibtex or cff."),
) -> None:
    """Print how to cite a BraTS-Fuse package (and, for BraTS builds, the BraTS papers)."""
    from fuse4seg.data.package import cite

    typer.echo(cite(directory, format=format), nl=False)


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
