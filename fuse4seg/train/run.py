"""A run directory: its options, its checkpoints, and loading a trained run back.

    RUN/config.json            {"options": every option by key, "derived": facts resolved from the data}
    RUN/last.pt, RUN/best.pt   checkpoints (layout: fuse4seg.runkit.checkpoint.TrainingState)

``evaluate``, ``fuse`` and ``build-benchmark --fusion-checkpoint`` load runs through this module;
``--resume`` resolves its options here (:func:`resolve_config`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fuse4seg.errors import ConfigError, DataError, flag_for
from fuse4seg.io import MARKER, check_separate, made_by_fuse4seg, marker_kind, one_line
from fuse4seg.runkit.checkpoint import load_checkpoint
from fuse4seg.runkit.resume import check_same_options
from fuse4seg.runkit.rundir import CHECKPOINTS
from fuse4seg.train.config import OPTIONS, RESUMABLE, TrainConfig
from fuse4seg.train.declare import plain
from fuse4seg.train.networks import Pipeline, build_pipeline
from fuse4seg.train.resolve import build_config, check_relevant, config_from_dict, load_toml, validate
from fuse4seg.train.variant_facts import facts_of
from fuse4seg.user_files import read_user_file, text_problem

#: Largest RUN/config.json read (bytes; checked before reading): a run's config is a few kB.
MAX_RUN_CONFIG_BYTES = 16 * 2**20


def write_config_json(c: TrainConfig, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write every resolved option (plus ``extra`` derived facts under "derived") to JSON atomically."""
    from fuse4seg.io import atomic_write_text

    payload = {"options": c.to_dict(), "derived": extra or {}}
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _strings(value: Any) -> Iterator[str]:
    """Every string (keys included) inside a JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def read_run_config(path: str | Path, option: str = "run") -> tuple[TrainConfig, dict[str, Any]]:
    """Read ``RUN/config.json`` once: (its TrainConfig, its "derived" facts dict, {} if absent).

    ConfigError naming the parameter ``option`` (the one that gave the run) if the file is missing or malformed.
    """
    path = Path(path)
    try:
        if not path.exists():
            raise ConfigError(f"{path} not found (is {path.parent} a training run?)", option=option)
        payload = json.loads(read_user_file(path, MAX_RUN_CONFIG_BYTES, option=option, what="run config"))
        options = payload["options"]
        problem = next(filter(None, map(text_problem, _strings(payload))), None)
        if problem:  # a string that would reach a terminal through an error message or a summary
            raise ValueError(f"a string in it {problem}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a fuse4seg run config: {one_line(exc)}", option=option) from None
    except RecursionError:  # the decoder recurses per nesting level; a crafted file can nest 10**5 deep
        raise ConfigError(f"{path} is not a fuse4seg run config: nested too deeply", option=option) from None
    derived = payload.get("derived", {})
    return config_from_dict(options, f" (in {path})"), derived


def read_config_json(path: str | Path, option: str = "run") -> TrainConfig:
    """Read ``RUN/config.json`` back into a TrainConfig; ConfigError naming ``option`` if missing or malformed."""
    return read_run_config(path, option)[0]


def run_derived(run: str | Path) -> dict[str, Any]:
    """RUN/config.json's "derived" facts (slice size, benchmark fusion rule, slice_size, ...), after
    :func:`read_run_config` has checked that the file is a run config; ConfigError otherwise."""
    path = Path(run) / "config.json"
    derived = read_run_config(path)[1]
    if not isinstance(derived, dict):
        raise ConfigError(f"{path} has no \"derived\" facts (written by `fuse4seg train`)", option="run")
    return derived


def resolve_config(overrides: dict[str, Any], toml: str | Path | None = None) -> TrainConfig:
    """The run's configuration; with ``resume`` it is RUN/config.json plus the few options allowed to change."""
    if not overrides.get("resume"):
        return build_config(overrides, toml, strict=True)
    out = overrides.get("out")
    if not out:
        raise ConfigError("the run directory to resume is required", option="out")
    stored = read_config_json(Path(out) / "config.json", "out")
    given = dict(load_toml(toml)) if toml is not None else {}
    given.update({k: v for k, v in overrides.items() if v is not None})
    values = stored.to_dict()
    probe = config_from_dict({k: v for k, v in given.items() if k in OPTIONS}, " (given with --resume)")

    def refuse(key: str, old: Any, new: Any) -> ConfigError:
        """The one-line refusal naming the option that changed."""
        return ConfigError(f"{new!r} differs from the run being resumed ({old!r}); only --steps/--epochs and "
                           "logging options may change on --resume", option=key)

    # The options before the first unknown one are compared first, so the error names the first bad option given.
    known = list(itertools.takewhile(OPTIONS.__contains__, given))
    check_same_options({k: OPTIONS[k].get(stored) for k in known}, {k: OPTIONS[k].get(probe) for k in known},
                       RESUMABLE, refuse)
    unknown = next((key for key in given if key not in OPTIONS), None)
    if unknown is not None:
        raise ConfigError(f"unknown option {flag_for(unknown)}")
    values.update({key: plain(OPTIONS[key].get(probe)) for key in given if key in RESUMABLE})
    if "steps" in given and "epochs" not in given:
        values["epochs"] = None
    if "epochs" in given and "steps" not in given:
        values["steps"] = None
    config = config_from_dict(values, f" (in {out}/config.json)")
    config.resume = True
    validate(config)
    check_relevant(config, set(given))
    return config


def is_legacy_run(directory: Path) -> bool:
    """Whether ``directory`` is a run written before output markers (it has config.json)."""
    return (directory / "config.json").is_file()


def check_run_dir(config: TrainConfig) -> bool:
    """Check RUN for the run about to start; True when it is trained in place (new, empty, resumed, or what a
    run killed before its first checkpoint left), False when --overwrite replaces an earlier fuse4seg run
    (trained beside it, swapped in after success). Anything that is not a fuse4seg run is never replaced."""
    run = Path(config.out)
    if config.benchmark and (Path(config.benchmark) / "brats_fuse.h5").exists():  # else the data check says so
        check_separate(run, {"benchmark": config.benchmark})  # a run inside the package would break its verify
    if config.resume:
        if not (run / "last.pt").is_file():
            raise ConfigError(f"{run / 'last.pt'} not found; nothing to resume", option="resume")
        return True
    if not (run.exists() or run.is_symlink()):
        return True
    if run.is_symlink() or not run.is_dir():
        raise ConfigError(f"{run} exists and is not a directory", option="out")
    if not any(run.iterdir()):
        return True
    # A marked run that never wrote a checkpoint (killed at its start) holds nothing to keep. Only the marker
    # says so: a folder that merely has a config.json may be anybody's.
    if marker_kind(run) == "run" and not any((run / name).exists() for name in ("last.pt", "best.pt")):
        return True
    if not config.overwrite:
        raise ConfigError(f"{run} already exists (pass --resume to continue it or --overwrite)", option="out")
    if not made_by_fuse4seg(run, "run", legacy=is_legacy_run):
        raise ConfigError(f"{run} is not a fuse4seg run (no {MARKER} marker or config.json); refusing to overwrite it",
                          option="out")
    return False


def pipeline_from_checkpoint(path: str | Path) -> tuple[TrainConfig, Pipeline, dict]:
    """Config, pipeline (on CPU) with the weights of the checkpoint file ``path``, and the checkpoint;
    DataError (one line, naming the file) if the weights do not fit the networks its config builds."""
    path = Path(path)
    state = load_checkpoint(path)
    config = config_from_dict(state["config"], f" (in {path})")
    pipeline = build_pipeline(config)
    try:
        pipeline.load_state_dicts(state["models"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:  # a text encoder's extra state: ValueError
        raise DataError(f"checkpoint {path}: weights do not fit the networks: {one_line(exc)}") from None
    return config, pipeline, state


def load_run(run: str | Path, checkpoint: str = "best", device: str = "cpu") -> tuple[TrainConfig, Pipeline, dict]:
    """Config, pipeline with the checkpoint's weights (eval mode, on ``device``) and the checkpoint."""
    from fuse4seg.runkit.device import resolve_device

    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"choose one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}", option="checkpoint")
    run = Path(run)
    if not run.is_dir():
        raise ConfigError(f"{run} is not a directory", option="run")
    config, pipeline, state = pipeline_from_checkpoint(run / f"{checkpoint}.pt")
    return config, pipeline.to(resolve_device(device)).train(False), state


def require_segmenter(run: str | Path, config: TrainConfig, command: str) -> None:
    """ConfigError (option run) when RUN is a ``--task classify`` run, which ``command`` cannot use: it predicts
    slice-level presence, not label maps."""
    if not facts_of(config).segments:
        raise ConfigError(f"{run} is a --task classify run (slice-level presence, no label maps); {command} needs a "
                          "segmentation run (`fuse4seg evaluate` scores a classifier)", option="run")
