"""The ``fuse4seg`` command line: parses options and calls the library; holds no logic of its own."""

from __future__ import annotations

import inspect
import os
import signal
import sys
import threading
from typing import Any

import click
import typer
import typer.core
import typer.main

from fuse4seg.data.build.options import BuildOptions
from fuse4seg.errors import ConfigError, Fuse4SegError, cli_message
from fuse4seg.options import fields_by_name, typer_option

#: Command-line names of parameters whose flag is not ``--`` + name (filled when ``train`` is built).
FLAGS: dict[str, str] = {}


class _Commands(typer.core.TyperGroup):
    """fuse4seg's commands; ``train``, whose options derive from the training declarations (which import
    torch), is built only when it is asked for, so other commands start fast."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Command names in the order of this file (train after cite)."""
        names = super().list_commands(ctx)
        return names if "train" in names else [*names[:names.index("cite") + 1], "train",
                                               *names[names.index("cite") + 1:]]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """The command ``name``; ``train`` is built from the declarations on first use."""
        if name == "train" and name not in self.commands:
            from fuse4seg.train.config import error_flags

            train_command.__signature__ = _train_signature()  # type: ignore[attr-defined]
            single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
            single.command("train")(train_command)
            self.add_command(typer.main.get_command(single), "train")
            FLAGS.update(error_flags())
        return super().get_command(ctx, name)


app = typer.Typer(
    cls=_Commands,
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
    from fuse4seg.data.phantom.generator import write_phantom_release

    path = write_phantom_release(out, cases, naming=naming, seed=seed, scale=scale, workers=workers,
                                 overwrite=overwrite)
    typer.echo(f"wrote {cases} phantom cases ({naming}, scale {scale}) to {path}")


_BUILD = fields_by_name(BuildOptions)  # flags, defaults and help of build-benchmark, declared once


@app.command("build-benchmark")
def build_benchmark_command(
    out: str = typer_option(_BUILD["out"]),
    brats: str | None = typer_option(_BUILD["brats"]),
    phantom: int | None = typer_option(_BUILD["phantom"]),
    phantom_scale: float = typer_option(_BUILD["phantom_scale"]),
    fusion_inputs: str = typer_option(_BUILD["fusion_inputs"]),
    fusion: str = typer_option(_BUILD["fusion"]),
    size: int | None = typer_option(_BUILD["size"]),
    slices_per_case: int = typer_option(_BUILD["slices_per_case"]),
    split: str = typer_option(_BUILD["split"]),
    workers: int = typer_option(_BUILD["workers"]),
    seed: int = typer_option(_BUILD["seed"]),
    overwrite: bool = typer_option(_BUILD["overwrite"]),
    fusion_checkpoint: str | None = typer_option(_BUILD["fusion_checkpoint"]),
    volumes: bool = typer_option(_BUILD["volumes"]),
    reports: str | None = typer_option(_BUILD["reports"]),
    parquet: bool = typer_option(_BUILD["parquet"]),
) -> None:
    """Build the BraTS-Fuse benchmark package (tumour slices, fused images, patient-level splits)."""
    options = BuildOptions(**locals())
    from fuse4seg.data.build.builder import build_benchmark, format_summary

    typer.echo(format_summary(build_benchmark(options)))


@app.command("verify")
def verify_command(directory: str = typer.Argument(..., help="BraTS-Fuse package directory.")) -> None:
    """Re-hash a package's files against croissant.json and check its HDF5 schema and patient splits."""
    from fuse4seg.data.package.card import verify

    report = verify(directory)
    counts = ", ".join(f"{s} {c['slices']} slices / {c['cases']} cases" for s, c in report["splits"].items())
    typer.echo(f"ok: {directory}: {len(report['files'])} files match croissant.json; {counts}")


@app.command("cite")
def cite_command(
    directory: str = typer.Argument(..., help="BraTS-Fuse package directory."),
    output_format: str = typer.Option("bibtex", "--format", help="bibtex or cff."),
) -> None:
    """Print how to cite a BraTS-Fuse package (and, for BraTS builds, the BraTS papers)."""
    from fuse4seg.data.package.card import cite

    typer.echo(cite(directory, format=output_format), nl=False)


@app.command("export")
def export_command(
    directory: str = typer.Argument(..., help="BraTS-Fuse package directory."),
    output_format: str = typer.Option("parquet", "--format", help="parquet: the records as Parquet shards in "
                                      "DIR/parquet, added to croissant.json and the card; nifti: per-case NIfTI "
                                      "stacks in --out."),
    out: str | None = typer.Option(None, "--out", help="With --format nifti: the folder to create (outside DIR)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DIR/parquet or --out written by fuse4seg."),
) -> None:
    """Export a package's records for tools without HDF5: Parquet (mlcroissant, datasets, pandas) or NIfTI."""
    from fuse4seg.data.package.export import export, format_export

    typer.echo(format_export(export(directory, output_format, out=out, overwrite=overwrite)))


# ---- train (fuse4seg.train) ----------------------------------------------------------------------


def train_command(config: str | None = None, **values: Any) -> None:
    """Train a fusion + segmentation pipeline on a BraTS-Fuse package (bi-level by default)."""
    from fuse4seg.train.loop import format_train_summary, train_from_options

    typer.echo(format_train_summary(train_from_options(values, config)))


def _train_signature() -> inspect.Signature:
    """train_command's parameters: one typer.Option per declared training option (fuse4seg.train.config), each
    None when not given (a TOML file then applies), and --config."""
    from fuse4seg.train.config import command_line_options

    def parameter(name: str, annotation: Any, option: Any) -> inspect.Parameter:
        """A keyword-only parameter with a Typer option as its default."""
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation | None)

    params = [parameter(name, tp, typer_option(declaration)) for name, tp, declaration in command_line_options()]
    params.append(parameter("config", str, typer.Option(None, "--config", help=(
        "TOML file of options, keyed by option name (command-line options override it). Only there: the "
        "fusion_options/seg_options tables (model options beyond width/depth) and fusion_loss_weights."))))
    return inspect.Signature(params)


# ---- pretrain (fuse4seg.pretrain) ---------------------------------------------------------------------


def _pretrain_fields() -> dict[str, Any]:
    """Flags, defaults and help of pretrain, declared once (fuse4seg.pretrain.options, which imports no torch)."""
    from fuse4seg.pretrain.options import PretrainOptions

    return fields_by_name(PretrainOptions)


_PRE = _pretrain_fields()


@app.command("pretrain")
def pretrain_command(
    ctx: typer.Context,
    benchmark: str = typer_option(_PRE["benchmark"]),
    out: str = typer_option(_PRE["out"]),
    splits: str = typer_option(_PRE["splits"]),
    steps: int = typer_option(_PRE["steps"]),
    batch_size: int = typer_option(_PRE["batch_size"]),
    lr: float = typer_option(_PRE["lr"]),
    width: int = typer_option(_PRE["width"]),
    depth: int = typer_option(_PRE["depth"]),
    norm: str = typer_option(_PRE["norm"]),
    embed_dim: int = typer_option(_PRE["embed_dim"]),
    temperature: float = typer_option(_PRE["temperature"]),
    consistency_weight: float = typer_option(_PRE["consistency_weight"]),
    reconstruction_weight: float = typer_option(_PRE["reconstruction_weight"]),
    alignment_weight: float = typer_option(_PRE["alignment_weight"]),
    mask_fraction: float = typer_option(_PRE["mask_fraction"]),
    seed: int = typer_option(_PRE["seed"]),
    checkpoint_every: int = typer_option(_PRE["checkpoint_every"]),
    resume: bool = typer_option(_PRE["resume"]),
    overwrite: bool = typer_option(_PRE["overwrite"]),
    workers: int = typer_option(_PRE["workers"]),
    device: str = typer_option(_PRE["device"]),
    progress: bool = typer_option(_PRE["progress"], "--progress/--no-progress"),
) -> None:
    """Self-supervised pre-training of the segmenters' encoders on a package's sources, without labels (MICS:
    cross-modal InfoNCE, masked reconstruction of one modality, per-location feature alignment)."""
    values = {k: v for k, v in locals().items() if k != "ctx"}  # the options, before the imports below add names
    from fuse4seg.pretrain.options import PretrainOptions
    from fuse4seg.pretrain.runner import format_pretrain_summary, pretrain, resume_values

    # By name: typer's ParameterSource is its own copy of click's enum.
    given = {k for k in values if getattr(ctx.get_parameter_source(k), "name", None) == "COMMANDLINE"}
    typer.echo(format_pretrain_summary(pretrain(PretrainOptions(**resume_values(values, given)))))


@app.command("evaluate")
def evaluate_command(
    run: str = typer.Option(..., "--run", help="Run directory written by `fuse4seg train`."),
    benchmark: str | None = typer.Option(None, "--benchmark", help="Package to evaluate on (default: the run's)."),
    split: str = typer.Option("test", "--split", help="train, val or test."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    max_slices: int | None = typer.Option(None, "--max-slices", help="Evaluate only the first N slices (a --dims 3 "
                                          "run: the first N volumes)."),
    untrained: bool = typer.Option(False, "--compare-untrained", help="Also score the untrained networks."),
    volumes: str | None = typer.Option(None, "--volumes", help="BraTS release directory: score whole volumes of the "
                                       "split's cases, as the leaderboards do (writes RUN/eval-volumes-SPLIT)."),
    convention: str | None = typer.Option(None, "--convention", help="With --volumes: monai, brats2023 (default; "
                                          "2023-24 challenge code) or brats2025 (brats-evaluation / panoptica)."),
    challenge: str | None = typer.Option(None, "--challenge", help="With --volumes: gli (default), ssa, ped, men "
                                         "or met (brats2023's lesion settings)."),
    write_seg: bool = typer.Option(False, "--write-seg", help="With --volumes: also write seg/<case id>.nii.gz "
                                   "(release labels), a submission `fuse4seg score` can rescore."),
    texts: bool = typer.Option(True, "--texts/--no-texts", help="A text-guided fusion net reads the slices' texts, "
                               "or fuses without them (its 'no text' token)."),
) -> None:
    """Score a run: on the benchmark's slices (fusion metrics, Dice/HD95; RUN/eval) or, with --volumes, on
    whole BraTS volumes under a leaderboard convention (RUN/eval-volumes-SPLIT)."""
    if volumes is None:
        given = [name for name, value in (("convention", convention), ("challenge", challenge),
                                          ("write_seg", write_seg)) if value]
        if given:
            raise ConfigError("applies only with --volumes", option=given[0])
        from fuse4seg.evaluation.evaluate import evaluate_run
        from fuse4seg.evaluation.report import format_summary

        metrics = evaluate_run(run, benchmark, split, checkpoint, device, max_slices, untrained, texts=texts)
        typer.echo(format_summary(metrics))
        typer.echo(f"report: {run}/eval/report.md; metrics: {run}/eval/metrics.json")
        return
    given = [name for name, value in (("max_slices", max_slices is not None), ("compare_untrained", untrained),
                                      ("texts", not texts)) if value]
    if given:
        raise ConfigError("applies only to slice evaluation, not with --volumes", option=given[0])
    from fuse4seg.evaluation.volumes import evaluate_volumes, out_dir
    from fuse4seg.metrics.scoring import summary_lines

    result = evaluate_volumes(run, volumes, split, convention or "brats2023", challenge or "gli", benchmark,
                              checkpoint, device, write_seg)
    typer.echo("\n".join(summary_lines(result)))
    typer.echo(f"report: {out_dir(run, split)}/report.md; metrics: metrics.json, scores.csv"
               + (", seg/" if write_seg else ""))


@app.command("robustness")
def robustness_command(
    runs: list[str] = typer.Option(  # noqa: B008 (a repeatable option is a list)
        ..., "--run", help="Run directory written by `fuse4seg train`; repeat to compare runs on the same images."),
    degradations: str = typer.Option("noise,blur,kspace,motion,lowres", "--degradations",
                                     help="Comma list of degradations or groups (noise, blur, bias, kspace, motion, "
                                          "lowres; members: noise, rician, blur, bias, spike, undersample, motion, "
                                          "lowres)."),
    levels: int = typer.Option(5, "--levels", help="Severities above clean, evenly spaced up to 1 (1 to 20)."),
    out: str = typer.Option(..., "--out", help="Output directory (robustness.md/.json/.csv, PNG plots)."),
    split: str = typer.Option("test", "--split", help="train, val or test."),
    seed: int = typer.Option(0, "--seed", help="Seed of the degradations' random draws (same for every run)."),
    fusion_slices: int = typer.Option(16, "--fusion-slices", help="Slices scored by the fusion metrics per level "
                                                                  "(spread over the split; 0: all)."),
    workers: int = typer.Option(1, "--workers", help="(run, degradation) jobs evaluated in parallel."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an --out written by fuse4seg robustness."),
) -> None:
    """Dice per region and fusion metrics against the clean sources as MR degradations grow worse."""
    import shlex

    from fuse4seg.evaluation.robustness import format_robustness, robustness

    command = shlex.join(["fuse4seg", "robustness", *sys.argv[2:]]) if sys.argv[1:2] == ["robustness"] else ""
    result = robustness(runs, degradations, levels, out, split=split, seed=seed, fusion_slices=fusion_slices,
                        workers=workers, overwrite=overwrite, command=command)
    typer.echo(format_robustness(result, out))


@app.command("fuse")
def fuse_command(
    run: str = typer.Option(..., "--run", help="Run directory written by `fuse4seg train`."),
    case: str = typer.Option(..., "--case", help="One BraTS-layout case directory."),
    out: str = typer.Option(..., "--out", help="Output directory (fused.nii.gz, seg.nii.gz)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out directory."),
    reports: str | None = typer.Option(None, "--reports", help="UTF-8 CSV (case_id,slice_index,text; slice_index "
                                       "empty for every slice) of texts guiding a text-guided fusion net."),
) -> None:
    """Apply a trained run to a case (slice by slice; a 3-D run by sliding windows): fused.nii.gz, seg.nii.gz."""
    from fuse4seg.inference.fuse import fuse_case

    result = fuse_case(run, case, out, checkpoint, device, overwrite, reports)
    voxels = ", ".join(f"{k} {v}" for k, v in result["voxels"].items())
    typer.echo(f"{result['case_id']}: wrote {', '.join(result['files'])} to {out} ({result['scheme']} labels; {voxels})")


@app.command("score")
def score_command(
    pred: str = typer.Option(..., "--pred", help="Predictions: one <case id>.nii.gz per case, the release's label values."),
    truth: str = typer.Option(..., "--truth", help="BraTS release directory holding the truth seg files."),
    convention: str = typer.Option(..., "--convention", help="monai, brats2023 (2023-24 challenge code) or brats2025 "
                                                             "(brats-evaluation / panoptica)."),
    challenge: str = typer.Option("gli", "--challenge", help="gli, ssa, ped, men or met: brats2023's lesion dilation "
                                                             "and volume threshold."),
    out: str = typer.Option(..., "--out", help="Output FILE.json; FILE.csv (one row per case and region) goes next to it."),
    workers: int = typer.Option(1, "--workers", help="Cases scored in parallel."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out written by fuse4seg score."),
) -> None:
    """Score BraTS predictions against a release: Dice, HD95 and lesion-wise metrics per case and region."""
    from fuse4seg.metrics.scoring import format_score_summary, score_directory

    result = score_directory(pred, truth, out, convention=convention, challenge=challenge, workers=workers,
                             overwrite=overwrite)
    typer.echo(format_score_summary(result, out))


@app.command("fusion-metrics")
def fusion_metrics_command(
    fused: str = typer.Option(..., "--fused", help="Folder of fused 2-D images (PNG/JPEG/BMP/TIFF or NIfTI slices)."),
    sources: list[str] = typer.Option(  # noqa: B008 (a repeatable option is a list)
        ..., "--sources", help="Folder of one source modality, images named as the fused ones; repeat the option "
                               "for each source (at least two)."),
    out: str = typer.Option(..., "--out", help="Output FILE.json: one row per image and the mean."),
    data_range: float = typer.Option(255.0, "--data-range", help="SSIM's data range (CDDFuse's published tables: 2)."),
    scale: float = typer.Option(1.0, "--scale", help="Multiply every image by this first (255 for images in [0, 1])."),
    workers: int = typer.Option(1, "--workers", help="Images scored in parallel."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an --out written by fuse4seg fusion-metrics."),
) -> None:
    """MMIF / CDDFuse-convention fusion metrics (EN, SD, SF, AG, MI, SCD, VIF, Qabf, SSIM, PSNR, CC) of any
    method's fused images against their sources."""
    from fuse4seg.metrics.fusion_files import format_fusion_summary, fusion_metrics_directory

    result = fusion_metrics_directory(fused, sources, out, data_range=data_range, scale=scale, workers=workers,
                                      overwrite=overwrite)
    typer.echo(format_fusion_summary(result, out))


@app.command("demo")
def demo_command(
    out: str = typer.Option("runs/demo", "--out", help="Directory for the demo's benchmark and run."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out directory."),
    threads: int = typer.Option(1, "--threads", help="CPU threads for torch (1 is robust on a busy 2-core machine)."),
    seed: int = typer.Option(0, "--seed", help="Training seed (initial weights, data order); the benchmark stays the "
                                               "same. The README quotes the demo over seeds 0-4."),
) -> None:
    """Build a small phantom benchmark, train bi-level, evaluate, and print the results."""
    from fuse4seg.demo import run_demo

    run_demo(out, overwrite=overwrite, echo=typer.echo, train_overrides={"threads": threads, "seed": seed})


#: Seconds an interrupted command has to unwind before the signal is delivered again with its default action.
UNWIND_SECONDS = 20.0
#: Pending re-sends; cancelled once main() has unwound (the command ended as the signal asked).
_RESEND: list[threading.Timer] = []


def _on_signal(signum: int, frame: object) -> None:
    """SIGTERM -> SystemExit(128 + signum), SIGINT -> KeyboardInterrupt, so atomic writes remove their temporary
    outputs. The default actions are restored first, and the signal is re-sent after UNWIND_SECONDS: if the
    exception is swallowed (raised inside a weakref callback or a __del__), the signal still stops the process."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    resend = threading.Timer(UNWIND_SECONDS, os.kill, (os.getpid(), signum))
    resend.daemon = True
    resend.start()
    _RESEND.append(resend)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    sys.exit(128 + signum)


def _handle_signals() -> dict[int, object]:
    """Install :func:`_on_signal` for SIGTERM and SIGINT; returns the previous handlers (none off the main
    thread, where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; bad input becomes a one-line ``error:`` message and exit status 1.

    Usage errors (unknown option, bad value) are reported by Typer itself with exit status 2.
    """
    previous = _handle_signals()
    try:
        app(args=argv, prog_name="fuse4seg")
    except Fuse4SegError as exc:
        typer.echo(f"error: {cli_message(exc, FLAGS)}", err=True)
        return 1
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        while _RESEND:
            _RESEND.pop().cancel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
