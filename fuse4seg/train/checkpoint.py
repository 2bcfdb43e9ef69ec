"""Checkpoints: plain state dicts, optimiser states, RNG states and counters; atomic save, safe load.

A checkpoint holds only tensors and primitive containers (dict, list, tuple, str, int, float, bool,
None), so it loads with ``torch.load(weights_only=True)``: a checkpoint file is data, never code.
"""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuse4seg.errors import DataError
from fuse4seg.io import atomic_path

#: Bumped when the checkpoint layout changes; load refuses layouts it does not know.
CHECKPOINT_FORMAT = 1


def capture_rng_state() -> dict[str, Any]:
    """Every RNG state that training touches (torch CPU, CUDA if present, NumPy, Python) as tensors/ints."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_state[0]), "internal": list(py_state[1]), "gauss_next": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


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
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, **_to_cpu(state)}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


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


_NONE = type(None)
#: Every entry the training loop writes (dotted key -> accepted types); "benchmark" is optional
#: because checkpoints written before it existed still evaluate (resume then checks the path).
LAYOUT: tuple[tuple[str, tuple[type, ...]], ...] = (
    ("config", (dict,)), ("step", (int,)), ("total_steps", (int,)), ("models", (dict,)),
    ("optimizers", (dict,)), ("optimizers.upper", (dict, _NONE)), ("optimizers.lower", (dict, _NONE)),
    ("inner_state", (dict, _NONE)),
    ("rng", (dict,)), ("rng.torch", (torch.Tensor,)), ("rng.numpy", (dict,)), ("rng.numpy.name", (str,)),
    ("rng.numpy.key", (torch.Tensor,)), ("rng.numpy.pos", (int,)), ("rng.numpy.has_gauss", (int,)),
    ("rng.numpy.cached_gaussian", (float,)), ("rng.python", (dict,)), ("rng.python.version", (int,)),
    ("rng.python.internal", (list, tuple)), ("rng.python.gauss_next", (float, _NONE)),
    ("counters", (dict,)), ("counters.skipped", (int,)), ("counters.bad_in_a_row", (int,)),
    ("best", (dict,)), ("best.score", (float, int)), ("best.step", (int,)),
)
OPTIONAL: tuple[tuple[str, tuple[type, ...]], ...] = (
    ("benchmark", (dict,)), ("benchmark.sha256", (str,)), ("benchmark.counts", (dict,)),
)


def _lookup(state: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    """(found, value) of a dotted key inside nested dicts."""
    value: Any = state
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def _type_names(types: tuple[type, ...]) -> str:
    """'int' / 'dict or None' for messages."""
    return " or ".join("None" if t is _NONE else t.__name__ for t in types)


def check_layout(state: dict[str, Any], path: str | Path) -> None:
    """DataError naming ``path`` and the key when an entry of :data:`LAYOUT` is missing or mistyped.

    Also checks that every model entry is a state dict of tensors and every optimiser state has
    ``state`` and ``param_groups``: a foreign or hand-edited file fails here, not deep in torch.
    """
    for entries, required in ((LAYOUT, True), (OPTIONAL, False)):
        for key, types in entries:
            found, value = _lookup(state, key)
            if not found:
                if required:
                    raise DataError(f"{path} is not a fuse4seg checkpoint (it lacks {key!r})")
                break  # an optional table that is absent: skip its sub-keys
            if isinstance(value, bool) and bool not in types or not isinstance(value, types):
                raise DataError(f"{path}: checkpoint entry {key!r} is {type(value).__name__}, "
                                f"expected {_type_names(types)}")
    for net, tensors in state["models"].items():
        if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
            raise DataError(f"{path}: checkpoint entry 'models.{net}' is not a state dict of tensors")
    for key in ("upper", "lower"):
        opt = state["optimizers"][key]
        if opt is not None and not (isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)):
            raise DataError(f"{path}: checkpoint entry 'optimizers.{key}' is not an optimiser state dict")
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
