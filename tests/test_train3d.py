"""3-D training (``--dims 3``): N-D losses, the options, the patch sampler, every mode's step on patches, exact
resume, and build-benchmark --volumes -> train -> evaluate -> fuse end to end on phantom volumes."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import assert_same_weights, checkpoint_weights

from fuse4seg.cli import main
from fuse4seg.data.package.volumes import BraTSFuseVolumes
from fuse4seg.errors import ConfigError
from fuse4seg.losses import fusion_loss, segmentation_loss, soft_dice
from fuse4seg.runkit.batches import StepBatchSampler, item_seed
from fuse4seg.train.loop import train
from fuse4seg.train.patches import PatchView
from fuse4seg.train.resolve import build_config
from fuse4seg.train.run import resolve_config

TINY3D = {"dims": 3, "patch": "16,16,16", "seg_options": {"width": 4, "depth": 2},
          "fusion_options": {"width": 4, "layers": 2}, "batch_size": 2, "progress": False, "lr_lower": 0.01}


@pytest.fixture(scope="module")
def bench(phantom_release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 6-case phantom release built with --volumes, 2 slices per case (train 4 cases, val 1, test 1)."""
    from fuse4seg.data.build.builder import build_benchmark

    out = tmp_path_factory.mktemp("bench3d") / "b"
    build_benchmark(out, brats=phantom_release, slices_per_case=2, volumes=True, progress=False)
    return out


def options(bench: Path, out: Path, **extra: object) -> dict:
    """Tiny 3-D training options on ``bench`` writing to ``out``."""
    fusion = {} if extra.get("mode") in ("direct", "feature-fusion") else {"fusion_options": TINY3D["fusion_options"]}
    return {**{k: v for k, v in TINY3D.items() if k != "fusion_options"}, **fusion, "benchmark": str(bench),
            "out": str(out), **extra}


# ---- losses in N-D ---------------------------------------------------------------------------------


@pytest.mark.parametrize("region_based", [False, True])
def test_segmentation_loss_of_a_one_plane_volume_is_the_slice_loss(region_based: bool) -> None:
    """A (N, C, 1, H, W) volume scores as its (N, C, H, W) plane: Dice sums run over every axis but the channels."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 9, 11, generator=g)
    label = torch.randint(0, 4, (2, 9, 11), generator=g)
    flat = segmentation_loss(logits, label, region_based)
    torch.testing.assert_close(segmentation_loss(logits[:, :, None], label[:, None], region_based), flat)
    probs = torch.rand(2, 3, 5, 6, 7, generator=g)
    target = (torch.rand(2, 3, 5, 6, 7, generator=g) > 0.5).float()
    manual = (2 * (probs * target).sum((0, 2, 3, 4)) + 1) / (probs.sum((0, 2, 3, 4)) + target.sum((0, 2, 3, 4)) + 1)
    torch.testing.assert_close(soft_dice(probs, target), manual)


def test_segmentation_loss_reduce_hook_on_volumes() -> None:
    """Two shards of a volume batch, their sums added by a (simulated) all-reduce, give the whole batch's loss."""
    g = torch.Generator().manual_seed(1)
    logits, label = torch.randn(4, 4, 3, 6, 5, generator=g), torch.randint(0, 4, (4, 3, 6, 5), generator=g)
    whole = segmentation_loss(logits, label)
    other = {}

    def reduce(t: torch.Tensor) -> torch.Tensor:
        """Add the other shard's sums (computed first, without reduce hooks)."""
        return t + other["sums"]

    def sums(t: torch.Tensor) -> torch.Tensor:
        """Record this shard's sums and return them as they are."""
        other["sums"] = t
        return t

    segmentation_loss(logits[2:], label[2:], reduce=sums)
    torch.testing.assert_close(segmentation_loss(logits[:2], label[:2], reduce=reduce), whole)


def test_fusion_loss_on_volumes_is_slice_wise() -> None:
    """A (N, 1, D, H, W) volume's fusion loss equals the loss of its D planes folded into the batch; the reduce
    hook (one process: identity) keeps the value."""
    g = torch.Generator().manual_seed(2)
    fused, sources = torch.rand(2, 1, 3, 16, 16, generator=g), torch.rand(2, 2, 3, 16, 16, generator=g)
    total, parts = fusion_loss(fused, sources)
    flat_total, flat_parts = fusion_loss(fused.transpose(1, 2).reshape(6, 1, 16, 16),
                                         sources.transpose(1, 2).reshape(6, 2, 16, 16))
    assert torch.equal(total, flat_total) and parts.keys() == flat_parts.keys()
    torch.testing.assert_close(fusion_loss(fused, sources, reduce=lambda t: t)[0], total)


# ---- options ---------------------------------------------------------------------------------------


def test_options_of_3d_runs(phantom_release: Path, tmp_path: Path) -> None:
    """--patch and --foreground-fraction only with --dims 3; their checks; 2-D transforms refused in 3-D; a package
    without volumes refused naming --benchmark."""
    base = {"benchmark": "b", "out": "o"}
    with pytest.raises(ConfigError, match="only used with --dims 3"):
        build_config({**base, "patch": "16,16,16"}, strict=True)
    with pytest.raises(ConfigError, match="only used with --dims 3"):
        build_config({**base, "foreground_fraction": 0.3}, strict=True)
    with pytest.raises(ConfigError, match="patch"):
        build_config({**base, "dims": 3, "patch": "4,16,16"})
    with pytest.raises(ConfigError, match="patch"):
        build_config({**base, "dims": 3, "patch": "16,16"})
    with pytest.raises(ConfigError, match="foreground_fraction"):
        build_config({**base, "dims": 3, "foreground_fraction": 1.5})
    with pytest.raises(ConfigError, match="augment"):
        build_config({**base, "dims": 3, "augment": "light"})
    assert build_config({**base, "dims": 3, "patch": [8, 12, 16]}).patch == (8, 12, 16)
    from fuse4seg.data.build.builder import build_benchmark

    flat = build_benchmark(tmp_path / "flat", brats=phantom_release, slices_per_case=1, progress=False)["out"]
    with pytest.raises(ConfigError, match="benchmark.*build-benchmark --volumes"):
        train(build_config(options(Path(flat), tmp_path / "run", steps=1)))


# ---- the patch sampler -----------------------------------------------------------------------------


def test_patch_sampler(bench: Path) -> None:
    """Patches are a function of their key, equal read_patch at the drawn start, and centre on tumour voxels in
    the declared share of draws."""
    volumes = BraTSFuseVolumes(bench, "train", cache=True)
    view = PatchView(volumes, (16, 16, 16), 0.5)
    key = (1, item_seed(0, "fit", 3, 1))
    a, b = view[key], view[key]
    assert all(torch.equal(a[k], b[k]) for k in ("source", "fused", "label"))
    start = view.patch_start(*key)
    direct = volumes.read_patch(key[0], start.tolist(), (16, 16, 16))
    assert np.array_equal(a["start"], start)
    assert all(torch.equal(a[k], direct[k]) for k in ("source", "fused", "label"))
    assert a["source"].shape == (4, 16, 16, 16) and a["label"].shape == (16, 16, 16)
    # A sampler drives the same keys as the loop: slot j of step s has the item seed of (seed, step, slot).
    batch = next(iter(StepBatchSampler(range(len(view)), 2, 0, 3, 4, "fit", keyed=True)))
    assert [s for _, s in batch] == [item_seed(0, "fit", 3, j) for j in range(2)]

    def on_tumour(view: PatchView, seeds: range) -> float:
        """Share of draws (case 0) whose centre voxel is tumour."""
        label = volumes[0]["label"].numpy()
        centres = [tuple(view.patch_start(0, s) + 8) for s in seeds]
        return float(np.mean([label[c] > 0 for c in centres]))

    share = float((volumes[0]["label"] > 0).float().mean())
    assert 0 < share < 0.3
    assert on_tumour(PatchView(volumes, (16, 16, 16), 1.0), range(50)) == 1.0
    assert on_tumour(PatchView(volumes, (16, 16, 16), 0.0), range(400)) < share + 0.1
    half = on_tumour(view, range(400))  # 0.5 + 0.5 * share in expectation; 400 draws: sd < 0.025
    assert abs(half - (0.5 + 0.5 * share)) < 0.1


# ---- steps and resume ------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "extra"), [
    ("bilevel", {"hypergrad": "truncated", "truncate": 1}), ("bilevel", {"hypergrad": "first-order"}),
    ("bilevel", {"hypergrad": "finite-difference"}), ("bilevel", {"hypergrad": "implicit-cg", "cg_iters": 2}),
    ("bilevel", {"hypergrad": "implicit-neumann", "neumann_terms": 2}),
    ("bilevel", {"hypergrad": "checkpointed", "inner_steps": 3}), ("joint", {}), ("two-stage", {}),
    ("direct", {}), ("feature-fusion", {}),
])
def test_every_mode_steps_on_patches(bench: Path, tmp_path: Path, mode: str, extra: dict) -> None:
    """Each mode (bilevel with each hypergradient method) trains two steps on 16^3 patches and validates whole
    volumes (finite Dice in [0, 1] under the 2-D keys)."""
    summary = train(build_config(options(bench, tmp_path / "run", mode=mode, steps=2, **extra)))
    assert summary["steps"] == 2 and summary["skipped"] == 0 and summary["dims"] == 3
    assert set(summary["val"]) == {"dice_WT", "dice_TC", "dice_ET", "dice_mean"}
    assert all(0 <= v <= 1 for v in summary["val"].values())


def test_resume_is_exact_in_3d(bench: Path, tmp_path: Path) -> None:
    """--steps 2 then --resume --steps 4 gives the weights of --steps 4, bit for bit (bilevel, 16^3 patches)."""
    train(build_config(options(bench, tmp_path / "a", steps=4, eval_every=2)))
    train(build_config(options(bench, tmp_path / "b", steps=2, eval_every=2)))
    summary = train(resolve_config({"out": str(tmp_path / "b"), "resume": True, "steps": 4, "progress": False}))
    assert summary["steps"] == 4 and summary["steps_this_call"] == 2
    for name in ("last.pt", "best.pt"):
        assert_same_weights(checkpoint_weights(tmp_path / "a" / name), checkpoint_weights(tmp_path / "b" / name))


# ---- end to end ------------------------------------------------------------------------------------


def test_volumes_train_evaluate_fuse(phantom_release: Path, tmp_path: Path) -> None:
    """build-benchmark --volumes -> train --dims 3 -> evaluate -> fuse through the command line: per-case metrics
    and a report, and fused/seg volumes on the release grid with its affine and label scheme."""
    import json

    pkg, run, out = tmp_path / "pkg", tmp_path / "run", tmp_path / "fused"
    assert main(["build-benchmark", "--out", str(pkg), "--brats", str(phantom_release), "--volumes",
                 "--slices-per-case", "2"]) == 0
    assert main(["train", "--benchmark", str(pkg), "--out", str(run), "--dims", "3", "--patch", "16,16,16",
                 "--steps", "2", "--batch-size", "2", "--seg-width", "4", "--seg-depth", "2", "--fusion-width", "4",
                 "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["options"]["dims"] == 3
    assert main(["evaluate", "--run", str(run)]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["dims"] == 3 and metrics["cases"] == len(metrics["per_case"]) >= 1
    assert set(metrics["segmentation"]) == {"per_case"}
    assert all(0 <= metrics["segmentation"]["per_case"][r]["dice"] <= 1 for r in ("WT", "TC", "ET"))
    assert "whole volumes" in (run / "eval" / "report.md").read_text() and (run / "eval" / "gallery.png").is_file()
    case = max(p for p in phantom_release.iterdir() if p.is_dir())
    assert main(["fuse", "--run", str(run), "--case", str(case), "--out", str(out)]) == 0
    reference = nib.load(next(case.glob("*_seg.nii.gz")))
    seg, fused = nib.load(out / "seg.nii.gz"), nib.load(out / "fused.nii.gz")
    assert seg.shape == fused.shape == reference.shape
    assert np.allclose(seg.affine, reference.affine)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 4}  # BraTS 2021: ET is 4
    values = np.asarray(fused.dataobj)
    assert values.min() >= 0 and values.max() <= 1
