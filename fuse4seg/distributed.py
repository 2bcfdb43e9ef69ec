"""Data-parallel training over processes started by ``torchrun``: the process group, batch shards and the
collectives that make an N-process step equal the single-process step on the whole batch.

The rules (README: Distributed and mixed precision):

1. every reduction over the batch goes through :meth:`World.reduce` (a differentiable all-reduce SUM whose
   backward all-reduces the incoming gradient), so every rank holds the same global loss;
2. each rank backpropagates that loss and the parameter gradients are then all-reduce-MEANed
   (:meth:`World.mean_`, not differentiable, as DDP does): rank r holds N times the derivative through
   its own shard, so the mean over ranks is the full gradient;
3. bi-level: the lower parameters enter both losses through :class:`SyncGrad` (identity forward,
   differentiable all-reduce mean of the gradient backward), so ``autograd.grad(F, w)`` is the global
   inner gradient on every rank, under ``create_graph`` too.

Without torchrun's variables (RANK, WORLD_SIZE) :func:`init_from_env` returns a plain :class:`World`: no process
group, no collectives, every hook the identity.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from fuse4seg.errors import ConfigError, Fuse4SegError

# torch 2.13 deprecates this all_reduce in favour of _functional_collectives.all_reduce, whose backward is not
# documented; this one's backward (all-reduce of the gradient) is what rules 1 and 3 need, and is tested.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_reduce is deprecated",
                        category=FutureWarning)

#: How long a rank waits in a collective for the others (a crashed peer ends the run after this).
TIMEOUT = datetime.timedelta(minutes=10)


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable all-reduce SUM over the default group (backward: all-reduce SUM of the gradient)."""
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor, op=dist.ReduceOp.SUM)


def _pack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One flat tensor holding ``tensors`` (so one collective serves them all)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def _unpack(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat tensor made by :func:`_pack` back into tensors shaped like ``like``."""
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in like]), like)]


class SyncGrad(torch.autograd.Function):
    """Identity on tensors whose backward is the all-reduce MEAN of their gradients (one collective for all),
    differentiable again so double backward (``create_graph``) is global too."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, size: int, *tensors: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        """The tensors as they are (views), remembering the world size ``size``."""
        ctx.size = size
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """(None for size, then) each gradient averaged over the ranks."""
        mean = _all_reduce_sum(_pack(grads)) / ctx.size
        return (None, *_unpack(mean, grads))


@dataclass
class World:
    """This process's place among the ranks: ``rank`` in [0, size), ``local_rank`` on its node, the ``device``
    it computes on; ``active`` when a process group is up (collectives run)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device | None = None
    active: bool = False
    agreed: bool = field(default=False, compare=False)  # True once the ranks have met after their set-up

    @property
    def is_main(self) -> bool:
        """Whether this rank writes files and validates (rank 0)."""
        return self.rank == 0

    def shard(self, batch_size: int) -> tuple[int, int]:
        """Bounds [lo, hi) of this rank's contiguous slots in a global batch of ``batch_size`` (divisible by size)."""
        self.check_batch(batch_size)
        per = batch_size // self.size
        return self.rank * per, (self.rank + 1) * per

    def check_batch(self, batch_size: int) -> None:
        """ConfigError naming --batch-size unless it splits evenly over the ranks."""
        if batch_size % self.size:
            raise ConfigError(f"must be divisible by the number of processes ({self.size}), got {batch_size}",
                              option="batch_size")

    @property
    def reduce(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The losses' batch reduction: a differentiable all-reduce SUM, or None (local sums) on one process."""
        return _all_reduce_sum if self.active else None

    @property
    def sync(self) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None:
        """The bi-level engine's ``sync`` hook (:class:`SyncGrad` over a dict of lower tensors), or None."""
        if not self.active:
            return None
        size = self.size

        def sync(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            """``params`` as they are, with gradients averaged over the ranks in backward."""
            names = list(params)
            return dict(zip(names, SyncGrad.apply(size, *(params[k] for k in names))))

        return sync

    def mean_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Average ``tensors`` over the ranks in place (not differentiable; one collective for all)."""
        tensors = [t for t in tensors if t is not None]
        if not self.active or not tensors:
            return
        flat = _pack([t.detach() for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.size
        with torch.no_grad():
            for t, mean in zip(tensors, _unpack(flat, tensors)):
                t.copy_(mean)

    def mean_grads_(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Average the ``.grad`` of ``params`` over the ranks in place (rule 2)."""
        self.mean_([p.grad for p in params if p.grad is not None])

    def agree(self, problem: str | None) -> None:
        """Meet the other ranks after set-up; Fuse4SegError on every rank when any rank reports a ``problem``."""
        self.agreed = True
        if not self.active:
            return
        problems: list[str | None] = [None] * self.size
        dist.all_gather_object(problems, problem)
        failed = [(r, p) for r, p in enumerate(problems) if p is not None]
        if failed and problem is None:
            rank, text = failed[0]
            raise Fuse4SegError(f"process {rank} of {self.size} failed: {text}")

    def barrier(self) -> None:
        """Wait for every rank (no-op on one process)."""
        if self.active:
            dist.barrier()

    def close(self) -> None:
        """Tear the process group down (once; no-op on one process)."""
        if self.active and dist.is_initialized():
            dist.destroy_process_group()
            _TORN_DOWN.append(self.rank)
        self.active = False


#: Ranks whose process group this process tore down (World.close).
_TORN_DOWN: list[int] = []


def tore_down_a_group() -> bool:
    """Whether this process took part in a process group (now torn down): its interpreter should then end without
    the C++ teardown, where gloo's threads can abort a finished rank (std::terminate, exit -6) under load."""
    return bool(_TORN_DOWN)


def launched() -> bool:
    """Whether this process was started by torchrun (or anything setting RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _env_int(name: str, default: int | None = None) -> int:
    """Integer environment variable ``name`` (``default`` when unset); Fuse4SegError when malformed."""
    value = os.environ.get(name)
    if value is None and default is not None:
        return default
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise Fuse4SegError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def init_from_env(device: str, join_timeout: float = 300.0) -> World:
    """Join the process group torchrun describes (gloo for --device cpu, NCCL on cuda:LOCAL_RANK for cuda); a
    fresh :class:`World` of one process when not launched that way. A process whose peers have not all joined
    within ``join_timeout`` seconds stops with a one-line Fuse4SegError (:func:`_join`)."""
    if not launched():
        return World()
    rank, size, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < size:
        raise Fuse4SegError(f"RANK {rank} is outside [0, WORLD_SIZE {size})")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{device} asked for, but CUDA is not available on this machine", option="device")
        if device != "cuda":
            raise ConfigError(f"under torchrun give plain cuda (each process uses cuda:LOCAL_RANK), got {device}",
                              option="device")
        where, backend = torch.device("cuda", local), "nccl"
        torch.cuda.set_device(where)
    else:
        where, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        store = _join(rank, size, join_timeout)
        dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=TIMEOUT)
    return World(rank, size, local, where, active=True)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 (where C++ code logs) to /dev/null inside the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _join(rank: int, size: int, seconds: float) -> dist.Store:
    """Meet the other processes through torchrun's store (MASTER_ADDR:MASTER_PORT, the rendezvous ``env://``
    that init_process_group would do) within ``seconds``: every process counts itself in and waits until all
    ``size`` have. Returns the store as init_process_group would use it (prefix ``default_pg``, TIMEOUT);
    Fuse4SegError naming the rank, the address and the option when the peers do not all join in time."""
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    deadline = datetime.timedelta(seconds=seconds)
    key = f"fuse4seg/joined/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    try:
        with _quiet_stderr():  # c10d logs every failed connection attempt of a waiting client to fd 2
            store, _, _ = next(dist.rendezvous("env://", rank, size, timeout=deadline))
            if store.add(key, 1) == size:
                store.set(f"{key}/all", "1")
            store.wait([f"{key}/all"], deadline)
    except (RuntimeError, ValueError, OSError) as exc:  # torch's store errors: DistStoreError, DistNetworkError...
        raise Fuse4SegError(
            f"process RANK {rank} of WORLD_SIZE {size}: the other processes did not all join within {seconds:g} s "
            f"at {where} ({type(exc).__name__}); start all {size} (torchrun --nproc-per-node {size} ...) or give "
            "them longer with --join-timeout") from None
    store.set_timeout(TIMEOUT)
    return dist.PrefixStore("default_pg", store)
