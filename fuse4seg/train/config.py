"""Training configuration: every option of ``fuse4seg train``, declared once, and its resolution.

Each option is a field of :class:`TrainConfig` declared with :func:`fuse4seg.train.declare.option`:
default, help, check, command-line flag where it is not ``--`` + its name, and the modes that read
it. The bi-level engine's own options dataclass is nested as ``hypergrad``
(:class:`fuse4seg.bilevel.Options`: its fields declare their help, check, flag and the methods that
read them; the engine's ``parse_options`` is their only check). Derived from the declarations: the
TOML keys and ``config.json`` (flat, one key per option), the checks, which options a mode ignores
(:func:`check_relevant`), the ``train`` command's options (:func:`command_line_options`).

Precedence, lowest first: the declared defaults, a TOML file (``--config``), then options given on
the command line. The resolved configuration is written to ``RUN/config.json`` and stored in every
checkpoint, so ``evaluate``, ``fuse`` and ``--resume`` rebuild exactly the same networks.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from dataclasses import Field, dataclass
from pathlib import Path
from typing import Any

from fuse4seg.bilevel import Options, parse_options
from fuse4seg.conventions import DEFAULT_FUSION_INPUTS, parse_modalities
from fuse4seg.errors import ConfigError, flag_for
from fuse4seg.options import MAX_SEED, available_cpus, cli_text, seed_problem
from fuse4seg.options import option as cli_option
from fuse4seg.train.declare import (
    Declared,
    above,
    at_least,
    by_key,
    check_values,
    convert,
    declared,
    in_range,
    integer_entries,
    one_of,
    option,
    to_values,
    with_values,
)
from fuse4seg.train.modes import MODES, names

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
#: --precision: the forward passes' autocast type (fuse4seg.train.steps.PRECISION_DTYPES maps them to dtypes).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
#: --task: what the second network predicts from the (fused) images.
TASKS: tuple[str, ...] = ("segment", "classify")
#: Modes whose segmentation network reads the output of a learned fusion network.
FUSION_MODES: tuple[str, ...] = names(lambda m: m.has_fusion)
#: Modes whose fusion net learns from hypergradients (``--hypergrad`` and the engine's options apply).
HYPERGRADIENT_MODES: tuple[str, ...] = names(lambda m: m.hypergradient)


#: Upper bounds of the options that size memory or loops, each stated in the option's help and far above
#: any sensible run: a mistyped value (an extra digit, a 20-digit number) is refused before it allocates.
#: Slices per batch: 512 slices of 240 x 240 already need tens of GB of UNet activations.
MAX_BATCH_SIZE: int = 512
#: Outer steps, and every "each N steps" period: 10 million steps are months at several steps a second.
MAX_STEPS: int = 10_000_000
#: Epochs over the fitting slices (their steps must also stay within MAX_STEPS, see resolve_steps).
MAX_EPOCHS: int = 100_000
#: Val slices scored: more than any package holds (BraTS 2023's ~2,600 cases x 155 slices = 400k).
MAX_EVAL_SLICES: int = 10_000_000
#: torch CPU threads: more threads than any machine has cores only oversubscribes them.
MAX_THREADS: int = 1024
#: Feature maps of a network's widest full-resolution layer (16 by default).
MAX_WIDTH: int = 512
#: UNet downsamplings: a 240-pixel BraTS slice halved 8 times (2**8 = 256) is down to one pixel.
MAX_SEG_DEPTH: int = 8
#: UNet bottleneck channels, width * 2**depth (16 * 2**4 = 256 by default; the original UNet has 1024): the
#: parameters grow with its square (2048 channels: ~100M parameters).
MAX_SEG_CHANNELS: int = 2048
#: Conv layers of a fusion network (3 or 4 by default).
MAX_FUSION_LAYERS: int = 64
#: Spatial dimensions a run trains in: 2 (axial slices) or 3 (patches of the stored volumes).
DIMS: tuple[int, ...] = (2, 3)
#: Smallest patch edge (voxels): a smaller patch holds too little context around a tumour voxel (the UNet would
#: still run: it pads any size to a multiple of 2**depth).
MIN_PATCH: int = 8
#: Largest patch edge (voxels): the largest BraTS volume's side (240) rounded up to a power of two.
MAX_PATCH: int = 256
#: Contrastive steps of the semantic loss's image-text model: it converges in a few hundred on a benchmark.
MAX_ALIGN_STEPS: int = 100_000


def _workers(value: int) -> str | None:
    """Check: 0 (load in the main process) up to the CPUs this process may use."""
    cpus = available_cpus()
    problem = in_range(0)(value)
    return problem or (None if value <= cpus else f"must be <= {cpus}, the CPUs available here, got {value}")


def _fusion_weights(weights: dict) -> str | None:
    """Check: weights of known fusion losses, each finite and >= 0 (the losses' own resolve_fusion_weights),
    so a bad table fails before any data is read rather than at the first step."""
    from fuse4seg.losses.fusion import resolve_fusion_weights

    try:
        resolve_fusion_weights(weights)
    except ConfigError as exc:
        return exc.message
    return None


#: Bounds of the model-options tables' size entries (entry -> (low, high)).
SEG_LIMITS: dict[str, tuple[int, int]] = {"width": (1, MAX_WIDTH), "depth": (1, MAX_SEG_DEPTH)}
FUSION_LIMITS: dict[str, tuple[int, int]] = {"width": (1, MAX_WIDTH), "layers": (1, MAX_FUSION_LAYERS)}
_SEG_DEPTH_HELP = (f"Segmentation network depth (downsamplings, 1 to {MAX_SEG_DEPTH}; width * 2**depth <= "
                   f"{MAX_SEG_CHANNELS}).")


def _required(what: str) -> Any:
    """Check: a non-empty value."""
    return lambda v: None if v else f"{what} is required"


def _known_model(name: str) -> str | None:
    """Check: a 2-D network name of the model registry (fuse4seg.models); --dims 3 trains its ``-3d`` variant."""
    from fuse4seg.models import list_models

    models = list_models(dims=2)
    if name in list_models(dims=3):
        return (f"{name!r} is a 3-D network; give its 2-D name ({', '.join(models)}): --dims 3 builds the -3d "
                "variant")
    return None if name in models else f"unknown model {name!r}; known: {', '.join(models)}"


def _patch(value: Any) -> tuple[int, ...]:
    """Parse a patch size: "64,64,64" or three integers (d, h, w voxels)."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else None
    try:
        parsed = tuple(int(str(v).strip()) for v in items) if items is not None else ()
    except ValueError:
        parsed = ()
    if len(parsed) != 3:
        raise ConfigError(f"expected three integers d,h,w (e.g. 64,64,64), got {value!r}")
    return parsed


def _patch_edges(value: tuple[int, ...]) -> str | None:
    """Check: every edge in [MIN_PATCH, MAX_PATCH] voxels."""
    bad = [v for v in value if not MIN_PATCH <= v <= MAX_PATCH]
    return f"each edge must be in {MIN_PATCH}..{MAX_PATCH} voxels, got {','.join(map(str, value))}" if bad else None


def _text_encoder(value: str) -> str | None:
    """Check: 'builtin' or an existing folder (a text model saved on disk)."""
    from fuse4seg.text.encoders import BUILTIN

    return None if value == BUILTIN or Path(value).is_dir() else (
        f"{value}: no such folder (a Hugging Face text model saved on disk, or 'builtin')")


def _device(value: str) -> str | None:
    """Check: cpu, cuda or cuda:N."""
    return None if value in ("cpu", "cuda") or value.startswith("cuda:") else f"cpu or cuda, got {value!r}"


def _is_fused(value: Any) -> bool:
    """Whether a value names the fused image ("fused" or ["fused"])."""
    return (isinstance(value, str) and value.strip().lower() == "fused") or (
        isinstance(value, (list, tuple)) and [str(v).lower() for v in value] == ["fused"])


def _modalities(value: Any) -> tuple[str, ...]:
    """Parse modality names ("t1ce,flair" or a list); ConfigError for anything else."""
    if not isinstance(value, (str, list, tuple)):
        raise ConfigError(f"expected modality names, got {value!r}")
    return parse_modalities(value)


def _fusion_inputs(value: Any) -> tuple[str, ...]:
    """The fusion network's inputs: modalities only."""
    if _is_fused(value):
        raise ConfigError("the fusion network's inputs must be modalities")
    return _modalities(value)


def _seg_inputs(value: Any) -> tuple[str, ...]:
    """A segmenter's inputs: ``("fused",)`` (the benchmark's stored fused image) or modalities."""
    return ("fused",) if _is_fused(value) else _modalities(value)


def _buildable(builder: str) -> Callable[[str], str | None]:
    """Check: a spec that fuse4seg.data.augment.specs' function ``builder`` (augmentation, input_degradation) builds."""
    def check(spec: str) -> str | None:
        """The builder's one-line complaint about ``spec``, or None."""
        from fuse4seg.data.augment import specs as augment

        try:
            getattr(augment, builder)(spec)
        except ConfigError as exc:
            return exc.message
        return None

    return check


@dataclass
class TrainConfig:
    """Every option of ``fuse4seg train``; each option's key (TOML, config.json) is its flag without ``--``."""

    benchmark: str = option("", "BraTS-Fuse package directory to train on.", check=_required("a benchmark directory"),
                            resumable=True)
    out: str = option("", "Run directory (config.json, last.pt, best.pt, tb/).", check=_required("a run directory"),
                      resumable=True)
    mode: str = option("bilevel", "Training mode: " + ", ".join(MODES) + ".", check=one_of(tuple(MODES)),
                       shortcuts={"bilevel": "Same as --mode bilevel (the default mode)."})
    method: str = option("unrolled", "Hypergradient method (fuse4seg.bilevel.METHODS): unrolled, higher, truncated, "
                         "first-order, finite-difference, implicit-cg, implicit-neumann.", flag="--hypergrad",
                         modes=HYPERGRADIENT_MODES)
    # The engine's options, keyed by their flags; "lr" (--lr-lower) is the segmenter's learning rate in
    # every mode: the inner steps' in bilevel, its optimiser's in the others. Default optimiser: adam, or
    # sgd when --hypergrad finite-difference leaves it unset (see build_config).
    # option() copies mutable defaults per instance (a default_factory): RUF009 does not see that.
    hypergrad: Options = option(  # noqa: RUF009
        Options(lr=1e-3, optimizer="adam"), "The bi-level engine's options.", modes=HYPERGRADIENT_MODES,
        every_mode=("lr",), validate=parse_options)
    fusion_model: str = option("fusion-cnn", "Fusion network: fusion-cnn, fusion-freq, fusion-text (text-guided, 2-D).",
                               check=_known_model, modes=FUSION_MODES)
    seg_model: str = option("unet", "Segmentation network (unet).", check=_known_model,
                            modes=names(lambda m: m.seg_model is None))
    fusion_options: dict = option({}, f"Fusion network options (TOML table; width <= {MAX_WIDTH}, layers <= "  # noqa: RUF009
                                  f"{MAX_FUSION_LAYERS}).", modes=FUSION_MODES, check=integer_entries(FUSION_LIMITS),
                                  entries={"width": (int, f"Fusion network width (1 to {MAX_WIDTH}).")})
    seg_options: dict = option({}, "Segmentation network options (TOML table).",  # noqa: RUF009
                               check=integer_entries(SEG_LIMITS),
                               entries={"width": (int, f"Segmentation network base width (1 to {MAX_WIDTH})."),
                                        "depth": (int, _SEG_DEPTH_HELP)})
    fusion_inputs: tuple[str, ...] = option(DEFAULT_FUSION_INPUTS, "Modalities to fuse, e.g. t1ce,flair.",
                                            parse=_fusion_inputs, check=lambda v: None if v else "at least one modality")
    inputs: tuple[str, ...] | None = option(None, "direct/feature-fusion inputs: 'fused' or modalities.",
                                            parse=_seg_inputs)
    lambda_seg: float = option(1.0, "Weight of the segmentation loss (upper).", check=at_least(0),
                               modes=names(lambda m: m.weighs_seg))
    seg_fraction: float | None = option(None, "Balance the upper objective: the segmentation weight is set at every "
                                        "step so the segmentation part of the hypergradient has this fraction of "
                                        "the fusion-loss gradient's norm (instead of --lambda-seg).", check=above(0),
                                        modes=HYPERGRADIENT_MODES, excludes=("lambda_seg",))
    fusion_loss_weights: dict = option({}, "Weights of the fusion loss terms (TOML table).",  # noqa: RUF009
                                       check=_fusion_weights, modes=FUSION_MODES)
    region_based: bool = option(False, "WT/TC/ET sigmoid loss.", flag="--region-based/--label-based")
    dims: int = option(2, "Train on 2-D axial slices (2) or on 3-D patches of the stored volumes (3; needs "
                       "build-benchmark --volumes; networks are the -3d variants of --fusion-model/--seg-model).",
                       check=lambda v: None if v in DIMS else f"must be 2 or 3, got {v}")
    patch: tuple[int, ...] = option((64, 64, 64), f"Patch size d,h,w in voxels ({MIN_PATCH} to {MAX_PATCH} each): "
                                    "training patches and the sliding window of validation.", parse=_patch,
                                    check=_patch_edges, dims=(3,))
    foreground_fraction: float = option(0.5, "Share of training patches centred on a tumour voxel (the rest on "
                                        "any voxel of the volume), 0 to 1.", check=in_range(0, 1), dims=(3,))
    augment: str = option("none", "Training augmentation, applied jointly to images and labels: none, light, strong "
                          "or an albumentations FILE.yaml (README: Augmentation and degradations).",
                          check=_buildable("augmentation"))
    degrade_inputs: str = option("none", "Degrade what the networks see, not the fusion-loss targets (RMR-Fusion): "
                                 "none, light, strong, degradation names (noise, rician, blur, bias, spike, undersample, "
                                 "motion, lowres; groups noise, blur, kspace, motion, lowres) or FILE.yaml.",
                                 check=_buildable("input_degradation"))
    text_encoder: str = option("builtin", "Encoder of the slices' texts (--fusion-model fusion-text, --semantic-weight): "
                               "builtin (fitted on the benchmark's train texts) or the folder of a Hugging Face text "
                               "model on disk (never downloaded; needs fuse4seg[text]).", check=_text_encoder,
                               modes=FUSION_MODES)
    semantic_weight: float = option(0.0, "Weight of the medical semantic loss, 1 - cosine of a fused image and its slice's "
                                    "text under a CLIP-style model trained on the benchmark's images and texts first, "
                                    "then frozen (0: off; 2-D).", check=at_least(0), modes=FUSION_MODES)
    semantic_steps: int = option(200, f"Contrastive training steps of the semantic loss's image-text model (1 to "
                                      f"{MAX_ALIGN_STEPS}).", check=in_range(1, MAX_ALIGN_STEPS), modes=FUSION_MODES)
    task: str = option("segment", "segment (label maps) or classify (is WT / TC / ET present in the slice? per-modality "
                                  "encoders and a fusion encoder; evaluate reports AUROC, accuracy and F1).",
                       check=one_of(TASKS))
    init: str | None = option(None, "Pre-trained encoder (PRE/encoder.pt of `fuse4seg pretrain`) copied into the "
                                    "segmenter's UNet encoder(s) before the first step.")
    label_fraction: float = option(1.0, "Share of the train cases (patients, seeded) whose labels are used, in (0, 1]; "
                                        "the others train the segmenter without labels, by mean-teacher consistency "
                                        "under a distribution shift of its input (MICS).",
                                   check=in_range(0, 1, low_open=True))
    consistency_weight: float = option(1.0, "Weight of the unlabelled cases' consistency loss (--label-fraction < 1).",
                                       check=at_least(0))
    ema_decay: float = option(0.99, "Momentum of the mean teacher (--label-fraction < 1), in [0, 1).",
                              check=lambda v: None if 0 <= v < 1 else f"must be in [0, 1), got {v}")
    steps: int | None = option(None, f"Total (outer) steps, 1 to {MAX_STEPS} (default: one epoch).",
                               check=in_range(1, MAX_STEPS), resumable=True)
    epochs: float | None = option(None, f"Total epochs over the fitting slices (at most {MAX_EPOCHS}).",
                                  check=in_range(0, MAX_EPOCHS, low_open=True), resumable=True)
    fusion_steps: int | None = option(None, "Steps that train the fusion net alone, on the fusion loss, first "
                                      "(two-stage: stage 1, default half; bilevel: a warm-up, default 0).",
                                      check=in_range(0, MAX_STEPS), modes=names(lambda m: m.fusion_stage is not None))
    batch_size: int = option(4, f"Slices per batch (1 to {MAX_BATCH_SIZE}).", check=in_range(1, MAX_BATCH_SIZE))
    lr_upper: float = option(1e-3, "Learning rate of the fusion network.", check=above(0), modes=FUSION_MODES)
    upper_optimizer: str = option("adam", "Optimiser of the fusion network: adam or sgd.", check=one_of(OPTIMIZERS),
                                  modes=FUSION_MODES)
    lower_optimizer: str = option("adam", "Optimiser of the segmenter: adam or sgd.", check=one_of(OPTIMIZERS),
                                  modes=names(lambda m: "lower" in m.optimisers),
                                  where="modes other than bilevel (its inner loop uses --inner-optimizer)")
    val_fraction: float = option(0.2, "Share of train cases held out for the upper loss.",
                                 check=lambda v: None if 0 < v < 1 else f"must be in (0, 1), got {v}",
                                 modes=names(lambda m: m.holds_out))
    eval_every: int = option(0, "Val Dice and best.pt choice every N steps (0: at the end, best.pt = final weights).",
                             check=in_range(0, MAX_STEPS, " (0 = only at the end)"), resumable=True)
    checkpoint_every: int = option(25, "Write last.pt every N steps.", check=in_range(1, MAX_STEPS), resumable=True)
    eval_slices: int | None = option(None, "Val slices (--dims 3: whole val volumes) scored during training "
                                     "(default: all).",
                                     check=in_range(1, MAX_EVAL_SLICES), resumable=True)
    log_every: int = option(1, "TensorBoard scalars every N steps.", check=in_range(1, MAX_STEPS), resumable=True)
    num_workers: int = option(0, "DataLoader worker processes (0 to the number of CPUs available).", check=_workers,
                              resumable=True)
    cache: bool = option(True, "Hold the benchmark in memory (< 2 GiB).", flag="--cache/--no-cache", resumable=True)
    device: str = option("cpu", "cpu or cuda.", check=_device)
    precision: str = option("fp32", "Forward passes under autocast: fp32 (off), bf16 or fp16 (single-level modes, "
                            "with loss scaling); weights, losses and (hyper)gradients stay fp32.",
                            check=one_of(PRECISIONS))
    threads: int | None = option(None, f"CPU threads for torch, 1 to {MAX_THREADS} (default: torch's choice).",
                                 check=in_range(1, MAX_THREADS))
    seed: int = option(0, f"Seed of initial weights and data order (0 to {MAX_SEED}).", check=seed_problem)
    max_bad_steps: int = option(10, "Stop after N non-finite steps in a row.", check=in_range(1, MAX_STEPS),
                                resumable=True)
    progress: bool = option(True, "Show a progress bar.", flag="--progress/--no-progress", resumable=True)
    overwrite: bool = option(False, "Replace an existing run directory.", resumable=True)
    resume: bool = option(False, "Continue the run in --out from last.pt.", resumable=True)

    def seg_inputs(self) -> tuple[str, ...]:
        """Names of the segmentation network's input channels: ``("fused",)`` or modality names."""
        return MODES[self.mode].seg_inputs(self)

    def to_dict(self) -> dict[str, Any]:
        """Every option by key, JSON-able (tuples become lists): what config.json and checkpoints store."""
        return to_values(self)


OPTIONS: dict[str, Declared] = by_key(TrainConfig)
#: Options that may change when a run is resumed (they do not alter the trajectory of the weights).
#: ``benchmark`` may name a new path only when it holds the same content (checked by the loop).
RESUMABLE: frozenset[str] = frozenset(key for key, d in OPTIONS.items() if d.metadata.get("resumable"))


def _flag(path: tuple[str, ...]) -> str:
    """The flag of the option at ``path`` (``("method",)`` -> ``--hypergrad``)."""
    return next(d.flag for d in declared(TrainConfig) if d.path == path)


def readers(d: Declared) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None, tuple[str, ...] | None]:
    """The modes, hypergradient methods and inner optimisers that read option ``d`` (None: all of them)."""
    group = d.group.metadata if d.group is not None else {}
    if d.path[-1] in group.get("every_mode", ()):
        return None, None, None
    return d.metadata.get("modes") or group.get("modes"), d.metadata.get("methods"), d.metadata.get("optimizers")


def where_used(d: Declared) -> tuple[tuple[str, ...] | None, str | None]:
    """(modes that read option ``d`` or None for all, where it applies in words or None)."""
    modes, methods, optimizers = readers(d)
    parts = [d.metadata.get("where") or f"{_flag(('mode',))} " + ", ".join(modes)] if modes else []
    if d.metadata.get("dims"):
        parts.append(f"{_flag(('dims',))} " + " or ".join(map(str, d.metadata["dims"])))
    if methods:
        parts.append(f"{_flag(('method',))} " + " or ".join(methods))
    if optimizers:
        parts.append(f"{_flag(('hypergrad', 'optimizer'))} " + " or ".join(optimizers))
    return modes, " ".join(parts) or None


def applies(c: TrainConfig, d: Declared) -> bool:
    """Whether the run configured by ``c`` reads option ``d``."""
    modes, methods, optimizers = readers(d)
    dims = d.metadata.get("dims")
    return ((modes is None or c.mode in modes) and (methods is None or c.method in methods)
            and (optimizers is None or c.hypergrad.optimizer in optimizers) and (dims is None or c.dims in dims))


def check_relevant(c: TrainConfig, given: set[str]) -> None:
    """ConfigError for the first option in ``given`` (set explicitly) that this run does not read."""
    for key in sorted(given & set(OPTIONS)):
        d = OPTIONS[key]
        for other in set(d.metadata.get("excludes", ())) & given:
            raise ConfigError(f"replaces {OPTIONS[other].flag}: give one of them", option=key)
        if not applies(c, d):
            run = f"{_flag(('mode',))} {c.mode}"
            if MODES[c.mode].hypergradient:
                run += f" {_flag(('method',))} {c.method}"
            if "optimizers" in d.metadata:
                run += f" {_flag(('hypergrad', 'optimizer'))} {c.hypergrad.optimizer}"
            if "dims" in d.metadata:
                run += f" {_flag(('dims',))} {c.dims}"
            raise ConfigError(f"only used with {where_used(d)[1]}; this run is {run}; remove the option", option=key)


def validate(c: TrainConfig) -> None:
    """Check option values (each declared check; the engine's parse_options for its options) and their
    combinations; ConfigError naming the offending option."""
    check_values(c)
    mode = MODES[c.mode]
    if c.steps is not None and c.epochs is not None:
        raise ConfigError("give steps or epochs, not both", option="steps")
    if mode.has_fusion and c.inputs is not None:
        raise ConfigError(f"only for modes {', '.join(names(lambda m: not m.has_fusion))}, not {c.mode}",
                          option="inputs")
    if c.dims == 3:
        for key in ("augment", "degrade_inputs"):  # their transforms are 2-D (albumentations on slices)
            if getattr(c, key) != "none":
                raise ConfigError("is not supported with --dims 3 (its transforms work on 2-D slices)", option=key)
    _check_text(c)
    if c.task == "classify" and c.dims == 3:
        raise ConfigError("is not supported with --dims 3 (presence is a property of a slice)", option="task")
    if c.label_fraction < 1 and c.dims == 3:
        raise ConfigError("is not supported with --dims 3 (the consistency loss runs on slices)", option="label_fraction")
    _check_bottleneck(c)
    mode.check(c)


def _check_text(c: TrainConfig) -> None:
    """Texts describe whole axial slices as stored: no 3-D training and no augmentation with text."""
    if not uses_text(c):
        return
    key = "fusion_model" if reads_text(c.fusion_model) else "semantic_weight"
    # The generated texts state the labels (regions, areas): as inputs they would give away a classifier's target
    # and the labels of the cases --label-fraction leaves unlabelled.
    if c.task == "classify" and reads_text(c.fusion_model):
        raise ConfigError("reads the slices' texts, which state which regions are present: the target of --task "
                          "classify", option=key)
    if c.label_fraction < 1:
        raise ConfigError("reads the slices' texts, which are written from the labels of the cases --label-fraction "
                          "leaves unlabelled", option=key)
    if c.dims == 3:
        raise ConfigError("reads the slices' texts, which describe axial slices: not available with --dims 3", option=key)
    if c.augment != "none":  # a flip or a rotation would contradict the texts' left/right and anterior/posterior
        raise ConfigError("reads the slices' texts, whose locations an augmented slice would contradict; use "
                          "--augment none", option=key)


def reads_text(model: str) -> bool:
    """Whether the fusion network ``model`` (a registry name) is guided by text (it has a ``text_dim`` option)."""
    from fuse4seg.models import model_options

    return "text_dim" in model_options(model)


def uses_text(config: TrainConfig) -> bool:
    """Whether a run of ``config`` reads the slices' texts: its fusion net is text-guided or the semantic loss is on."""
    return MODES[config.mode].has_fusion and (reads_text(config.fusion_model) or config.semantic_weight > 0)


def _check_bottleneck(c: TrainConfig) -> None:
    """ConfigError unless the segmenter's bottleneck, width * 2**depth channels (the model's defaults where
    seg_options leaves them), is within :data:`MAX_SEG_CHANNELS`."""
    from fuse4seg.models import model_options

    sizes = {**model_options(MODES[c.mode].seg_model or c.seg_model), **c.seg_options}
    width, depth = sizes.get("width"), sizes.get("depth")
    if isinstance(width, int) and isinstance(depth, int) and width * 2**depth > MAX_SEG_CHANNELS:
        raise ConfigError(f"width {width} and depth {depth} give a bottleneck of {width * 2**depth} channels "
                          f"(width * 2**depth), over the limit of {MAX_SEG_CHANNELS}", option="seg_options")


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file of options (keys = option keys, dashes or underscores; optional [train] table)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"file {path} not found", option="config") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", option="config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", option="config") from None
    except RecursionError:  # tomllib recurses per nesting level of arrays and inline tables
        raise ConfigError(f"{path} is not valid TOML: nested too deeply", option="config") from None
    if isinstance(data.get("train"), dict):
        data = data["train"]
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in OPTIONS:
            raise ConfigError(f"unknown option {key!r} in {path}", option="config")
        out[name] = convert(OPTIONS[name], value, f" (in {path})")
    return out


def build_config(overrides: dict[str, Any] | None = None, toml: str | Path | None = None, strict: bool = False
                 ) -> TrainConfig:
    """Resolve defaults < TOML file < ``overrides`` (option key -> value; None means 'not given') and validate.

    ``strict`` (the command line): an option given in ``overrides`` or the TOML file that the chosen
    mode or method ignores is a ConfigError (see :func:`check_relevant`); library callers may pass
    one option set to several modes.
    """
    values: dict[str, Any] = {}
    if toml is not None:
        values.update(load_toml(toml))
    for key, value in (overrides or {}).items():
        if key not in OPTIONS:
            raise ConfigError(f"unknown option {flag_for(key)}")
        if value is not None:
            value = convert(OPTIONS[key], value)
            # option tables merge key by key: --seg-width keeps a file's seg_options.depth
            values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    # --steps on the command line replaces --epochs from the file, and the reverse.
    given = {k for k, v in (overrides or {}).items() if v is not None}
    if "steps" in given and "epochs" not in given:
        values.pop("epochs", None)
    if "epochs" in given and "steps" not in given:
        values.pop("steps", None)
    explicit = set(values)
    if "inner_optimizer" not in values and values.get("hypergrad") == "finite-difference":
        values["inner_optimizer"] = "sgd"  # DARTS differentiates an SGD step; Adam is the default elsewhere
    config = with_values(TrainConfig(), values)
    validate(config)
    if strict:
        check_relevant(config, explicit)
    return config


def config_from_dict(data: dict[str, Any], where: str = "") -> TrainConfig:
    """Rebuild a TrainConfig from ``config.json`` or a checkpoint's stored dict (converted like TOML)."""
    values = {}
    for key, value in data.items():
        if key not in OPTIONS:
            raise ConfigError(f"unknown option {key!r}{where}")
        if value is None and not OPTIONS[key].optional:
            continue  # stored before the option had a default of its own (truncate: null): the default
        values[key] = convert(OPTIONS[key], value, where)
    return with_values(TrainConfig(), values)


def resolve_steps(c: TrainConfig, n_train: int) -> int:
    """Total optimisation steps: ``--steps``, or ``ceil(epochs * n_train / batch_size)`` (default 1 epoch; ConfigError
    naming epochs beyond :data:`MAX_STEPS`)."""
    if c.steps is not None:
        return c.steps
    epochs = 1.0 if c.epochs is None else c.epochs
    steps = max(1, math.ceil(epochs * n_train / c.batch_size))
    if steps > MAX_STEPS:
        raise ConfigError(f"{epochs:g} epochs of {n_train} slices in batches of {c.batch_size} are {steps} steps, over "
                          f"the limit of {MAX_STEPS}", option="epochs")
    return steps


# ---- the command line, derived from the declarations ------------------------------------------------


def _entry_key(key: str, entry: str) -> str:
    """The command-line name of an option table's entry: seg_options, depth -> seg_depth."""
    return key.removesuffix("options") + entry


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


__all__ = [
    "FUSION_MODES", "HYPERGRADIENT_MODES", "OPTIONS", "RESUMABLE", "TrainConfig", "build_config", "check_relevant",
    "cli_overrides", "command_line_options", "config_from_dict", "error_flags", "load_toml", "resolve_steps",
    "validate",
]
