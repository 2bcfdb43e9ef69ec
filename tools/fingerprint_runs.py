"""Fingerprint what the command line makes, so two versions of the code can be proven bit-identical.

Builds tiny phantom packages (2-D and volumetric), trains one short run per mode, hypergradient method,
task, dims and feature (few labels, text, augmentation, degraded inputs, bf16, pre-trained init), pre-trains
an encoder, evaluates and fuses, and writes one JSON: the SHA-256 of every tensor of every checkpoint's
weights and of every output that holds numbers. Run it on two checkouts and compare the JSON files:

    python tools/fingerprint_runs.py --out /tmp/fp-old.json --work /tmp/fp-old     # in the old checkout
    python tools/fingerprint_runs.py --out /tmp/fp-new.json --work /tmp/fp-new     # in the new one
    python tools/fingerprint_runs.py --compare /tmp/fp-old.json /tmp/fp-new.json

The runs go through ``python -m fuse4seg`` with the checkout's own package first on the path.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The training matrix: name -> extra train options (every run: 4 steps, batch 2, tiny networks).
TINY = ["--steps", "4", "--batch-size", "2", "--seg-width", "4", "--seg-depth", "2",
        "--eval-every", "2", "--checkpoint-every", "2", "--threads", "1", "--no-progress"]
RUNS: dict[str, list[str]] = {
    **{f"bilevel-{m}": ["--mode", "bilevel", "--hypergrad", m] for m in (
        "unrolled", "higher", "truncated", "first-order", "finite-difference", "implicit-cg", "implicit-neumann")},
    "bilevel-unrolled-k2": ["--mode", "bilevel", "--inner-steps", "2"],
    "bilevel-seg-fraction": ["--mode", "bilevel", "--seg-fraction", "0.5"],
    "bilevel-warmup": ["--mode", "bilevel", "--fusion-steps", "1"],
    "bilevel-region": ["--mode", "bilevel", "--region-based"],
    "bilevel-bf16": ["--mode", "bilevel", "--precision", "bf16"],
    "two-stage": ["--mode", "two-stage"],
    "joint": ["--mode", "joint"],
    "joint-fp16": ["--mode", "joint", "--precision", "fp16"],
    "direct": ["--mode", "direct"],
    "direct-sources": ["--mode", "direct", "--inputs", "t1ce,flair"],
    "feature-fusion": ["--mode", "feature-fusion"],
    "fusion-freq": ["--mode", "bilevel", "--fusion-model", "fusion-freq"],
    "classify-bilevel": ["--mode", "bilevel", "--task", "classify"],
    "classify-direct": ["--mode", "direct", "--task", "classify"],
    "classify-feature": ["--mode", "feature-fusion", "--task", "classify"],
    "labels-half": ["--mode", "bilevel", "--label-fraction", "0.5"],
    "labels-half-joint": ["--mode", "joint", "--label-fraction", "0.5"],
    "augment": ["--mode", "joint", "--augment", "light", "--degrade-inputs", "light"],
    "text": ["--mode", "bilevel", "--fusion-model", "fusion-text", "--semantic-weight", "0.5",
             "--semantic-steps", "3"],
    "init": ["--mode", "direct", "--init", "{pre}/encoder.pt"],
    "3d-bilevel": ["--mode", "bilevel", "--dims", "3", "--patch", "16,16,16", "--eval-slices", "1"],
    "3d-direct": ["--mode", "direct", "--dims", "3", "--patch", "16,16,16", "--eval-slices", "1"],
    "3d-two-stage": ["--mode", "two-stage", "--dims", "3", "--patch", "16,16,16", "--eval-slices", "1"],
}
#: Modes with a fusion network (they take --fusion-width).
FUSION_MODES = ("bilevel", "two-stage", "joint")
#: The file that marks a --work folder as this tool's (only such a folder is replaced).
WORK_MARKER = ".fingerprint-work"
#: Runs evaluated on the test split (slices) and applied to one case by ``fuse``.
EVALUATED = ("bilevel-unrolled", "direct", "feature-fusion", "classify-bilevel", "text", "3d-bilevel")


def _cli(args: list[str], env: dict[str, str]) -> None:
    """Run ``python -m fuse4seg ARGS``; exit with its output on failure."""
    done = subprocess.run([sys.executable, "-m", "fuse4seg", *args], check=False, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"fuse4seg {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def _weights(path: Path) -> dict[str, str]:
    """SHA-256 of every tensor in a checkpoint (nested dicts flattened by '/'), plus its scalar counters."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    out: dict[str, str] = {}

    def walk(prefix: str, value: object) -> None:
        """Record tensors and numbers under ``prefix``."""
        if isinstance(value, torch.Tensor):
            out[prefix] = hashlib.sha256(value.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}", item)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix] = repr(value)

    walk("", {k: v for k, v in state.items() if k in ("networks", "models", "model", "encoder", "state_dict",
                                                        "optimisers", "text", "training", "best")})
    return out


def package_digest(path: Path) -> str:
    """SHA-256 of every dataset's values and every attribute of an HDF5 package but its build time stamp."""
    import h5py
    import numpy as np

    digest = hashlib.sha256()

    def visit(name: str, node: object) -> None:
        """Fold one group or dataset (name, attributes, values) into the digest."""
        digest.update(name.encode())
        for key in sorted(node.attrs):
            if key != "created":
                digest.update(f"{key}={node.attrs[key]!r}".encode())
        if isinstance(node, h5py.Dataset):
            values = node[()]
            digest.update(b"".join(values.ravel()) if values.dtype == object else np.ascontiguousarray(values).tobytes())

    with h5py.File(path, "r") as h5:
        visit("/", h5)
        h5.visititems(visit)
    return digest.hexdigest()[:16]


def _json_numbers(path: Path) -> str:
    """SHA-256 of a JSON file with timing and path entries dropped (they differ between checkouts)."""
    data = json.loads(path.read_text())

    def clean(value: object) -> object:
        """The value without keys that name times, paths or versions."""
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()
                    if not any(w in k for w in ("time", "seconds", "path", "run", "version", "command", "benchmark"))}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return hashlib.sha256(json.dumps(clean(data), sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(work: Path, only: list[str] | None) -> dict[str, object]:
    """Build, train, pre-train, evaluate and fuse under ``work``; the fingerprints by output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if work.exists():
        if not (work / WORK_MARKER).is_file():  # never delete a folder this tool did not make
            sys.exit(f"error: --work {work} exists and was not made by this tool; name a new folder")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / WORK_MARKER).write_text("fingerprint_runs work folder\n")
    release, bench = work / "release", work / "bench"
    _cli(["phantom", "--out", str(release), "--cases", "6", "--scale", "0.25", "--seed", "3"], env)
    _cli(["build-benchmark", "--brats", str(release), "--out", str(bench), "--size", "32", "--slices-per-case", "3",
          "--split", "0.5,0.17,0.33", "--volumes"], env)
    result: dict[str, object] = {"package": package_digest(bench / "brats_fuse.h5")}
    pre = work / "pre"
    _cli(["pretrain", "--benchmark", str(bench), "--out", str(pre), "--steps", "3", "--batch-size", "2",
          "--width", "4", "--depth", "2", "--embed-dim", "8", "--no-progress"], env)
    result["pretrain"] = _weights(pre / "last.pt")
    case = next(p for p in sorted(release.iterdir()) if p.is_dir())
    for name, extra in RUNS.items():
        if only and name not in only:
            continue
        run = work / "runs" / name
        args = [a.replace("{pre}", str(pre)) for a in extra]
        if extra[1] in FUSION_MODES:
            args += ["--fusion-width", "4"]
        _cli(["train", "--benchmark", str(bench), "--out", str(run), *TINY, *args], env)
        entry: dict[str, object] = {"last": _weights(run / "last.pt"), "best": _weights(run / "best.pt")}
        if name in EVALUATED:
            _cli(["evaluate", "--run", str(run), "--compare-untrained"], env)
            entry["eval"] = _json_numbers(run / "eval" / "metrics.json")
            if "classify" in name:  # a classifier makes no label maps to fuse
                result[name] = entry
                continue
            _cli(["fuse", "--run", str(run), "--case", str(case), "--out", str(work / "fused" / name)], env)
            entry["fuse"] = {p.name: hashlib.sha256(_nifti_bytes(p)).hexdigest()[:16]
                             for p in sorted((work / "fused" / name).glob("*.nii.gz"))}
        result[name] = entry
        print(f"{name}: done", flush=True)
    return result


def _nifti_bytes(path: Path) -> bytes:
    """The voxel bytes of a NIfTI file (its gzip header holds a time stamp)."""
    import nibabel as nib

    return nib.load(path).get_fdata(dtype="float64").tobytes()


def compare(old: Path, new: Path) -> int:
    """Print the outputs whose fingerprints differ; 0 if none."""
    a, b = json.loads(old.read_text()), json.loads(new.read_text())
    rows, bad = [], 0
    for key in sorted(set(a) | set(b)):
        same = a.get(key) == b.get(key)
        bad += not same
        rows.append(f"| {key} | {'identical' if same else 'DIFFERS'} |")
    print("| output | old against new |\n|---|---|\n" + "\n".join(rows))
    return 1 if bad else 0


def main() -> int:
    """Command line: fingerprint this checkout, or compare two fingerprint files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fuse4seg-fingerprint"))
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--compare", nargs=2, type=Path)
    parser.add_argument("--package", type=Path, help="print the digest of one package's HDF5 file")
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if args.package:
        print(package_digest(args.package))
        return 0
    result = fingerprint(args.work, args.only)
    text = json.dumps(result, indent=1, sort_keys=True)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
