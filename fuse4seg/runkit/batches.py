"""Deterministic batches: the slices of step s are a pure function of (seed, stream, s).

Nothing depends on a live iterator's hidden state, so a resumed run sees exactly the batches an
uninterrupted run would have seen. Under torchrun rank r of N reads the contiguous slots [rB/N, (r+1)B/N)
of each step's global batch of B, with the global slots' item seeds, so the shards together are the
single-process batch, augmentation included. Slice order within an epoch is a seeded permutation; epochs are
concatenated, so batches may straddle epoch boundaries.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fuse4seg.errors import ConfigError, DataError, Fuse4SegError

#: Separate random streams so that, e.g., held-out batches do not shift when the batch size changes.
STREAMS: dict[str, int] = {"fit": 1, "holdout": 2, "holdout_split": 3, "unlabelled": 4, "segmenter_reset": 5}


def _generator(seed: int, stream: str, epoch: int) -> torch.Generator:
    """A torch Generator seeded from (seed, stream, epoch) only."""
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + STREAMS[stream] * 7_919 + int(epoch) * 104_729) % (2**63 - 1))
    return g


def batch_indices(n: int, batch_size: int, seed: int, step: int, stream: str = "fit") -> list[int]:
    """Positions (into a pool of ``n`` items) of the batch at ``step``: ``batch_size`` ints in [0, n)."""
    if n < 1:
        raise DataError("cannot draw batches from an empty set of slices")
    first = step * batch_size
    positions = np.arange(first, first + batch_size)
    epochs = positions // n
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):  # at most ceil(batch_size / n) + 1 epochs, not per item
        perm = torch.randperm(n, generator=_generator(seed, stream, int(epoch))).numpy()
        sel = epochs == epoch
        out[sel] = perm[positions[sel] % n]
    return out.tolist()


def item_seed(seed: int, stream: str, step: int, slot: int) -> int:
    """The seed (uint32) of the random draws of one batch item: slot ``slot`` of step ``step`` in ``stream``."""
    return int(np.random.SeedSequence([int(seed), STREAMS[stream], int(step), int(slot)]).generate_state(1)[0])


class StepBatchSampler(Sampler[list]):
    """Batch sampler for steps ``start .. stop-1``; yields dataset indices taken from ``pool`` (with ``keyed``,
    (index, :func:`item_seed`) pairs, for a :class:`TrainingView`), the slots [lo, hi) of ``shard`` only."""

    def __init__(self, pool: Sequence[int], batch_size: int, seed: int, start: int, stop: int, stream: str,
                 keyed: bool = False, shard: tuple[int, int] | None = None) -> None:
        """``pool``: dataset indices to draw from; steps [start, stop); ``stream`` names the random stream;
        ``shard``: this process's slots of each global batch of ``batch_size`` (None: all)."""
        self.pool = np.asarray(pool, dtype=np.int64)
        self.batch_size, self.seed, self.start, self.stop, self.stream = batch_size, seed, start, stop, stream
        self.keyed = keyed
        self.lo, self.hi = shard or (0, batch_size)

    def __len__(self) -> int:
        """Number of batches (steps) this sampler yields."""
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        """Yield one list of dataset indices per step."""
        for step in range(self.start, self.stop):
            indices = self.pool[batch_indices(len(self.pool), self.batch_size, self.seed, step, self.stream)].tolist()
            if self.keyed:
                indices = [(index, item_seed(self.seed, self.stream, step, slot)) for slot, index in enumerate(indices)]
            yield indices[self.lo:self.hi]


class TrainingView(Dataset):
    """A split's slices as training sees them: augmented (``--augment``, images and labels jointly) and, with
    ``--degrade-inputs``, the degraded sources the networks see (``input``, and ``input_fused``: the
    benchmark's fusion rule re-applied to them) beside the clean ``source`` the fusion loss aims at.

    Items are read by (index, item seed) keys (:class:`StepBatchSampler` with ``keyed``; ``keyed_items``): every random
    draw is a function of (seed, stream, step, slot), in whichever loader worker it runs, so a resumed run
    sees exactly the batches an uninterrupted one would. Transforms are built from their specs in each
    worker (plain strings travel to workers).
    """

    def __init__(self, dataset: Dataset, augment: str, degrade: str, fusion_rule: tuple[str, list[int]] | None
                 ) -> None:
        """``fusion_rule``: (method, source channels) to re-fuse degraded inputs, or None when no one reads it."""
        self.dataset, self.augment_spec, self.degrade_spec, self.fusion_rule = dataset, augment, degrade, fusion_rule
        self._transforms: tuple | None = None

    #: Items are read by (index, item seed) keys (see :func:`step_loader`).
    keyed_items = True

    def __len__(self) -> int:
        """Number of slices of the wrapped split."""
        return len(self.dataset)

    def _built(self) -> tuple:
        """(augmentation or None, input degradation or None), built once per process."""
        if self._transforms is None:
            from fuse4seg.data.augment.specs import augmentation, input_degradation

            self._transforms = (augmentation(self.augment_spec), input_degradation(self.degrade_spec))
        return self._transforms

    def __getstate__(self) -> dict:
        """Pickle without the built transforms (workers rebuild them from the specs)."""
        return {**self.__dict__, "_transforms": None}

    def __getitem__(self, key: tuple[int, int]) -> dict:
        """The item at dataset index ``key[0]``, transformed with the draws of seed ``key[1]``."""
        from fuse4seg.data.augment.specs import seeded
        from fuse4seg.data.package.dataset import apply_joint

        index, seed = key
        item = self.dataset[int(index)]
        augment, degrade = self._built()
        if augment is not None:
            source, fused, label = apply_joint(lambda **data: seeded(augment, seed, **data), item["source"].numpy(),
                                               item["fused"].numpy(), item["label"].numpy().astype(np.uint8))
            item.update(source=torch.from_numpy(source), fused=torch.from_numpy(fused),
                        label=torch.from_numpy(label.astype(np.int64)))
        if degrade is not None:
            # A second, independent draw: the degradation does not move with the augmentation's choices.
            clean = item["source"].numpy()
            seen = seeded(degrade, (seed + 1) % 2**32, image=np.ascontiguousarray(clean.transpose(1, 2, 0)))["image"]
            seen = np.ascontiguousarray(np.asarray(seen, dtype=np.float32).transpose(2, 0, 1))
            item["input"] = torch.from_numpy(seen)
            if self.fusion_rule is not None:
                from fuse4seg.fusion import fuse_batch

                method, channels = self.fusion_rule
                item["input_fused"] = torch.from_numpy(fuse_batch(seen[None, channels], method))
        return item


def step_loader(
    dataset: Dataset, pool: Sequence[int], batch_size: int, seed: int, start: int, stop: int, stream: str,
    num_workers: int = 0, shard: tuple[int, int] | None = None,
) -> DataLoader:
    """DataLoader yielding the batches of steps [start, stop) from ``pool`` (order fixed by seed+step), of each
    only the slots [lo, hi) of ``shard`` (this process's part under torchrun; None: the whole batch).

    The loader gets its own generator (seeded from seed, stream and ``start``): starting an iterator
    draws a worker base seed from it, which would otherwise consume the global torch RNG at a point
    that differs between an uninterrupted and a resumed run. Its workers die with this process
    (:func:`fuse4seg.parallel.loader_worker_init`: no worker outlives a ``kill -9`` of the command).
    """
    from fuse4seg.parallel import loader_worker_init

    sampler = StepBatchSampler(pool, batch_size, seed, start, stop, stream, keyed=getattr(dataset, "keyed_items", False),
                               shard=shard)
    return OneLineLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers, persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None, generator=_generator(seed, stream, start),
        worker_init_fn=loader_worker_init() if num_workers > 0 else None,
    )


def worker_error(exc: Fuse4SegError) -> Fuse4SegError:
    """A fuse4seg error raised in a DataLoader worker, as the one line it is without workers: torch re-raises it
    in the main process as ``type(exc)(text)`` where ``text`` is "Caught DataError in DataLoader worker process 0.
    Original Traceback ...", ending in "fuse4seg.errors.DataError: THE LINE". Returns ``exc`` when it is no such
    message."""
    text = exc.message
    kind = type(exc)
    tail = f"\n{kind.__module__}.{kind.__qualname__}: "
    if not text.startswith(f"Caught {kind.__name__} ") or tail not in text:
        return exc
    return kind(" ".join(text.rsplit(tail, 1)[1].split()))


def one_line_batches(batches: Iterable) -> Iterator:
    """``batches`` (a DataLoader's), with a fuse4seg error from a worker re-raised as :func:`worker_error`."""
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except Fuse4SegError as exc:
            error = worker_error(exc)
            if error is exc:
                raise
            raise error from None
        yield batch


class OneLineLoader(DataLoader):
    """A DataLoader whose workers' fuse4seg errors reach the user as the same one line as without workers."""

    def __iter__(self) -> Iterator:  # type: ignore[override]
        """The batches, through :func:`one_line_batches`."""
        return one_line_batches(super().__iter__())


def split_by_case(case_ids: Sequence[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split item indices into (fit, held-out) by case: about ``fraction`` of the cases are held out.

    Every case lands wholly on one side. At least one case is held out and one kept; ConfigError
    when the split has fewer than two cases.
    """
    ids = np.asarray([str(c) for c in case_ids])
    cases = np.unique(ids)  # sorted, so the split does not depend on the file's slice order
    if len(cases) < 2:
        raise ConfigError(f"the train split has {len(cases)} case(s); at least 2 are needed to hold one out",
                          option="val_fraction")
    n_hold = min(len(cases) - 1, max(1, round(fraction * len(cases))))
    perm = torch.randperm(len(cases), generator=_generator(seed, "holdout_split", 0)).numpy()
    held = set(cases[perm[:n_hold]].tolist())
    is_held = np.isin(ids, list(held))
    return np.flatnonzero(~is_held).tolist(), np.flatnonzero(is_held).tolist()
