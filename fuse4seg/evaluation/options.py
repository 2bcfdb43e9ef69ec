"""The options of ``fuse4seg evaluate`` (:class:`EvaluateOptions`) and ``fuse4seg robustness``
(:class:`RobustnessOptions`), declared once, with the rules of which evaluate options apply together
(:func:`check_evaluate`) and :func:`evaluate`, which scores a run as the options say."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fuse4seg.errors import ConfigError
from fuse4seg.metrics.conventions import DEFAULT_CHALLENGE, DEFAULT_CONVENTION
from fuse4seg.options import (
    MAX_EVAL_SLICES,
    MAX_SEED,
    CheckedOptions,
    check_options,
    device_problem,
    in_range,
    one_of,
    one_of_named,
    option,
    seed_problem,
)
from fuse4seg.parallel import MAX_WORKERS
from fuse4seg.runkit.rundir import CHECKPOINTS

#: Options that only whole-volume scoring (--volumes) reads.
VOLUME_ONLY: tuple[str, ...] = ("convention", "challenge", "write_seg")
#: Options that only slice evaluation (no --volumes) reads.
SLICE_ONLY: tuple[str, ...] = ("max_slices", "compare_untrained", "texts")
#: A package's splits (fuse4seg.data.package.schema.SPLITS) and a run's checkpoints (fuse4seg.train.run.CHECKPOINTS),
#: named here so that the options' checks import neither.
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Most severities above clean (--levels): 20 steps of 0.05 already resolve every degradation's curve; each level
#: re-evaluates every run on the whole split.
MAX_LEVELS: int = 20
#: Most slices scored by the fusion metrics per level (--fusion-slices; 0: all), as --max-slices.
MAX_FUSION_SLICES: int = MAX_EVAL_SLICES
#: Longest --degradations list (characters): every name and group spelled out is ~80.
MAX_DEGRADATIONS_TEXT: int = 1000
_CONVENTIONS = "fuse4seg.metrics.conventions:CONVENTIONS"
_CHALLENGES = "fuse4seg.metrics.conventions:CHALLENGES"


def degradations_problem(value: object) -> str | None:
    """What is wrong with ``value`` as a comma list of degradations and groups (names as
    :func:`fuse4seg.evaluation.robustness.expand_degradations` reads them), or None."""
    from fuse4seg.data.augment.severity import DEGRADATIONS, GROUPS

    if not isinstance(value, str) or len(value) > MAX_DEGRADATIONS_TEXT:
        return f"must be a comma list of at most {MAX_DEGRADATIONS_TEXT} characters"
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    if not names:
        return "give at least one degradation"
    unknown = [n for n in names if n not in GROUPS and n not in DEGRADATIONS]
    if unknown:
        return (f"unknown degradation {unknown[0]!r}; known: {', '.join(GROUPS)} (groups) and "
                f"{', '.join(DEGRADATIONS)}")
    return None


@dataclass(frozen=True)
class EvaluateOptions:
    """How a run is scored: on the benchmark's slices, or with ``volumes`` on whole BraTS volumes. The options
    that only one of the two reads are None / their default when not given (see :func:`check_evaluate`)."""

    run: str = option(help="Run directory written by `fuse4seg train`.", path=True)
    benchmark: str | None = option(None, "Package to evaluate on (default: the run's).", path=True)
    split: str = option("test", "train, val or test.", check=one_of(SPLITS))
    checkpoint: str = option("best", "best or last.", check=one_of(CHECKPOINTS))
    device: str = option("cpu", "cpu or cuda.", recorded=False, check=device_problem)
    max_slices: int | None = option(None, f"Evaluate only the first N slices (a --dims 3 run: the first N volumes; 1 "
                                          f"to {MAX_EVAL_SLICES}).", check=in_range(1, MAX_EVAL_SLICES, integer=True))
    compare_untrained: bool = option(False, "Also score the untrained networks.")
    volumes: str | None = option(None, "BraTS release directory: score whole volumes of the split's cases, as the "
                                       "leaderboards do (writes RUN/eval-volumes-SPLIT).", path=True)
    convention: str | None = option(None, "With --volumes: monai, brats2023 (default; 2023-24 challenge code) or "
                                          "brats2025 (brats-evaluation / panoptica).",
                                     check=one_of_named(_CONVENTIONS, ignore_case=True))
    challenge: str | None = option(None, "With --volumes: gli (default), ssa, ped, men or met (brats2023's lesion "
                                         "settings).", check=one_of_named(_CHALLENGES, ignore_case=True))
    write_seg: bool = option(False, "With --volumes: also write seg/<case id>.nii.gz (release labels), a submission "
                                    "`fuse4seg score` can rescore.")
    texts: bool = option(True, "A text-guided fusion net reads the slices' texts, or fuses without them (its 'no "
                               "text' token).", flag="--texts/--no-texts")

    def __post_init__(self) -> None:
        """ConfigError naming the first option out of its declared bounds (combinations: :func:`check_evaluate`)."""
        check_options(self)


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

    result = evaluate_volumes(o.run, o.volumes, o.split, o.convention or DEFAULT_CONVENTION,
                              o.challenge or DEFAULT_CHALLENGE,
                              o.benchmark, o.checkpoint, o.device, o.write_seg)
    written = f"report: {out_dir(o.run, o.split)}/report.md; metrics: metrics.json, scores.csv"
    return result, ["\n".join(summary_lines(result)), written + (", seg/" if o.write_seg else "")]


@dataclass(frozen=True, kw_only=True)
class RobustnessOptions(CheckedOptions):
    """Runs scored as MR degradations grow worse (checked by :func:`fuse4seg.evaluation.robustness.robustness`)."""

    runs: list[str] = option(help="Run directory written by `fuse4seg train`; repeat to compare runs on the same "  # noqa: RUF009
                                  "images.", flag="--run", path=True)
    degradations: str = option("noise,blur,kspace,motion,lowres", "Comma list of degradations or groups (noise, blur, "
                               "bias, kspace, motion, lowres; members: noise, rician, blur, bias, spike, undersample, "
                               "motion, lowres).", check=degradations_problem)
    levels: int = option(5, f"Severities above clean, evenly spaced up to 1 (1 to {MAX_LEVELS}).",
                         check=in_range(1, MAX_LEVELS, integer=True))
    out: str = option(help="Output directory (robustness.md/.json/.csv, PNG plots).", path=True)
    split: str = option("test", "train, val or test.", check=one_of(SPLITS))
    seed: int = option(0, f"Seed of the degradations' random draws (same for every run; 0 to {MAX_SEED}).",
                       check=seed_problem)
    fusion_slices: int = option(16, f"Slices scored by the fusion metrics per level (spread over the split; 0: all; "
                                    f"at most {MAX_FUSION_SLICES}).", check=in_range(0, MAX_FUSION_SLICES, integer=True))
    workers: int = option(1, f"(run, degradation) jobs evaluated in parallel (1 to {MAX_WORKERS}).", recorded=False,
                          check=in_range(1, MAX_WORKERS, integer=True))
    overwrite: bool = option(False, "Replace an --out written by fuse4seg robustness.", recorded=False)


def robustness(options: RobustnessOptions, command: str = "") -> dict[str, Any]:
    """Run :func:`fuse4seg.evaluation.robustness.robustness` as ``options`` say (``command``: the command line to
    record in the report)."""
    from fuse4seg.evaluation.robustness import robustness as run_robustness

    o = options
    return run_robustness(o.runs, o.degradations, o.levels, o.out, split=o.split, seed=o.seed,
                          fusion_slices=o.fusion_slices, workers=o.workers, overwrite=o.overwrite, command=command)
