"""Data-parallel training (2 gloo processes on CPU) equals single-process training; mixed precision runs.

The processes are started as torchrun would start them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT on a
free local port), each with a timeout, and killed if a peer hangs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fuse4seg.distributed import World, init_from_env
from fuse4seg.errors import ConfigError
from fuse4seg.train.loop import train
from fuse4seg.train.resolve import build_config

HERE = Path(__file__).parent
TINY = {"seg_options": {"width": 4, "depth": 2}, "fusion_options": {"width": 4, "layers": 2}, "batch_size": 4,
        "progress": False, "eval_slices": 2, "lr_lower": 0.01, "threads": 1}
#: Seconds a group of processes may take before it is killed (a hung collective must not hang the suite).
TIMEOUT = 240


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], n: int = 2, cwd: Path | None = None) -> list[subprocess.Popen]:
    """Start ``python ARGS`` as ranks 0..n-1 of one process group (as torchrun would)."""
    env = {**os.environ, "WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "OMP_NUM_THREADS": "1"}
    return [subprocess.Popen([sys.executable, *args], cwd=cwd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(n)]


def launch(args: list[str], n: int = 2, cwd: Path | None = None) -> list[str]:
    """Run ``python ARGS`` as ranks 0..n-1 of one process group; the outputs; AssertionError naming the rank
    that failed (all are killed when one fails or the group times out)."""
    procs = start(args, n, cwd)
    outputs = []
    try:
        for r, p in enumerate(procs):
            out, _ = p.communicate(timeout=TIMEOUT)
            outputs.append(out)
            assert p.returncode == 0, f"rank {r} exited with {p.returncode}:\n{out[-3000:]}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return outputs


def test_one_step_of_every_mode_equals_the_single_process_step(tmp_path: Path) -> None:
    """One step of each mode (bi-level: unrolled with inner SGD and Adam, truncated, implicit CG and Neumann,
    first-order, finite-difference, --seg-fraction; joint, direct, two-stage, feature-fusion) on 2 + 2 slices
    in two processes gives the weights of one process on the 4 slices: identical on both ranks, to 1e-6 of
    the single-process step (1e-5 with inner Adam, whose first step divides by |g|); and the all-reduce's
    backward all-reduces the gradient (d/dx sum_r x_r^2 = 2 x N on every rank)."""
    sys.path.insert(0, str(HERE))
    from _distributed_worker import one_step_each

    launch([str(HERE / "_distributed_worker.py"), str(tmp_path)])
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["allreduce_grad"] for r in ranks] == [2 * 1 * 2, 2 * 2 * 2]
    torch.set_num_threads(1)
    reference = one_step_each(World())
    for case, nets in reference.items():
        tol = 1e-5 if "adam" in case else 1e-6
        for net, tensors in nets.items():
            for name, value in tensors.items():
                a, b = (r["steps"][case][net][name] for r in ranks)
                assert torch.equal(a, b), (case, net, name)
                assert a.dtype == torch.float32
                assert torch.allclose(a, value, rtol=0, atol=tol), (case, net, name, float((a - value).abs().max()))


def train_args(bench: Path, out: Path, steps: int) -> list[str]:
    """`python -m fuse4seg train` arguments for a tiny bi-level run with augmentation on ``bench``."""
    toml = out.parent / f"{out.name}.toml"
    toml.write_text("fusion_options = { width = 4, layers = 2 }\nseg_options = { width = 4, depth = 2 }\n")
    return ["-m", "fuse4seg", "train", "--config", str(toml), "--benchmark", str(bench), "--out", str(out),
            "--steps", str(steps), "--batch-size", "4", "--no-progress", "--eval-slices", "2", "--eval-every", "2",
            "--checkpoint-every", "1", "--augment", "light", "--threads", "1", "--lr-lower", "0.01"]


@pytest.mark.slow
def test_two_processes_train_resume_exactly_and_match_one_process(bench: Path, tmp_path: Path) -> None:
    """torchrun-style `fuse4seg train` in 2 processes: 4 steps equal 2 steps + --resume to 4 bit for bit
    (last.pt and best.pt); rank 0 alone writes (the run holds what a 1-process run holds); and the weights
    equal a 1-process run of the same 4 steps (same batches and augmentation draws) to 1e-5."""
    launch(train_args(bench, tmp_path / "whole", 4))
    launch(train_args(bench, tmp_path / "parts", 2))
    launch(["-m", "fuse4seg", "train", "--out", str(tmp_path / "parts"), "--resume", "--steps", "4"])
    single = build_config({**TINY, "benchmark": str(bench), "out": str(tmp_path / "single"), "steps": 4,
                           "eval_every": 2, "checkpoint_every": 1, "augment": "light"})
    train(single)
    for name in ("last.pt", "best.pt"):
        whole, parts = (torch.load(tmp_path / run / name, weights_only=True) for run in ("whole", "parts"))
        for net, tensors in whole["models"].items():
            for key, value in tensors.items():
                assert torch.equal(value, parts["models"][net][key]), (name, net, key)
    one = torch.load(tmp_path / "single" / "last.pt", weights_only=True)["models"]
    two = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["models"]
    for net, tensors in one.items():
        for key, value in tensors.items():
            assert torch.allclose(two[net][key], value, rtol=0, atol=1e-5), (net, key)
    listing = {p.name for p in (tmp_path / "whole").iterdir()}
    assert listing == {p.name for p in (tmp_path / "single").iterdir()}
    assert not any(p.name.endswith(".lock") for p in tmp_path.iterdir())


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_to_the_same_weights(bench: Path, tmp_path: Path) -> None:
    """Both ranks killed (-9) once a checkpoint exists, then --resume in 2 processes: last.pt and best.pt equal
    an uninterrupted 2-process run bit for bit."""
    launch(train_args(bench, tmp_path / "whole", 6))
    out = tmp_path / "killed"
    procs = start(train_args(bench, out, 6))
    deadline = time.monotonic() + TIMEOUT
    try:
        while not (out / "last.pt").exists():
            assert all(p.poll() is None for p in procs), "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert torch.load(out / "last.pt", weights_only=True)["step"] < 6
    launch(["-m", "fuse4seg", "train", "--out", str(out), "--resume"])
    for name in ("last.pt", "best.pt"):
        whole, resumed = (torch.load(tmp_path / run / name, weights_only=True) for run in ("whole", "killed"))
        for net, tensors in whole["models"].items():
            for key, value in tensors.items():
                assert torch.equal(value, resumed["models"][net][key]), (name, net, key)


def test_batch_size_must_split_over_the_processes() -> None:
    """A global batch that does not split evenly is a one-line ConfigError naming --batch-size; shards tile it."""
    with pytest.raises(ConfigError, match="divisible by the number of processes"):
        World(rank=0, size=3).check_batch(4)
    assert [World(rank=r, size=2).shard(4) for r in range(2)] == [(0, 2), (2, 4)]


def test_without_torchrun_there_is_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without RANK/WORLD_SIZE: one inactive world, no collectives, identity hooks."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    world = init_from_env("cpu")
    assert (world.rank, world.size, world.active, world.reduce, world.sync) == (0, 1, False, None, None)
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize(("mode", "extra"), [("bilevel", {}), ("direct", {}),
                                            ("bilevel", {"hypergrad": "checkpointed", "inner_steps": 3})])
def test_bf16_trains_on_cpu(bench: Path, tmp_path: Path, mode: str, extra: dict) -> None:
    """--precision bf16: a few steps with finite losses, no skipped step, fp32 weights in the checkpoint."""
    config = build_config({**TINY, "benchmark": str(bench), "out": str(tmp_path / "run"), "mode": mode, "steps": 2,
                           "precision": "bf16", **extra})
    summary = train(config)
    assert summary["skipped"] == 0 and summary["steps"] == 2
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    for tensors in ckpt["models"].values():
        assert all(v.dtype == torch.float32 and bool(torch.isfinite(v).all()) for v in tensors.values()
                   if v.is_floating_point())


def test_fp16_with_loss_scaling_in_a_single_level_mode(bench: Path, tmp_path: Path) -> None:
    """--precision fp16 (direct): trains with a GradScaler whose state is checkpointed; refused for bilevel."""
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.nn.functional.conv2d(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 3, 3))
    except RuntimeError as exc:  # older CPU builds have no fp16 autocast
        pytest.skip(f"CPU autocast has no float16 here: {exc}")
    config = build_config({**TINY, "benchmark": str(bench), "out": str(tmp_path / "run"), "mode": "direct",
                           "steps": 3, "precision": "fp16"})
    summary = train(config)
    assert summary["steps"] == 3
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["optimizers"]["scaler"]["scale"] > 0
    assert all(v.dtype == torch.float32 for v in ckpt["models"]["seg"].values() if v.is_floating_point())
    with pytest.raises(ConfigError, match="precision: fp16 is not supported with --mode bilevel"):
        build_config({"benchmark": "b", "out": "o", "precision": "fp16"})
