"""Training configuration: one dataclass of every option, TOML loading, overrides and validation.

Precedence, lowest first: the dataclass defaults, a TOML file (``--config``), then options given on
the command line. The resolved configuration is written to ``RUN/config.json`` and stored in every
checkpoint, so ``evaluate``, ``fuse`` and ``--resume`` rebuild exactly the same networks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuse4seg.conventions import DEFAULT_FUSION_INPUTS, parse_modalities
from fuse4seg.errors import ConfigError

#: Training modes, all run by the same loop (see fuse4seg.train.modes).
MODES: tuple[str, ...] = ("bilevel", "two-stage", "joint", "direct", "feature-fusion")
#: Modes whose segmentation network reads the output of a learned fusion network.
FUSION_MODES: tuple[str, ...] = ("bilevel", "two-stage", "joint")
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
INNER_OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam")
#: Options that may change when a run is resumed (they do not alter the trajectory of the weights).
#: ``benchmark`` may name a new path only when it holds the same content (checked by the loop).
RESUMABLE_OVERRIDES: frozenset[str] = frozenset(
    {"steps", "epochs", "eval_every", "checkpoint_every", "log_every", "num_workers", "cache", "progress", "resume",
     "eval_slices", "overwrite", "out", "benchmark", "max_bad_steps"}
)


@dataclass
class TrainConfig:
    """Every option of ``fuse4seg train``; the field names are the TOML keys and the CLI long options."""

    benchmark: str = ""
    out: str = ""
    mode: str = "bilevel"
    hypergrad: str = "unrolled"
    inner_steps: int = 1
    inner_optimizer: str = "adam"  # "sgd" when --hypergrad finite-difference leaves it unset
    inner_momentum: float = 0.9
    truncate: int | None = None
    fd_eps: float = 0.01
    cg_iters: int = 10
    neumann_terms: int = 10
    neumann_alpha: float | None = None
    damping: float = 0.0
    fusion_model: str = "fusion-cnn"
    seg_model: str = "unet"
    fusion_options: dict = field(default_factory=dict)
    seg_options: dict = field(default_factory=dict)
    fusion_inputs: tuple[str, ...] = DEFAULT_FUSION_INPUTS
    inputs: tuple[str, ...] | None = None
    lambda_seg: float = 1.0
    fusion_loss_weights: dict = field(default_factory=dict)
    region_based: bool = False
    steps: int | None = None
    epochs: float | None = None
    fusion_steps: int | None = None
    batch_size: int = 4
    lr_upper: float = 1e-3
    lr_lower: float = 1e-3
    upper_optimizer: str = "adam"
    lower_optimizer: str = "adam"
    val_fraction: float = 0.2
    eval_every: int = 0
    checkpoint_every: int = 25
    eval_slices: int | None = None
    log_every: int = 1
    num_workers: int = 0
    cache: bool = True
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0
    max_bad_steps: int = 10
    progress: bool = True
    overwrite: bool = False
    resume: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists) of every option."""
        out = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}

    def seg_inputs(self) -> tuple[str, ...]:
        """Names of the segmentation network's input channels: ``("fused",)`` or modality names."""
        if self.mode in FUSION_MODES:
            return ("fused",)
        if self.inputs is not None:
            return self.inputs
        return ("fused",) if self.mode == "direct" else self.fusion_inputs


_FIELD_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))


def _strip_none(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for ``X | None`` annotations."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _coerce(name: str, value: Any, where: str) -> Any:
    """Check and convert ``value`` for option ``name`` to the field's type; ConfigError names both."""
    tp, optional = _strip_none(_FIELD_TYPES[name])
    opt = "--" + name.replace("_", "-")
    if value is None or (optional and isinstance(value, str) and value.lower() in ("", "none")):
        if optional:
            return None
        raise ConfigError(f"{opt}{where}: a value is required")
    bad = ConfigError(f"{opt}{where}: expected {getattr(tp, '__name__', str(tp))}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(out):
            raise ConfigError(f"{opt}{where}: must be finite, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if typing.get_origin(tp) is tuple:
        if name in ("fusion_inputs", "inputs"):
            if (isinstance(value, str) and value.strip().lower() == "fused") or (
                isinstance(value, (list, tuple)) and [str(v).lower() for v in value] == ["fused"]
            ):
                if name == "fusion_inputs":
                    raise ConfigError(f"{opt}{where}: the fusion network's inputs must be modalities")
                return ("fused",)
            if not isinstance(value, (str, list, tuple)):
                raise bad
            try:
                return parse_modalities(value)
            except ConfigError as exc:
                raise ConfigError(f"{opt}{where}: {exc}") from None
        raise bad
    raise bad  # pragma: no cover - every field type is handled above


def cli_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Map command-line values to config overrides: --bilevel -> mode, --seg-width etc. -> option tables.

    ``values`` holds every CLI option (None = not given); the result has only TrainConfig fields.
    """
    values = dict(values)
    bilevel = values.pop("bilevel", False)
    if bilevel:
        if values.get("mode") not in (None, "bilevel"):
            raise ConfigError(f"--bilevel and --mode {values['mode']}: give one of them")
        values["mode"] = "bilevel"
    for table, keys in (("seg_options", ("seg_width", "seg_depth")), ("fusion_options", ("fusion_width",))):
        extra = {k.split("_", 1)[1]: values.pop(k) for k in keys if k in values}
        extra = {k: v for k, v in extra.items() if v is not None}
        if extra:
            values[table] = {**(values.get(table) or {}), **extra}
    return values


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file of options (keys = option names, dashes or underscores; optional [train] table)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config: file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path} is not valid TOML: {exc}") from None
    if isinstance(data.get("train"), dict):
        data = data["train"]
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in FIELD_NAMES:
            raise ConfigError(f"--config: unknown option {key!r} in {path}")
        out[name] = _coerce(name, value, f" (in {path})")
    return out


def build_config(overrides: dict[str, Any] | None = None, toml: str | Path | None = None, strict: bool = False
                 ) -> TrainConfig:
    """Resolve defaults < TOML file < ``overrides`` (None values mean 'not given') and validate.

    ``strict`` (the command line): an option given in ``overrides`` or the TOML file that the chosen
    mode or method ignores is a ConfigError (see :func:`check_relevant`); library callers may pass
    one option set to several modes.
    """
    values: dict[str, Any] = {}
    if toml is not None:
        values.update(load_toml(toml))
    for name, value in (overrides or {}).items():
        if name not in FIELD_NAMES:
            raise ConfigError(f"unknown option --{name.replace('_', '-')}")
        if value is not None:
            value = _coerce(name, value, "")
            # model/loss option tables merge key by key: --seg-width keeps a file's seg_options.depth
            values[name] = {**values.get(name, {}), **value} if isinstance(value, dict) else value
    # --steps on the command line replaces --epochs from the file, and the reverse.
    given = {k for k, v in (overrides or {}).items() if v is not None}
    if "steps" in given and "epochs" not in given:
        values.pop("epochs", None)
    if "epochs" in given and "steps" not in given:
        values.pop("steps", None)
    explicit = set(values)
    if "inner_optimizer" not in values and values.get("hypergrad") == "finite-difference":
        values["inner_optimizer"] = "sgd"  # DARTS differentiates an SGD step; Adam is the default elsewhere
    config = TrainConfig(**values)
    validate(config)
    if strict:
        check_relevant(config, explicit)
    return config


def config_from_dict(data: dict[str, Any], where: str = "") -> TrainConfig:
    """Rebuild a TrainConfig from ``config.json`` or a checkpoint's stored dict (checked like TOML)."""
    values = {}
    for key, value in data.items():
        if key not in FIELD_NAMES:
            raise ConfigError(f"unknown option {key!r}{where}")
        values[key] = _coerce(key, value, where)
    return TrainConfig(**values)


def _require(cond: bool, message: str) -> None:
    """Raise ConfigError(message) unless ``cond``."""
    if not cond:
        raise ConfigError(message)


def validate(c: TrainConfig) -> None:
    """Check option values and their combinations; ConfigError names the offending option."""
    _require(c.mode in MODES, f"--mode: unknown mode {c.mode!r}; choose one of {', '.join(MODES)}")
    _require(bool(c.benchmark), "--benchmark: a benchmark directory is required")
    _require(bool(c.out), "--out: a run directory is required")
    _require(not (c.steps is not None and c.epochs is not None), "--steps and --epochs: give one, not both")
    _require(c.steps is None or c.steps >= 1, f"--steps: must be >= 1, got {c.steps}")
    _require(c.epochs is None or c.epochs > 0, f"--epochs: must be > 0, got {c.epochs}")
    _require(c.batch_size >= 1, f"--batch-size: must be >= 1, got {c.batch_size}")
    _require(c.inner_steps >= 1, f"--inner-steps: must be >= 1, got {c.inner_steps}")
    _require(
        c.truncate is None or 1 <= c.truncate <= c.inner_steps,
        f"--truncate: must be in 1..--inner-steps ({c.inner_steps}), got {c.truncate}",
    )
    for name in ("lr_upper", "lr_lower", "fd_eps", "neumann_alpha"):
        _require(getattr(c, name) is None or getattr(c, name) > 0, f"--{name.replace('_', '-')}: must be > 0, got {getattr(c, name)}")
    _require(0 <= c.inner_momentum < 1, f"--inner-momentum: must be in [0, 1), got {c.inner_momentum}")
    _require(c.damping >= 0, f"--damping: must be >= 0, got {c.damping}")
    _require(c.cg_iters >= 1 and c.neumann_terms >= 1, "--cg-iters and --neumann-terms: must be >= 1")
    _require(c.lambda_seg >= 0, f"--lambda-seg: must be >= 0, got {c.lambda_seg}")
    _require(0 < c.val_fraction < 1, f"--val-fraction: must be in (0, 1), got {c.val_fraction}")
    _require(c.eval_every >= 0, f"--eval-every: must be >= 0 (0 = only at the end), got {c.eval_every}")
    _require(c.eval_slices is None or c.eval_slices >= 1, f"--eval-slices: must be >= 1, got {c.eval_slices}")
    _require(c.checkpoint_every >= 1, f"--checkpoint-every: must be >= 1, got {c.checkpoint_every}")
    _require(c.log_every >= 1, f"--log-every: must be >= 1, got {c.log_every}")
    _require(c.threads is None or c.threads >= 1, f"--threads: must be >= 1, got {c.threads}")
    _require(c.num_workers >= 0, f"--num-workers: must be >= 0, got {c.num_workers}")
    _require(c.max_bad_steps >= 1, f"--max-bad-steps: must be >= 1, got {c.max_bad_steps}")
    _require(c.seed >= 0, f"--seed: must be >= 0, got {c.seed}")
    _require(c.upper_optimizer in OPTIMIZERS, f"--upper-optimizer: choose one of {', '.join(OPTIMIZERS)}")
    _require(c.lower_optimizer in OPTIMIZERS, f"--lower-optimizer: choose one of {', '.join(OPTIMIZERS)}")
    _require(
        c.inner_optimizer in INNER_OPTIMIZERS,
        f"--inner-optimizer: choose one of {', '.join(INNER_OPTIMIZERS)}",
    )
    _require(
        not (c.mode == "bilevel" and c.hypergrad == "finite-difference" and c.inner_optimizer == "adam"),
        "--inner-optimizer adam: --hypergrad finite-difference differentiates an SGD or momentum step; "
        "choose --inner-optimizer sgd or momentum",
    )
    _require(c.device in ("cpu", "cuda") or c.device.startswith("cuda:"), f"--device: cpu or cuda, got {c.device!r}")
    _require(len(c.fusion_inputs) >= 1, "--fusion-inputs: at least one modality")
    if c.mode == "two-stage" and c.fusion_steps is not None:
        _require(c.fusion_steps >= 1, f"--fusion-steps: must be >= 1, got {c.fusion_steps}")
        _require(
            c.steps is None or c.fusion_steps < c.steps,
            f"--fusion-steps: must be < --steps ({c.steps}) to leave steps for segmentation",
        )
    if c.mode in FUSION_MODES:
        _require(c.inputs is None, f"--inputs: only for modes direct and feature-fusion, not {c.mode}")
    if c.mode == "feature-fusion":
        _require("fused" not in c.seg_inputs(), "--inputs: feature-fusion needs modalities, not the fused image")
    _check_registries(c)


def _check_registries(c: TrainConfig) -> None:
    """Check names that live in other packages' registries (models, hypergradient methods)."""
    from fuse4seg.bilevel import METHODS
    from fuse4seg.models import list_models

    models = list_models()
    if c.mode in FUSION_MODES:
        _require(c.fusion_model in models, f"--fusion-model: unknown model {c.fusion_model!r}; known: {', '.join(models)}")
    _require(c.seg_model in models, f"--seg-model: unknown model {c.seg_model!r}; known: {', '.join(models)}")
    if c.mode == "bilevel":
        _require(c.hypergrad in METHODS, f"--hypergrad: unknown method {c.hypergrad!r}; choose one of {', '.join(METHODS)}")


#: Options read only under a condition: name -> (predicate on the config, where the option applies).
_ONLY_FOR: dict[str, tuple[Callable[[TrainConfig], bool], str]] = {
    **{name: (lambda c: c.mode == "bilevel", "--mode bilevel") for name in (
        "hypergrad", "inner_steps", "inner_optimizer", "val_fraction")},
    "truncate": (lambda c: c.mode == "bilevel" and c.hypergrad == "truncated", "--mode bilevel --hypergrad truncated"),
    "fd_eps": (lambda c: c.mode == "bilevel" and c.hypergrad == "finite-difference",
               "--mode bilevel --hypergrad finite-difference"),
    "cg_iters": (lambda c: c.mode == "bilevel" and c.hypergrad == "implicit-cg", "--mode bilevel --hypergrad implicit-cg"),
    **{name: (lambda c: c.mode == "bilevel" and c.hypergrad == "implicit-neumann",
              "--mode bilevel --hypergrad implicit-neumann") for name in ("neumann_terms", "neumann_alpha")},
    "damping": (lambda c: c.mode == "bilevel" and c.hypergrad in ("implicit-cg", "implicit-neumann"),
                "--mode bilevel --hypergrad implicit-cg or implicit-neumann"),
    "inner_momentum": (lambda c: c.mode == "bilevel" and c.inner_optimizer == "momentum",
                       "--mode bilevel --inner-optimizer momentum"),
    "fusion_steps": (lambda c: c.mode == "two-stage", "--mode two-stage"),
    "lambda_seg": (lambda c: c.mode in ("bilevel", "joint"), "--mode bilevel or joint"),
    "lower_optimizer": (lambda c: c.mode != "bilevel", "modes other than bilevel (its inner loop uses --inner-optimizer)"),
    **{name: (lambda c: c.mode in FUSION_MODES, "--mode " + ", ".join(FUSION_MODES)) for name in (
        "fusion_model", "fusion_options", "fusion_loss_weights", "lr_upper", "upper_optimizer")},
}


def check_relevant(c: TrainConfig, given: set[str]) -> None:
    """ConfigError for the first option in ``given`` (set explicitly) that this mode/method ignores."""
    for name in sorted(given & set(_ONLY_FOR)):
        applies, where = _ONLY_FOR[name]
        if not applies(c):
            opt = "--fusion-width/fusion_options" if name == "fusion_options" else "--" + name.replace("_", "-")
            raise ConfigError(f"{opt}: only used with {where}; this run is --mode {c.mode}"
                              + (f" --hypergrad {c.hypergrad}" if c.mode == "bilevel" else "")
                              + (f" --inner-optimizer {c.inner_optimizer}" if name == "inner_momentum" else "")
                              + "; remove the option")


def resolve_steps(c: TrainConfig, n_train: int) -> int:
    """Total optimisation steps: ``--steps``, or ``ceil(epochs * n_train / batch_size)`` (default 1 epoch)."""
    if c.steps is not None:
        return c.steps
    epochs = 1.0 if c.epochs is None else c.epochs
    return max(1, math.ceil(epochs * n_train / c.batch_size))


def write_config_json(c: TrainConfig, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write every resolved option (plus ``extra`` derived facts under "derived") to JSON atomically."""
    from fuse4seg.io import atomic_write_text

    payload = {"options": c.to_dict(), "derived": extra or {}}
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_run_config(path: str | Path, option: str = "--run") -> tuple[TrainConfig, dict[str, Any]]:
    """Read ``RUN/config.json`` once: (its TrainConfig, its "derived" facts dict, {} if absent).

    ConfigError naming ``option`` if the file is missing or malformed.
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        options = payload["options"]
    except FileNotFoundError:
        raise ConfigError(f"{option}: {path} not found (is {path.parent} a training run?)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{option}: {path} is not a fuse4seg run config: {exc}") from None
    derived = payload.get("derived", {})
    return config_from_dict(options, f" (in {path})"), derived


def read_config_json(path: str | Path, option: str = "--run") -> TrainConfig:
    """Read ``RUN/config.json`` back into a TrainConfig; ConfigError naming ``option`` if missing or malformed."""
    return read_run_config(path, option)[0]


__all__ = [
    "FUSION_MODES", "MODES", "TrainConfig", "build_config", "check_relevant", "config_from_dict", "load_toml",
    "read_config_json", "read_run_config", "resolve_steps", "validate", "write_config_json",
]
