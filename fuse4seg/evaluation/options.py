"""The options of ``fuse4seg evaluate`` (:class:`EvaluateOptions`) and ``fuse4seg robustness``
(:class:`RobustnessOptions`), declared once, with the rules of which evaluate options apply together
(:func:`check_evaluate`) and :func:`evaluate`, which scores a run as the options say."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fuse4seg.errors import ConfigError
from fuse4seg.options import option

#: Options that only whole-volume scoring (--volumes) reads.
VOLUME_ONLY: tuple[str, ...] = ("convention", "challenge", "write_seg")
#: Options that only slice evaluation (no --volumes) reads.
SLICE_ONLY: tuple[str, ...] = ("max_slices", "compare_untrained", "texts")


@dataclass(frozen=True)
class EvaluateOptions:
    """How a run is scored: on the benchmark's slices, or with ``volumes`` on whole BraTS volumes. The options
    that only one of the two reads are None / their default when not given (see :func:`check_evaluate`)."""

    run: str = option(help="Run directory written by `fuse4seg train`.", path=True)
    benchmark: str | None = option(None, "Package to evaluate on (default: the run's).", path=True)
    split: str = option("test", "train, val or test.")
    checkpoint: str = option("best", "best or last.")
    device: str = option("cpu", "cpu or cuda.", recorded=False)
    max_slices: int | None = option(None, "Evaluate only the first N slices (a --dims 3 run: the first N volumes).")
    compare_untrained: bool = option(False, "Also score the untrained networks.")
    volumes: str | None = option(None, "BraTS release directory: score whole volumes of the split's cases, as the "
                                       "leaderboards do (writes RUN/eval-volumes-SPLIT).", path=True)
    convention: str | None = option(None, "With --volumes: monai, brats2023 (default; 2023-24 challenge code) or "
                                          "brats2025 (brats-evaluation / panoptica).")
    challenge: str | None = option(None, "With --volumes: gli (default), ssa, ped, men or met (brats2023's lesion "
                                         "settings).")
    write_seg: bool = option(False, "With --volumes: also write seg/<case id>.nii.gz (release labels), a submission "
                                    "`fuse4seg score` can rescore.")
    texts: bool = option(True, "A text-guided fusion net reads the slices' texts, or fuses without them (its 'no "
                               "text' token).", flag="--texts/--no-texts")


def check_evaluate(options: EvaluateOptions) -> EvaluateOptions:
    """ConfigError naming the first option set that the chosen evaluation does not read (:data:`VOLUME_ONLY`
    without ``volumes``, :data:`SLICE_ONLY` with it); returns ``options``."""
    if options.volumes is None:
        given = [name for name in VOLUME_ONLY if getattr(options, name)]
        if given:
            raise ConfigError("applies only with --volumes", option=given[0])
        return options
    changed = {"max_slices": options.max_slices is not None, "compare_untrained": options.compare_untrained,
               "texts": not options.texts}
    given = [name for name in SLICE_ONLY if changed[name]]
    if given:
        raise ConfigError("applies only to slice evaluation, not with --volumes", option=given[0])
    return options


def evaluate(options: EvaluateOptions) -> tuple[dict[str, Any], list[str]]:
    """Score the run as ``options`` say (checked by :func:`check_evaluate` first): its metrics and the summary
    lines to show (ending with where the report and metrics were written)."""
    check_evaluate(options)
    o = options
    if o.volumes is None:
        from fuse4seg.evaluation.evaluate import evaluate_run
        from fuse4seg.evaluation.report import format_summary

        metrics = evaluate_run(o.run, o.benchmark, o.split, o.checkpoint, o.device, o.max_slices, o.compare_untrained,
                               texts=o.texts)
        return metrics, [format_summary(metrics), f"report: {o.run}/eval/report.md; metrics: {o.run}/eval/metrics.json"]
    from fuse4seg.evaluation.volumes import evaluate_volumes, out_dir
    from fuse4seg.metrics.scoring import summary_lines

    result = evaluate_volumes(o.run, o.volumes, o.split, o.convention or "brats2023", o.challenge or "gli",
                              o.benchmark, o.checkpoint, o.device, o.write_seg)
    written = f"report: {out_dir(o.run, o.split)}/report.md; metrics: metrics.json, scores.csv"
    return result, ["\n".join(summary_lines(result)), written + (", seg/" if o.write_seg else "")]


@dataclass(frozen=True, kw_only=True)
class RobustnessOptions:
    """Runs scored as MR degradations grow worse (checked by :func:`fuse4seg.evaluation.robustness.robustness`)."""

    runs: list[str] = option(help="Run directory written by `fuse4seg train`; repeat to compare runs on the same "  # noqa: RUF009
                                  "images.", flag="--run", path=True)
    degradations: str = option("noise,blur,kspace,motion,lowres", "Comma list of degradations or groups (noise, blur, "
                               "bias, kspace, motion, lowres; members: noise, rician, blur, bias, spike, undersample, "
                               "motion, lowres).")
    levels: int = option(5, "Severities above clean, evenly spaced up to 1 (1 to 20).")
    out: str = option(help="Output directory (robustness.md/.json/.csv, PNG plots).", path=True)
    split: str = option("test", "train, val or test.")
    seed: int = option(0, "Seed of the degradations' random draws (same for every run).")
    fusion_slices: int = option(16, "Slices scored by the fusion metrics per level (spread over the split; 0: all).")
    workers: int = option(1, "(run, degradation) jobs evaluated in parallel.", recorded=False)
    overwrite: bool = option(False, "Replace an --out written by fuse4seg robustness.", recorded=False)


def robustness(options: RobustnessOptions, command: str = "") -> dict[str, Any]:
    """Run :func:`fuse4seg.evaluation.robustness.robustness` as ``options`` say (``command``: the command line to
    record in the report)."""
    from fuse4seg.evaluation.robustness import robustness as run_robustness

    o = options
    return run_robustness(o.runs, o.degradations, o.levels, o.out, split=o.split, seed=o.seed,
                          fusion_slices=o.fusion_slices, workers=o.workers, overwrite=o.overwrite, command=command)
