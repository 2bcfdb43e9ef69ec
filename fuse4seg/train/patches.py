"""3-D training data (``--dims 3``): patches of a split's stored volumes, drawn deterministically per item key.

The patch of slot j at step s is a function of (seed, step, slot) only: the :class:`PatchView`'s items are keyed
by (case index, item seed) like :class:`~fuse4seg.runkit.batches.TrainingView`'s (``StepBatchSampler`` with
``keyed``), and the seed alone decides where the patch lies, in whichever loader worker it is read. Pools,
hold-out split and batch order are the 2-D ones over cases instead of slices (fuse4seg.runkit.batches).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from torch.utils.data import Dataset

from fuse4seg.data.package.volumes import BraTSFuseVolumes
from fuse4seg.errors import ConfigError

if TYPE_CHECKING:
    from fuse4seg.runkit.benchmark import BenchmarkInfo
    from fuse4seg.train.config import TrainConfig


class PatchView(Dataset):
    """Training patches of ``volumes``: item (case index, seed) -> {"source": (4, d, h, w), "fused": (1, d, h, w)
    float32, "label": (d, h, w) int64, "case_id", "start": (3,) int64}, the box of ``patch`` voxels at
    :meth:`patch_start` read with ``read_patch`` (zero-padded where it leaves the volume).

    With probability ``foreground_fraction`` the patch is centred on a uniformly drawn tumour voxel (label > 0),
    else on a uniformly drawn voxel of the volume (also for a case without tumour).
    """

    #: Items are read by (index, item seed) keys (see fuse4seg.runkit.batches.step_loader).
    keyed_items = True

    def __init__(self, volumes: BraTSFuseVolumes, patch: tuple[int, ...], foreground_fraction: float) -> None:
        """``patch``: (d, h, w) voxels; ``foreground_fraction`` in [0, 1]."""
        self.volumes, self.patch, self.foreground_fraction = volumes, tuple(patch), float(foreground_fraction)
        # Flat indices (int32: volumes hold at most 512^3 voxels) of each case's tumour voxels, found on first use
        # in each process: reading a label volume per draw would cost a whole-case read per patch.
        self._tumour: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        """Number of cases of the split."""
        return len(self.volumes)

    def tumour_voxels(self, index: int) -> np.ndarray:
        """Flat indices (int32) into the (D, H, W) grid of case ``index``'s voxels with label > 0."""
        if index not in self._tumour:
            label = self.volumes[index]["label"].numpy()
            self._tumour[index] = np.flatnonzero(label.reshape(-1) > 0).astype(np.int32)
        return self._tumour[index]

    def patch_start(self, index: int, seed: int) -> np.ndarray:
        """(3,) int64 start (d, h, w; may be negative) of the patch of case ``index`` drawn with ``seed``: its
        centre voxel minus half the patch."""
        rng = np.random.default_rng(seed)
        dims = self.volumes.dims[index]
        tumour = self.tumour_voxels(index) if self.foreground_fraction > 0 else np.empty(0, np.int32)
        # Both draws are made whatever the choice, so one key's draws never depend on another's data.
        on_tumour, position = rng.random() < self.foreground_fraction, rng.random()
        if on_tumour and tumour.size:
            centre = np.unravel_index(int(tumour[min(int(position * tumour.size), tumour.size - 1)]), dims)
        else:
            centre = np.unravel_index(min(int(position * np.prod(dims)), int(np.prod(dims)) - 1), dims)
        return np.asarray(centre, dtype=np.int64) - np.asarray(self.patch, dtype=np.int64) // 2

    def __getitem__(self, key: tuple[int, int]) -> dict:
        """The patch of case ``key[0]`` drawn with seed ``key[1]``."""
        index, seed = int(key[0]), int(key[1])
        item = self.volumes.read_patch(index, self.patch_start(index, seed).tolist(), self.patch)
        return {k: item[k] for k in ("source", "fused", "label", "case_id", "start")}


def open_volumes(config: TrainConfig, info: BenchmarkInfo) -> tuple[PatchView, BraTSFuseVolumes | None]:
    """(patch view of the train volumes, val volumes or None without a val split); ConfigError naming --benchmark
    when the package holds no volumes."""
    if not info.volumes:
        raise ConfigError(f"{info.path.parent} holds no volumes, which --dims 3 trains on; rebuild with "
                          "build-benchmark --volumes", option="benchmark")
    train = BraTSFuseVolumes(info.path, "train", cache=config.cache)
    val = BraTSFuseVolumes(info.path, "val", cache=config.cache) if info.counts["val"] else None
    return PatchView(train, config.patch, config.foreground_fraction), val
