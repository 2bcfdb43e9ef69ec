"""One outer step of each training mode on a fixed global batch, as one process of N or as the only one.

Run by tests/test_distributed.py as ``python tests/_distributed_worker.py OUT`` in N processes with torchrun's
variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); each rank writes OUT/rank<r>.pt holding,
per case, the networks' weights after the step. Imported, :func:`one_step_each` gives the single-process
reference.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from fuse4seg.distributed import World, init_from_env
from fuse4seg.train.modes import MODES
from fuse4seg.train.networks import build_pipeline
from fuse4seg.train.optimisers import torch_optimisers
from fuse4seg.train.resolve import build_config
from fuse4seg.train.steps import STEPS

#: Global batch of every step (split 2 + 2 over two processes) and slice size.
BATCH, SIZE = 4, 32
TINY = {"benchmark": "b", "out": "o", "seg_options": {"width": 4, "depth": 2},
        "fusion_options": {"width": 4, "layers": 2}, "batch_size": BATCH, "lr_lower": 0.05, "lr_upper": 0.01,
        "upper_optimizer": "sgd", "lower_optimizer": "sgd", "inner_optimizer": "sgd"}  # weights differ as gradients do
#: Case name -> options: every mode, and the bi-level methods and inner optimisers whose collectives differ.
CASES: dict[str, dict[str, Any]] = {
    "unrolled-sgd": {"inner_steps": 2, "inner_optimizer": "sgd"},
    "unrolled-adam": {"inner_steps": 2, "inner_optimizer": "adam"},
    "implicit-cg": {"hypergrad": "implicit-cg", "inner_steps": 2, "cg_iters": 3, "inner_optimizer": "sgd"},
    "implicit-neumann": {"hypergrad": "implicit-neumann", "inner_steps": 2, "neumann_terms": 3,
                         "inner_optimizer": "sgd"},
    "first-order": {"hypergrad": "first-order", "inner_steps": 2},
    "first-order-adam": {"hypergrad": "first-order", "inner_steps": 2, "inner_optimizer": "adam"},
    "finite-difference": {"hypergrad": "finite-difference", "inner_steps": 2},
    "truncated": {"hypergrad": "truncated", "inner_steps": 2, "truncate": 1},
    "checkpointed": {"hypergrad": "checkpointed", "inner_steps": 3, "inner_optimizer": "sgd"},
    "seg-fraction": {"inner_steps": 1, "seg_fraction": 0.5},
    "joint": {"mode": "joint"},
    "direct": {"mode": "direct", "inputs": "t1ce,flair"},
    "direct-region": {"mode": "direct", "region_based": True},
    "two-stage": {"mode": "two-stage"},
    "feature-fusion": {"mode": "feature-fusion"},
}


def global_batch(seed: int) -> dict[str, torch.Tensor]:
    """A fixed batch of BATCH random slices: sources, stored fused image, labels with every class."""
    g = torch.Generator().manual_seed(seed)
    return {"source": torch.rand(BATCH, 4, SIZE, SIZE, generator=g),
            "fused": torch.rand(BATCH, 1, SIZE, SIZE, generator=g),
            "label": torch.randint(0, 4, (BATCH, SIZE, SIZE), generator=g)}


def one_step_each(world: World, cases: dict[str, dict[str, Any]] = CASES) -> dict[str, dict]:
    """Case -> the networks' state dicts after one step from seed-0 weights on this rank's shard."""
    lo, hi = world.shard(BATCH)
    out = {}
    for name, extra in cases.items():
        config = build_config({**TINY, **extra})
        pipeline = build_pipeline(config)
        t = SimpleNamespace(config=config, pipeline=pipeline, opts=torch_optimisers(config, pipeline),
                            device=torch.device("cpu"), step=0, fusion_steps=0, world=world, unlabelled=None)
        fit, hold = ({k: v[lo:hi] for k, v in global_batch(seed).items()} for seed in (1, 2))
        pipeline.train(True)
        STEPS[MODES[config.mode].step](t, fit, hold)
        out[name] = {k: {n: v.detach().clone() for n, v in sd.items()} for k, sd in pipeline.state_dicts().items()}
    return out


def allreduce_backward(world: World) -> float:
    """d/dx of all_reduce_sum(x^2) at x = rank + 1, as autograd on this rank computes it (every rank's seed
    arrives: 2 x N)."""
    x = torch.tensor(float(world.rank + 1), requires_grad=True)
    assert world.reduce is not None
    world.reduce(x * x).backward()
    return float(x.grad)


def main(out: Path) -> None:
    """Join the process group from the environment, run every case and write OUT/rank<r>.pt."""
    torch.set_num_threads(1)
    world = init_from_env("cpu")
    try:
        result = {"steps": one_step_each(world), "allreduce_grad": allreduce_backward(world), "size": world.size}
        torch.save(result, out / f"rank{world.rank}.pt")
    finally:
        world.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
