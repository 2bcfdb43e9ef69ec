"""The ``fuse4seg`` command line: one short function per command, which receives the command's options object
(a dataclass declared beside the library code it configures, turned into the command's options by
:mod:`fuse4seg.commands`), calls the library and prints the result; plus :func:`main` and signal handling."""

from __future__ import annotations

import errno
import os
import shlex
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

import click
import typer

from fuse4seg.commands import Commands, build_command, command_group
from fuse4seg.errors import Fuse4SegError, cli_message

if TYPE_CHECKING:
    from fuse4seg.data.build.options import BuildOptions
    from fuse4seg.data.package.options import CiteOptions, ExportOptions, VerifyOptions
    from fuse4seg.data.phantom.options import PhantomOptions
    from fuse4seg.demo_options import DemoOptions
    from fuse4seg.evaluation.options import EvaluateOptions, RobustnessOptions
    from fuse4seg.inference.options import FuseOptions
    from fuse4seg.metrics.options import FusionMetricsOptions, ScoreOptions
    from fuse4seg.models.options import ModelsOptions
    from fuse4seg.pretrain.options import PretrainOptions

#: Command-line names of parameters whose flag is not ``--`` + name (filled when ``train`` is built).
FLAGS: dict[str, str] = {}
#: The commands, in the order ``--help`` lists them; each is built from its options class when first used.
COMMANDS = Commands()

app = typer.Typer(
    cls=command_group(COMMANDS),
    name="fuse4seg",
    help="Image-level fusion of multi-modal medical images trained by bi-level optimisation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _group() -> None:
    """The commands are registered in COMMANDS (built on first use), not on the Typer app."""


# ---- commands, one function each, grouped by library module ----------------------------------------------


@COMMANDS.command("models", "fuse4seg.models.options:ModelsOptions")
def models_command(options: ModelsOptions) -> None:
    """List the registered networks with their default options and parameter counts."""
    from fuse4seg.models.options import model_table

    typer.echo(model_table(options))


@COMMANDS.command("phantom", "fuse4seg.data.phantom.options:PhantomOptions")
def phantom_command(options: PhantomOptions) -> None:
    """Write a synthetic BraTS release (phantom anatomy from the MNI152 templates) in real BraTS layout."""
    from fuse4seg.data.phantom.options import write_release

    path = write_release(options)
    typer.echo(f"wrote {options.cases} phantom cases ({options.naming}, scale {options.scale}) to {path}")


@COMMANDS.command("build-benchmark", "fuse4seg.data.build.options:BuildOptions")
def build_benchmark_command(options: BuildOptions) -> None:
    """Build the BraTS-Fuse benchmark package (tumour slices, fused images, patient-level splits)."""
    from fuse4seg.data.build.builder import format_summary
    from fuse4seg.inference.build import build_benchmark

    typer.echo(format_summary(build_benchmark(options)))


@COMMANDS.command("verify", "fuse4seg.data.package.options:VerifyOptions")
def verify_command(options: VerifyOptions) -> None:
    """Re-hash a package's files against croissant.json and check its HDF5 schema and patient splits."""
    from fuse4seg.data.package.verify import verify

    report = verify(options.directory)
    counts = ", ".join(f"{s} {c['slices']} slices / {c['cases']} cases" for s, c in report["splits"].items())
    typer.echo(f"ok: {options.directory}: {len(report['files'])} files match croissant.json; {counts}")


@COMMANDS.command("cite", "fuse4seg.data.package.options:CiteOptions")
def cite_command(options: CiteOptions) -> None:
    """Print how to cite a BraTS-Fuse package (and, for BraTS builds, the BraTS papers)."""
    from fuse4seg.data.package.citation import cite

    typer.echo(cite(options.directory, format=options.output_format), nl=False)


# ---- train (listed after cite): its options derive from TrainConfig's declarations --------------------


def train_command(values: dict[str, Any], given: frozenset[str]) -> None:
    """Train a fusion + segmentation pipeline on a BraTS-Fuse package (bi-level by default)."""
    from fuse4seg.train.loop import format_train_summary, train_from_options

    config = values.pop("config")
    typer.echo(format_train_summary(train_from_options(values, config)))


def _train() -> click.Command:
    """``train``: one option per declared training option (:class:`fuse4seg.train.config.TrainConfig`, derived by
    :func:`fuse4seg.train.command_line.command_line_options`), each None when not given (a TOML file then
    applies), and --config (declared there too)."""
    from fuse4seg.train.command_line import command_line_options, error_flags

    FLAGS.update(error_flags())
    parameters = [(name, tp | None, field) for name, tp, field in command_line_options()]
    return build_command("train", train_command, parameters, train_command.__doc__)


COMMANDS.add("train", _train)


@COMMANDS.command("export", "fuse4seg.data.package.options:ExportOptions")
def export_command(options: ExportOptions) -> None:
    """Export a package's records for tools without HDF5: Parquet (mlcroissant, datasets, pandas) or NIfTI."""
    from fuse4seg.data.package.export import export, format_export

    typer.echo(format_export(export(options.directory, options.output_format, out=options.out,
                                    overwrite=options.overwrite)))


@COMMANDS.command("pretrain", "fuse4seg.pretrain.options:PretrainOptions")
def pretrain_command(options: PretrainOptions, given: frozenset[str]) -> None:
    """Self-supervised pre-training of the segmenters' encoders on a package's sources, without labels (MICS:
    cross-modal InfoNCE, masked reconstruction of one modality, per-location feature alignment)."""
    from fuse4seg.pretrain.runner import format_pretrain_summary, pretrain_given

    typer.echo(format_pretrain_summary(pretrain_given(options, given)))


@COMMANDS.command("evaluate", "fuse4seg.evaluation.options:EvaluateOptions")
def evaluate_command(options: EvaluateOptions) -> None:
    """Score a run: on the benchmark's slices (fusion metrics, Dice/HD95; RUN/eval) or, with --volumes, on
    whole BraTS volumes under a leaderboard convention (RUN/eval-volumes-SPLIT)."""
    from fuse4seg.evaluation.options import evaluate

    for text in evaluate(options)[1]:
        typer.echo(text)


@COMMANDS.command("robustness", "fuse4seg.evaluation.options:RobustnessOptions")
def robustness_command(options: RobustnessOptions) -> None:
    """Dice per region and fusion metrics against the clean sources as MR degradations grow worse."""
    from fuse4seg.evaluation.options import robustness
    from fuse4seg.evaluation.robustness import format_robustness

    command = shlex.join(["fuse4seg", "robustness", *sys.argv[2:]]) if sys.argv[1:2] == ["robustness"] else ""
    typer.echo(format_robustness(robustness(options, command=command), options.out))


@COMMANDS.command("fuse", "fuse4seg.inference.options:FuseOptions")
def fuse_command(options: FuseOptions) -> None:
    """Apply a trained run to a case (slice by slice; a 3-D run by sliding windows): fused.nii.gz, seg.nii.gz."""
    from fuse4seg.inference.options import fuse

    result = fuse(options)
    voxels = ", ".join(f"{k} {v}" for k, v in result["voxels"].items())
    typer.echo(f"{result['case_id']}: wrote {', '.join(result['files'])} to {options.out} ({result['scheme']} "
               f"labels; {voxels})")


@COMMANDS.command("score", "fuse4seg.metrics.options:ScoreOptions")
def score_command(options: ScoreOptions) -> None:
    """Score BraTS predictions against a release: Dice, HD95 and lesion-wise metrics per case and region."""
    from fuse4seg.metrics.scoring import format_score_summary, score_from_options

    typer.echo(format_score_summary(score_from_options(options), options.out))


@COMMANDS.command("fusion-metrics", "fuse4seg.metrics.options:FusionMetricsOptions")
def fusion_metrics_command(options: FusionMetricsOptions) -> None:
    """MMIF / CDDFuse-convention fusion metrics (EN, SD, SF, AG, MI, SCD, VIF, Qabf, SSIM, PSNR, CC) of any
    method's fused images against their sources."""
    from fuse4seg.metrics.fusion_files import format_fusion_summary, fusion_metrics_from_options

    typer.echo(format_fusion_summary(fusion_metrics_from_options(options), options.out))


@COMMANDS.command("demo", "fuse4seg.demo_options:DemoOptions")
def demo_command(options: DemoOptions) -> None:
    """Build a small phantom benchmark, train bi-level, evaluate, and print the results."""
    from fuse4seg.demo_options import demo

    demo(options, echo=typer.echo)


#: Seconds an interrupted command has to unwind before the signal is delivered again with its default action.
UNWIND_SECONDS = 20.0
#: Pending re-sends; cancelled once main() has unwound (the command ended as the signal asked).
_RESEND: list[threading.Timer] = []
#: Signals received by :func:`_on_signal` during this main() call: however the command unwinds (Typer turns
#: KeyboardInterrupt into exit 130, a cleanup may raise), it then ends with :func:`_signal_exit`.
_RECEIVED: list[int] = []


def stopped_by_signal() -> bool:
    """Whether the last :func:`main` ended because of SIGINT or SIGTERM."""
    return bool(_RECEIVED)


def _signal_exit() -> int:
    """The one line and exit status (128 + signal) of a command stopped by SIGINT or SIGTERM."""
    signum = _RECEIVED[0]
    typer.echo("error: interrupted" if signum == signal.SIGINT else "error: terminated", err=True)
    return 128 + signum


def _on_signal(signum: int, frame: object) -> None:
    """SIGTERM -> SystemExit(128 + signum), SIGINT -> KeyboardInterrupt, so atomic writes remove their temporary
    outputs. The default actions are restored first, and the signal is re-sent after UNWIND_SECONDS: if the
    exception is swallowed (raised inside a weakref callback or a __del__), the signal still stops the process."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    _RECEIVED.append(signum)
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


def _full_disk(exc: OSError) -> str | None:
    """The one line for an OSError that says the disk is full (naming the file when it is known), else None."""
    from fuse4seg.io import write_failure

    error = write_failure(os.fsdecode(exc.filename) if exc.filename is not None else "an output", exc)
    return None if error is None else str(error)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; bad input becomes a one-line ``error:`` message and exit status 1.

    Usage errors (unknown option, bad value) are reported by Typer itself with exit status 2.
    """
    _RECEIVED.clear()
    previous = _handle_signals()
    try:
        app(args=argv, prog_name="fuse4seg")
    except Fuse4SegError as exc:
        if _RECEIVED:  # raised while unwinding after the signal
            return _signal_exit()
        typer.echo(f"error: {cli_message(exc, FLAGS)}", err=True)
        return 1
    except KeyboardInterrupt:
        if not _RECEIVED:
            _RECEIVED.append(signal.SIGINT)
        return _signal_exit()
    except OSError as exc:  # a name fuse4seg derives from user data (a case id) that the file system refuses
        if _RECEIVED:
            return _signal_exit()
        full = _full_disk(exc)  # a full disk that no writer turned into its own one line
        if full:
            typer.echo(f"error: {full}", err=True)
            return 1
        if exc.errno not in (errno.ENAMETOOLONG, errno.ENOTDIR, errno.ELOOP) or exc.filename is None:
            raise
        typer.echo(f"error: {os.fsdecode(exc.filename)[:200]}: {exc.strerror}", err=True)
        return 1
    except SystemExit as exc:
        if _RECEIVED:
            return _signal_exit()
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception:
        if _RECEIVED:  # a cleanup that failed while unwinding after the signal (e.g. a pool starting up)
            return _signal_exit()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        while _RESEND:
            _RESEND.pop().cancel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
