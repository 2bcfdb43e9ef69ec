"""Training configuration: every option of ``fuse4seg train``, declared once.

Each option is a field of :class:`TrainConfig` declared with :func:`fuse4seg.train.declare.option`:
default, help, check, command-line flag where it is not ``--`` + its name, and the modes that read
it. The bi-level engine's own options dataclass is nested as ``engine``
(:class:`fuse4seg.bilevel.Options`: its fields declare their help, check, flag and the methods that
read them; the engine's ``parse_options`` is their only check). Derived from the declarations: the
TOML keys and ``config.json`` (flat, one key per option), the checks and the resolution of a
configuration (:mod:`fuse4seg.train.resolve`: which options a run ignores, precedence, validation) and
the ``train`` command's options (:mod:`fuse4seg.train.command_line`).

Precedence, lowest first: the declared defaults, a TOML file (``--config``), then options given on
the command line. The resolved configuration is written to ``RUN/config.json`` and stored in every
checkpoint, so ``evaluate``, ``fuse`` and ``--resume`` rebuild exactly the same networks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fuse4seg.bilevel import METHODS, Options, parse_options
from fuse4seg.conventions import DEFAULT_FUSION_INPUTS, parse_modalities
from fuse4seg.errors import ConfigError
from fuse4seg.options import (
    MAX_BATCH_SIZE,
    MAX_EVAL_SLICES,
    MAX_SEED,
    MAX_SEG_CHANNELS,
    MAX_SEG_DEPTH,
    MAX_STEPS,
    MAX_THREADS,
    MAX_WIDTH,
    a_path,
    above,
    at_least,
    device_problem,
    in_range,
    integer_entries,
    one_of,
    required,
    seed_problem,
    worker_count,
)
from fuse4seg.train.declare import Declared, by_key, option, to_values
from fuse4seg.train.modes import MODES, names
from fuse4seg.train.variant_facts import DIMS, TASKS

#: --upper-optimizer, --lower-optimizer: the torch.optim optimisers of the single-level updates (the bi-level
#: engine's inner optimisers are fuse4seg.bilevel.OPTIMIZERS).
OUTER_OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
#: --precision: the forward passes' autocast type (fuse4seg.train.step_parts.PRECISION_DTYPES maps them to dtypes).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
#: Modes whose segmentation network reads the output of a learned fusion network.
FUSION_MODES: tuple[str, ...] = names(lambda m: m.has_fusion)
#: Modes whose fusion net learns from hypergradients (``--hypergrad`` and the engine's options apply).
HYPERGRADIENT_MODES: tuple[str, ...] = names(lambda m: m.hypergradient)


#: Upper bounds of the options that size memory or loops, each stated in the option's help (those shared with other
#: commands are declared in fuse4seg.options).
#: Epochs over the fitting slices (their steps must also stay within MAX_STEPS, see resolve_steps).
MAX_EPOCHS: int = 100_000
#: Seconds a process started by torchrun waits for all of them to join (--join-timeout), and its bound (a day).
JOIN_TIMEOUT_S: float = 300.0
MAX_JOIN_TIMEOUT_S: int = 86_400
#: Conv layers of a fusion network (3 or 4 by default).
MAX_FUSION_LAYERS: int = 64
#: Smallest patch edge (voxels): a smaller patch holds too little context around a tumour voxel (the UNet would
#: still run: it pads any size to a multiple of 2**depth).
MIN_PATCH: int = 8
#: Largest patch edge (voxels): the largest BraTS volume's side (240) rounded up to a power of two.
MAX_PATCH: int = 256
#: Contrastive steps of the semantic loss's image-text model: it converges in a few hundred on a benchmark.
MAX_ALIGN_STEPS: int = 100_000
#: --fusion-budget is a ratio of two fusion losses: above 100 the constraint no longer binds.
MAX_FUSION_BUDGET: float = 100.0


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
FUSION_LIMITS: dict[str, tuple[int, int]] = {"width": (1, MAX_WIDTH), "layers": (1, MAX_FUSION_LAYERS),
                                             "heads": (1, MAX_WIDTH)}
#: fusion-freq's Gaussian sigma (pixels): its kernel is ~6 sigma wide, so a huge sigma is a huge allocation.
MAX_FUSION_SIGMA: float = 64.0


def _fusion_table(table: dict) -> str | None:
    """Check: the fusion options' sizes within FUSION_LIMITS and a sigma in (0, MAX_FUSION_SIGMA]."""
    problem = integer_entries(FUSION_LIMITS)(table)
    sigma = table.get("sigma")
    sigma_problem = None if sigma is None else in_range(0, MAX_FUSION_SIGMA, low_open=True)(sigma)
    return problem or (sigma_problem and f"sigma {sigma_problem}")
_SEG_DEPTH_HELP = (f"Segmentation network depth (downsamplings, 1 to {MAX_SEG_DEPTH}; width * 2**depth <= "
                   f"{MAX_SEG_CHANNELS}).")


def _known_model(name: str) -> str | None:
    """Check: a 2-D network of the model registry (fuse4seg.models: built in, registered with register_model, or
    an installed plug-in of the entry-point group fuse4seg.models, loaded now); --dims 3 trains its ``-3d``
    variant."""
    from fuse4seg.models import list_models, model_dims

    try:
        dims = model_dims(name)
    except ConfigError as exc:  # unknown, or a plug-in that fails to load (named in the message)
        return exc.message
    if dims == 3:
        return (f"{name!r} is a 3-D network; give its 2-D name ({', '.join(list_models(dims=2, plugins=False))}): "
                "--dims 3 builds the -3d variant")
    return None


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

    benchmark: str = option("", "BraTS-Fuse package directory to train on.", check=a_path(required("a benchmark directory")),
                            resumable=True)
    out: str = option("", "Run directory (config.json, last.pt, best.pt, tb/).", check=a_path(required("a run directory")),
                      resumable=True)
    mode: str = option("bilevel", "Training mode: " + ", ".join(MODES) + ".", check=one_of(tuple(MODES)),
                       shortcuts={"bilevel": "Same as --mode bilevel (the default mode)."})
    method: str = option("unrolled", "Hypergradient method (fuse4seg.bilevel.METHODS): " + ", ".join(METHODS) + ".",
                         flag="--hypergrad",
                         modes=HYPERGRADIENT_MODES)
    # The engine's options, keyed by their flags; "lr" (--lr-lower) is the segmenter's learning rate in
    # every mode: the inner steps' in bilevel, its optimiser's in the others. Default optimiser: adam, or
    # sgd when --hypergrad finite-difference leaves it unset (see build_config).
    # option() copies mutable defaults per instance (a default_factory): RUF009 does not see that.
    engine: Options = option(  # noqa: RUF009
        Options(lr=1e-3, optimizer="adam"), "The bi-level engine's options.", modes=HYPERGRADIENT_MODES,
        every_mode=("lr",), validate=parse_options)
    fusion_model: str = option("fusion-cnn", "Fusion network: fusion-cnn, fusion-freq, fusion-text (text-guided, 2-D).",
                               check=_known_model, modes=FUSION_MODES)
    seg_model: str = option("unet", "Segmentation network (unet).", check=_known_model,
                            modes=names(lambda m: m.seg_model is None))
    fusion_options: dict = option({}, f"Fusion network options (TOML table; width <= {MAX_WIDTH}, layers <= "  # noqa: RUF009
                                  f"{MAX_FUSION_LAYERS}).", modes=FUSION_MODES, check=_fusion_table,
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
    fusion_budget: float | None = option(None, "Constrained upper level: minimise the held-out segmentation loss "
                                         "subject to fusion loss <= B x the fusion loss of the benchmark's own fused "
                                         "image on the same batch (B = 1: as faithful as that rule, by the fusion "
                                         "loss); the segmentation weight adapts at every step from --lambda-seg.",
                                         check=in_range(0, MAX_FUSION_BUDGET, low_open=True),
                                         modes=HYPERGRADIENT_MODES, excludes=("seg_fraction",))
    fusion_loss_weights: dict = option({}, "Weights of the fusion loss terms (TOML table).",  # noqa: RUF009
                                       check=_fusion_weights, modes=FUSION_MODES)
    region_based: bool = option(False, "WT/TC/ET sigmoid loss.", flag="--region-based/--label-based")
    dims: int = option(2, "Train on 2-D axial slices (2) or on 3-D patches of the stored volumes (3; needs "
                       "build-benchmark --volumes; networks are the -3d variants of --fusion-model/--seg-model).",
                       check=one_of(DIMS))
    patch: tuple[int, ...] = option((64, 64, 64), f"Patch size d,h,w in voxels ({MIN_PATCH} to {MAX_PATCH} each): "
                                    "training patches and the sliding window of validation.", parse=_patch,
                                    check=_patch_edges, dims=(3,))
    foreground_fraction: float = option(0.5, "Share of training patches centred on a tumour voxel (the rest on "
                                        "any voxel of the volume), 0 to 1.", check=in_range(0, 1), dims=(3,))
    augment: str = option("none", "Training augmentation, applied jointly to images and labels: none, light, strong "
                          "or an albumentations FILE.yaml (README: Augmentation and degradations).",
                          check=a_path(_buildable("augmentation")))
    degrade_inputs: str = option("none", "Degrade what the networks see, not the fusion-loss targets (RMR-Fusion): "
                                 "none, light, strong, degradation names (noise, rician, blur, bias, spike, undersample, "
                                 "motion, lowres; groups noise, blur, kspace, motion, lowres) or FILE.yaml.",
                                 check=a_path(_buildable("input_degradation")))
    text_encoder: str = option("builtin", "Encoder of the slices' texts (--fusion-model fusion-text, --semantic-weight): "
                               "builtin (fitted on the benchmark's train texts) or the folder of a Hugging Face text "
                               "model on disk (never downloaded; needs fuse4seg[text]).", check=a_path(_text_encoder),
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
                                    "segmenter's UNet encoder(s) before the first step.", check=a_path())
    label_fraction: float = option(1.0, "Share of the train cases (patients, seeded) whose labels are used, in (0, 1]; "
                                        "the others train the segmenter without labels, by mean-teacher consistency "
                                        "under a distribution shift of its input (MICS).",
                                   check=in_range(0, 1, low_open=True))
    consistency_weight: float = option(1.0, "Weight of the unlabelled cases' consistency loss (--label-fraction < 1).",
                                       check=at_least(0))
    ema_decay: float = option(0.99, "Momentum of the mean teacher (--label-fraction < 1), in [0, 1).",
                              check=in_range(0, 1, high_open=True))
    steps: int | None = option(None, f"Total (outer) steps, 1 to {MAX_STEPS} (default: one epoch).",
                               check=in_range(1, MAX_STEPS), resumable=True)
    epochs: float | None = option(None, f"Total epochs over the fitting slices (at most {MAX_EPOCHS}).",
                                  check=in_range(0, MAX_EPOCHS, low_open=True), resumable=True)
    fusion_steps: int | None = option(None, "Steps that train the fusion net alone, on the fusion loss, first "
                                      "(two-stage: stage 1, default half; bilevel: a warm-up, default 0).",
                                      check=in_range(0, MAX_STEPS), modes=names(lambda m: m.fusion_stage is not None))
    seg_warmup: int = option(0, "Bi-level: steps that train the segmenter alone first (after any --fusion-steps), by "
                             "the inner optimiser on the frozen fusion net's image, so that the first hypergradients "
                             "come from a trained segmenter rather than an untrained one.",
                             check=in_range(0, MAX_STEPS), modes=HYPERGRADIENT_MODES)
    seg_reset_every: int = option(0, "Bi-level: give the segmenter fresh initial weights and a fresh inner-optimiser "
                                  "state every N bi-level steps (0: never), so that the upper level learns from "
                                  "segmenters at every age, as one trained from scratch on the final image goes; the "
                                  "run's own segmenter is then at most N steps old (retrain one on the frozen image).",
                                  check=in_range(0, MAX_STEPS), modes=HYPERGRADIENT_MODES)
    batch_size: int = option(4, f"Slices per batch (1 to {MAX_BATCH_SIZE}).", check=in_range(1, MAX_BATCH_SIZE))
    lr_upper: float = option(1e-3, "Learning rate of the fusion network.", check=above(0), modes=FUSION_MODES)
    upper_optimizer: str = option("adam", "Optimiser of the fusion network: adam or sgd.", check=one_of(OUTER_OPTIMIZERS),
                                  modes=FUSION_MODES)
    lower_optimizer: str = option("adam", "Optimiser of the segmenter: adam or sgd.", check=one_of(OUTER_OPTIMIZERS),
                                  modes=names(lambda m: "lower" in m.optimisers),
                                  where="modes other than bilevel (its inner loop uses --inner-optimizer)")
    val_fraction: float = option(0.2, "Share of train cases held out for the upper loss.",
                                 check=in_range(0, 1, low_open=True, high_open=True),
                                 modes=names(lambda m: m.holds_out))
    eval_every: int = option(0, "Val Dice and best.pt choice every N steps (0: at the end, best.pt = final weights).",
                             check=in_range(0, MAX_STEPS, " (0 = only at the end)"), resumable=True)
    checkpoint_every: int = option(25, "Write last.pt every N steps.", check=in_range(1, MAX_STEPS), resumable=True)
    eval_slices: int | None = option(None, "Val slices (--dims 3: whole val volumes) scored during training "
                                     "(default: all).",
                                     check=in_range(1, MAX_EVAL_SLICES), resumable=True)
    log_every: int = option(1, "TensorBoard scalars every N steps.", check=in_range(1, MAX_STEPS), resumable=True)
    num_workers: int = option(0, "DataLoader worker processes (0 to the number of CPUs available).", check=worker_count(0),
                              resumable=True)
    cache: bool = option(True, "Hold the benchmark in memory (< 2 GiB).", flag="--cache/--no-cache", resumable=True)
    device: str = option("cpu", "cpu or cuda.", check=device_problem)
    join_timeout: float = option(JOIN_TIMEOUT_S, "Under torchrun: seconds every process waits for all of them to "
                                 f"join before it stops with one line (1 to {MAX_JOIN_TIMEOUT_S}).",
                                 check=in_range(1, MAX_JOIN_TIMEOUT_S), resumable=True, recorded=False)
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


def reads_text(model: str) -> bool:
    """Whether the fusion network ``model`` (a registry name) is guided by text (it has a ``text_dim`` option)."""
    from fuse4seg.models import model_options

    return "text_dim" in model_options(model)


def uses_text(config: TrainConfig) -> bool:
    """Whether a run of ``config`` reads the slices' texts: its fusion net is text-guided or the semantic loss is on."""
    return MODES[config.mode].has_fusion and (reads_text(config.fusion_model) or config.semantic_weight > 0)



__all__ = ["FUSION_MODES", "HYPERGRADIENT_MODES", "OPTIONS", "RESUMABLE", "TrainConfig", "reads_text", "uses_text"]
