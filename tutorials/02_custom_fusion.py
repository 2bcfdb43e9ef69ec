# %% [markdown]
# # 2. Your own fusion network, trained bi-level
#
# The fusion network F (the "leader") turns the sources into one image; a segmentation network S
# (the "follower") is trained on that image, and F receives hypergradients through S's training:
#
#     upper:  min_phi  L_fuse(F_phi(x), x) + lambda * L_seg(S_theta*(phi)(F_phi(x_val)), y_val)
#     lower:  theta*(phi) = argmin_theta  L_seg(S_theta(F_phi(x_tr)), y_tr)
#
# Any `nn.Module` mapping (N, C, H, W) sources in [0, 1] to an (N, 1, H, W) image in [0, 1] can be
# the leader. `fuse4seg.register_model` gives it a name; its constructor's arguments (each with a
# default) become its options. A fusion-loss term can be added the same way with
# `fuse4seg.register_fusion_loss`. (To make a network available to the command line, publish it as
# an entry point of the group `fuse4seg.models` in your package instead.)
#
# Sizes come from environment variables so the test suite can run it small: `TUTORIAL_DIR`,
# `TUTORIAL_CASES`, `TUTORIAL_SIZE`, `TUTORIAL_STEPS`.

# %%
import os
from pathlib import Path

import torch
from torch import nn

import fuse4seg

work = Path(os.environ.get("TUTORIAL_DIR", "tutorial_02"))
cases = int(os.environ.get("TUTORIAL_CASES", "6"))
size = int(os.environ.get("TUTORIAL_SIZE", "64"))
steps = int(os.environ.get("TUTORIAL_STEPS", "30"))
work.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## The network
#
# A per-pixel soft selection: a small CNN predicts one weight map per source (softmax over sources)
# and the fused image is the weighted sum, so it stays in [0, 1]. GroupNorm, not BatchNorm: the
# follower is unrolled functionally, and so may the leader be.

# %%
@fuse4seg.register_model("soft-select")
class SoftSelectFusion(nn.Module):
    """(N, in_channels, H, W) in [0, 1] -> (N, 1, H, W): a softmax-weighted sum of the sources."""

    kind = "fusion"

    def __init__(self, in_channels: int = 2, width: int = 8) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.GroupNorm(1, width), nn.GELU(),
                                  nn.Conv2d(width, in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.softmax(self.body(x), dim=1) * x).sum(dim=1, keepdim=True)


print(fuse4seg.list_models(dims=2))

# %% [markdown]
# A fusion-loss term of our own, weighed in through the config's `fusion_loss_weights` (its default
# weight 0 leaves every other configuration unchanged): keep the fused image's mean brightness near
# the sources' mean.

# %%
def brightness(fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """|mean fused - mean sources| per image, averaged over the batch."""
    return (fused.mean(dim=(1, 2, 3)) - sources.mean(dim=(1, 2, 3))).abs().mean()


fuse4seg.register_fusion_loss("brightness", brightness)

# %% [markdown]
# ## Data, configuration, training

# %%
release = fuse4seg.write_phantom_release(work / "release", cases=cases, scale=0.25, overwrite=True)
fuse4seg.build_benchmark(fuse4seg.BuildOptions(out=str(work / "package"), brats=str(release), size=size,
                                               slices_per_case=3, split=(0.5, 0.25, 0.25), overwrite=True),
                         progress=False)

# build_config resolves defaults < TOML file < overrides and checks every option, exactly as
# `fuse4seg train` does; the keys are the command line's flags without "--".
config = fuse4seg.build_config({
    "benchmark": str(work / "package"), "out": str(work / "run"), "overwrite": True, "progress": False,
    "mode": "bilevel", "fusion_model": "soft-select", "fusion_options": {"width": 8},
    "fusion_loss_weights": {"brightness": 1.0},
    "steps": steps, "inner_steps": 2, "batch_size": 4, "seg_options": {"width": 8, "depth": 2},
    "eval_every": max(steps // 2, 1), "eval_slices": 4,
})
summary = fuse4seg.train_run(config)
from fuse4seg.train.loop import format_train_summary

print(format_train_summary(summary))

# %% [markdown]
# ## Evaluation
#
# `evaluate_run` loads the run's best checkpoint (rebuilding `soft-select` through the registry, so
# the registration must have happened in this process), segments the test split and writes
# `run/eval` (metrics JSON, report, figures).

# %%
metrics = fuse4seg.evaluate_run(work / "run", max_slices=8)
print({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))})
print(sorted(p.name for p in (work / "run" / "eval").iterdir()))
