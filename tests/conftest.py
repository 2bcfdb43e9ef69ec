"""Shared fixtures: small NIfTI cases in any BraTS naming scheme, and a tiny phantom release.

``write_brats_case`` (a fixture returning :func:`write_case`) writes one case directory in milliseconds;
``phantom_release`` is a session-scoped 6-case phantom release at scale 0.25 (60 x 60 x 39 voxels);
``one_torch_thread`` (autouse) runs every test with one torch intra-op thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

#: File suffix of t1, t1ce, t2, flair, seg per naming scheme (as in real releases).
SUFFIXES: dict[str, tuple[str, ...]] = {
    "brats2020": ("_t1", "_t1ce", "_t2", "_flair", "_seg"),
    "brats2021": ("_t1", "_t1ce", "_t2", "_flair", "_seg"),
    "brats2023": ("-t1n", "-t1c", "-t2w", "-t2f", "-seg"),
}
DEFAULT_IDS: dict[str, str] = {
    "brats2020": "BraTS20_Training_001",
    "brats2021": "BraTS2021_00000",
    "brats2023": "BraTS-GLI-00000-000",
}
FIXTURE_SHAPE: tuple[int, int, int] = (12, 10, 8)


def fixture_label(shape: tuple[int, int, int], scheme: str) -> np.ndarray:
    """Release-scheme labels of a cube tumour: NCR centre, ET shell, ED around (uint8, shape ``shape``)."""
    label = np.zeros(shape, dtype=np.uint8)
    cx, cy, cz = (n // 2 for n in shape)
    label[cx - 3:cx + 3, cy - 3:cy + 3, cz - 2:cz + 2] = 2
    label[cx - 2:cx + 2, cy - 2:cy + 2, cz - 1:cz + 1] = 4 if scheme != "brats2023" else 3
    label[cx - 1:cx + 1, cy - 1:cy + 1, cz - 1:cz + 1] = 1
    return label


def write_case(root: Path, scheme: str = "brats2021", case_id: str | None = None,
               shape: tuple[int, int, int] = FIXTURE_SHAPE, labels: np.ndarray | None = None,
               images: dict[str, np.ndarray] | None = None, affine: np.ndarray | None = None,
               seg: bool = True, seed: int = 0, ext: str = ".nii.gz") -> Path:
    """Write one case directory ``root/case_id`` in ``scheme``'s layout; returns the directory.

    Images default to int16 values 100..900 inside an ellipsoidal brain (0 outside) that covers
    the default cube tumour; ``images`` overrides single modalities (keys t1, t1ce, t2, flair).
    ``labels`` are written as given (release scheme, not canonical).
    """
    case_id = case_id or DEFAULT_IDS[scheme]
    directory = Path(root) / case_id
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    brain = (grid**2).sum(axis=0) < 1.5
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) if affine is None else affine
    volumes = {}
    for name in ("t1", "t1ce", "t2", "flair"):
        default = (rng.integers(100, 900, size=shape) * brain).astype(np.int16)
        volumes[name] = default if images is None or name not in images else images[name]
    if seg:
        volumes["seg"] = fixture_label(shape, scheme) if labels is None else labels
    suffixes = dict(zip(("t1", "t1ce", "t2", "flair", "seg"), SUFFIXES[scheme]))
    for name, volume in volumes.items():
        nib.save(nib.Nifti1Image(np.asarray(volume), affine), directory / f"{case_id}{suffixes[name]}{ext}")
    return directory


@pytest.fixture
def write_brats_case() -> Callable[..., Path]:
    """The :func:`write_case` helper (one small NIfTI case in any BraTS naming scheme)."""
    return write_case


@pytest.fixture(scope="session")
def phantom_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-case phantom release (BraTS 2021 layout, seed 0, scale 0.25: 60 x 60 x 39 at 4 mm). Read only."""
    from fuse4seg.data.phantom.generator import write_phantom_release

    return write_phantom_release(tmp_path_factory.mktemp("phantom") / "release", cases=6, seed=0, scale=0.25)


@pytest.fixture(scope="session")
def bench(phantom_release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny benchmark of the phantom release: 3 slices per case at 48 x 48 (train 3 cases, val 2, test 1).
    Read only."""
    from fuse4seg.data.build.builder import build_benchmark

    out = tmp_path_factory.mktemp("bench") / "b"
    build_benchmark(out, brats=phantom_release, size=48, slices_per_case=3, split=(0.5, 0.25, 0.25),
                    progress=False)
    return out


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One torch intra-op thread per test, restored afterwards: `pytest -n 2` already uses both cores, and
    oversubscribed OpenMP threads make tiny convolutions up to 100x slower on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def checkpoint_weights(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Model state dicts of a checkpoint, loaded with weights_only=True."""
    return torch.load(path, weights_only=True)["models"]


def assert_same_weights(a: dict, b: dict) -> None:
    """Every tensor of two nested state dicts (network -> name -> tensor) is bitwise equal."""
    assert a.keys() == b.keys()
    for net, tensors in a.items():
        assert tensors.keys() == b[net].keys(), net
        for name, value in tensors.items():
            if name.endswith("_extra_state"):  # a text encoder's vocabulary and vectors, or a model's path
                other = b[net][name]
                assert value.keys() == other.keys(), (net, name)
                for key, item in value.items():
                    same = torch.equal(item, other[key]) if isinstance(item, torch.Tensor) else item == other[key]
                    assert same, (net, name, key)
            else:
                assert torch.equal(value, b[net][name]), (net, name)


def assert_functional_call_matches(model: torch.nn.Module, x: torch.Tensor) -> None:
    """With perturbed parameters, torch.func.functional_call equals the module holding those parameters, in the
    output and in every parameter gradient (the bi-level engine calls networks functionally)."""
    from torch.func import functional_call

    torch.manual_seed(1)
    params = {k: v.detach() + 0.05 * torch.randn_like(v) for k, v in model.named_parameters()}
    functional = functional_call(model, params, (x,))
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(params[k])
    torch.testing.assert_close(functional, model(x))
    weights = torch.randn_like(functional)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    grads = torch.autograd.grad((functional_call(model, leaves, (x,)) * weights).sum(), list(leaves.values()))
    (model(x) * weights).sum().backward()
    for (k, p), g in zip(model.named_parameters(), grads):
        torch.testing.assert_close(p.grad, g, msg=k)
