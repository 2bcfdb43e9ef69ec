"""Checkpoints: plain state dicts, optimiser states, RNG states and counters; atomic save, safe load.

A checkpoint holds only tensors and primitive containers (dict, list, tuple, str, int, float, bool,
None), so it loads with ``torch.load(weights_only=True)``: a checkpoint file is data, never code.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import random
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuse4seg.errors import DataError, Fuse4SegError
from fuse4seg.io import atomic_paths, one_line, write_failure

#: Bumped when the checkpoint layout changes; load refuses layouts it does not know.
CHECKPOINT_FORMAT = 1


# ---- the layout, declared once: written from these classes, checked against them on load --------------
# A field whose default is None is optional: it may be absent from a file (older checkpoints), and it is
# not written while it is None.


@dataclass
class NumpyRng:
    """NumPy's global RNG state (np.random.get_state), with the key as an int64 tensor."""

    name: str
    key: torch.Tensor
    pos: int
    has_gauss: int
    cached_gaussian: float


@dataclass
class PythonRng:
    """Python's ``random`` state (random.getstate)."""

    version: int
    internal: list | tuple
    gauss_next: float | None


@dataclass
class RngState:
    """Every RNG state that training touches; ``cuda`` only when CUDA was initialised."""

    torch: torch.Tensor
    numpy: NumpyRng
    python: PythonRng
    cuda: list | None = None


@dataclass
class OptimiserStates:
    """Torch optimiser state dicts of the fusion net (upper) and the segmenter (lower), None if absent; ``scaler``:
    the fp16 GradScaler's (--precision fp16 only)."""

    upper: dict | None
    lower: dict | None
    scaler: dict | None = None


@dataclass
class Counters:
    """Skipped (non-finite) steps, in total and in a row."""

    skipped: int = 0
    bad_in_a_row: int = 0


@dataclass
class Best:
    """Val Dice of best.pt and the step it was chosen at (-inf, -1: none yet)."""

    score: float | int = -math.inf
    step: int = -1


@dataclass
class Identity:
    """The benchmark a run was trained on (fuse4seg.runkit.benchmark.benchmark_identity)."""

    sha256: str
    counts: dict
    height: int
    width: int


@dataclass
class TrainingState:
    """Everything a training checkpoint holds: options, counters, weights, optimiser and RNG states.
    ``benchmark`` is optional: checkpoints written before it existed still evaluate (resume then
    checks the path)."""

    config: dict
    step: int
    total_steps: int
    models: dict
    optimizers: OptimiserStates
    inner_state: dict | None
    rng: RngState
    counters: Counters
    best: Best
    benchmark: Identity | None = None
    seg_weight: float | None = None  # a constrained upper level's adaptive segmentation weight (--fusion-budget)


def to_plain(obj: Any) -> Any:
    """A layout dataclass as nested dicts (tensors kept, not copied); None-valued optional fields left out."""
    if not dataclasses.is_dataclass(obj):
        return obj
    return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
            if not (getattr(obj, f.name) is None and f.default is None)}


def capture_rng_state() -> dict[str, Any]:
    """Every RNG state that training touches (torch CPU, CUDA if present, NumPy, Python) as tensors/ints."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return to_plain(RngState(
        torch=torch.get_rng_state(),
        numpy=NumpyRng(str(np_state[0]), torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                       int(np_state[3]), float(np_state[4])),
        python=PythonRng(int(py_state[0]), list(py_state[1]), py_state[2]),
        cuda=cuda,
    ))


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states stored by :func:`capture_rng_state` (CUDA only when present here)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["key"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])  # the setter wants CPU ByteTensors


def _to_cpu(obj: Any) -> Any:
    """Copy every tensor inside nested dicts/lists/tuples to CPU (checkpoints load on any device)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors + primitive containers) to ``path`` atomically; returns the path."""
    return save_checkpoints([Path(path)], state)[0]


def save_checkpoints(paths: list[Path], state: dict[str, Any]) -> list[Path]:
    """Write ``state`` to every path (e.g. best.pt and last.pt of one step): all files are written first and
    renamed only then, so a failure (a full disk) leaves the previous set intact; one-line error."""
    payload = {"format": CHECKPOINT_FORMAT, **_to_cpu(state)}
    with atomic_paths(*paths) as tmps:
        for tmp in tmps:
            try:
                torch.save(payload, tmp)
            except RuntimeError as exc:  # torch's zip writer reports a failed write (disk full) this way
                final = paths[tmps.index(tmp)]
                raise write_failure(final, exc) or Fuse4SegError(
                    f"cannot write checkpoint {final}: {one_line(exc)}") from None
    return paths


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; DataError naming the file if missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError, KeyError, TypeError) as exc:
        # torch raises these for truncated, corrupt or unsafe (non-weights) files: all mean "bad file"
        raise DataError(f"{path} is not a fuse4seg checkpoint ({_load_failure(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path} is not a fuse4seg checkpoint (no format {CHECKPOINT_FORMAT} marker)")
    check_layout(state, path)
    return state


def _type_names(types: tuple[type, ...]) -> str:
    """'int' / 'dict or None' for messages."""
    return " or ".join("None" if t is type(None) else t.__name__ for t in types)


def _check_entry(value: Any, tp: Any, key: str, path: str | Path) -> None:
    """DataError naming ``path`` and ``key`` unless ``value`` fits the declared type ``tp`` (recursively)."""
    options = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
    nested = next((t for t in options if dataclasses.is_dataclass(t)), None)
    allowed = tuple(dict if t is nested else t for t in options)
    if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
        raise DataError(f"{path}: checkpoint entry {key!r} is {type(value).__name__}, expected {_type_names(allowed)}")
    if nested is not None and isinstance(value, dict):
        hints = typing.get_type_hints(nested)
        for f in dataclasses.fields(nested):
            sub = f"{key}.{f.name}" if key else f.name
            if f.name in value:
                _check_entry(value[f.name], hints[f.name], sub, path)
            elif f.default is not None:
                raise DataError(f"{path} is not a fuse4seg checkpoint (it lacks {sub!r})")


def check_layout(state: dict[str, Any], path: str | Path) -> None:
    """DataError naming ``path`` and the key when an entry of :class:`TrainingState` is missing or mistyped.

    Also checks that every model entry is a state dict of tensors and every optimiser state has
    ``state`` and ``param_groups``: a foreign or hand-edited file fails here, not deep in torch.
    """
    _check_entry(state, TrainingState, "", path)
    for net, tensors in state["models"].items():
        # A module's extra state (a text encoder's vocabulary) is plain data the weights-only unpickler admitted.
        if not isinstance(tensors, dict) or not all(
                isinstance(v, torch.Tensor) or k == "_extra_state" or k.endswith("._extra_state")
                for k, v in tensors.items()):
            raise DataError(f"{path}: checkpoint entry 'models.{net}' is not a state dict of tensors")
    for name in ("upper", "lower"):  # torch optimisers (the optional fp16 scaler's state is a plain dict)
        opt = state["optimizers"][name]
        if opt is not None and not (isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)):
            raise DataError(f"{path}: checkpoint entry 'optimizers.{name}' is not an optimiser state dict")
    if state["step"] < 0 or state["total_steps"] < 1:
        raise DataError(f"{path}: checkpoint step {state['step']} / total {state['total_steps']} out of range")


def _load_failure(exc: BaseException) -> str:
    """A short one-line reason why torch.load(weights_only=True) refused a file.

    torch's own text advises re-running with ``weights_only=False`` or allow-listing globals; a
    checkpoint is data, not trusted code, so only the unpickler's finding is kept.
    """
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text:
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please|\n\n|$)", text, re.DOTALL)
        detail = " ".join(found.group(1).split()) if found else ""
        return f"refused by the weights-only unpickler: {detail}" if detail else "refused by the weights-only unpickler"
    if isinstance(exc, EOFError):
        return "the file is empty or truncated"
    first = " ".join(text.split(". ")[0].split()) or type(exc).__name__
    return first[:200]
