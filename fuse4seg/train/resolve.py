"""Resolution of a training configuration: precedence (defaults < TOML file < given options), the checks of
option values and their combinations, and which options a run ignores; derived from the declarations of
:class:`fuse4seg.train.config.TrainConfig`."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

from fuse4seg.errors import ConfigError, flag_for
from fuse4seg.train.config import MAX_SEG_CHANNELS, MAX_STEPS, OPTIONS, TrainConfig, reads_text, uses_text
from fuse4seg.train.declare import Declared, check_values, convert, declared, with_values
from fuse4seg.train.modes import MODES, names
from fuse4seg.train.variant_facts import facts_of
from fuse4seg.user_files import read_user_file

#: Largest TOML file of options read (bytes; checked before reading): options are a few kB.
MAX_CONFIG_BYTES = 2**20


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
        parts.append(f"{_flag(('engine', 'optimizer'))} " + " or ".join(optimizers))
    return modes, " ".join(parts) or None


def applies(c: TrainConfig, d: Declared) -> bool:
    """Whether the run configured by ``c`` reads option ``d``."""
    modes, methods, optimizers = readers(d)
    dims = d.metadata.get("dims")
    return ((modes is None or c.mode in modes) and (methods is None or c.method in methods)
            and (optimizers is None or c.engine.optimizer in optimizers) and (dims is None or c.dims in dims))


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
                run += f" {_flag(('engine', 'optimizer'))} {c.engine.optimizer}"
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
    text_key = _text_key(c)
    facts_of(c).check(c, text_key)  # the rules of the run variant (task x dims)
    _check_text(c, text_key)
    _check_bottleneck(c)
    mode.check(c)


def _text_key(c: TrainConfig) -> str | None:
    """The option that makes the run read the slices' texts (``fusion_model`` for a text-guided fusion net, else
    ``semantic_weight``), or None when it reads none."""
    if not uses_text(c):
        return None
    return "fusion_model" if reads_text(c.fusion_model) else "semantic_weight"


def _check_text(c: TrainConfig, key: str | None) -> None:
    """Texts describe whole axial slices as stored: no augmentation with text, and (the generated texts state the
    labels) no text for runs that leave cases unlabelled; the variant's own text rules come first."""
    if key is None:
        return
    if c.label_fraction < 1:
        raise ConfigError("reads the slices' texts, which are written from the labels of the cases --label-fraction "
                          "leaves unlabelled", option=key)
    if c.augment != "none":  # a flip or a rotation would contradict the texts' left/right and anterior/posterior
        raise ConfigError("reads the slices' texts, whose locations an augmented slice would contradict; use "
                          "--augment none", option=key)


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
    raw = read_user_file(path, MAX_CONFIG_BYTES, option="config", what="TOML file")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read {path}: not UTF-8 text (byte {exc.start})", option="config") from None
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


__all__ = ["applies", "build_config", "check_relevant", "config_from_dict", "load_toml", "resolve_steps", "validate",
           "where_used"]
