# %% [markdown]
# # 1. The BraTS-Fuse package in Python
#
# A BraTS-Fuse package is a folder: `brats_fuse.h5` (the records), a dataset card (`README.md`),
# `CITATION.cff` and `croissant.json`. This tutorial builds a small one from a synthetic (phantom)
# BraTS release, reads it as a torch Dataset, exports its records to Parquet and reads those with
# pandas, Hugging Face `datasets` and `mlcroissant`.
#
# Everything runs offline on a CPU in seconds. Sizes come from environment variables so the test
# suite can run it small: `TUTORIAL_DIR` (working folder), `TUTORIAL_CASES`, `TUTORIAL_SIZE`.

# %%
import os
from pathlib import Path

import fuse4seg

work = Path(os.environ.get("TUTORIAL_DIR", "tutorial_01"))
cases = int(os.environ.get("TUTORIAL_CASES", "6"))
size = int(os.environ.get("TUTORIAL_SIZE", "64"))
work.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## Build a package
#
# `write_phantom_release` writes phantom cases in the real BraTS 2021 layout (replace it with the
# path of a BraTS release you have); `build_benchmark` takes the same options as
# `fuse4seg build-benchmark`, declared once in `BuildOptions`.

# %%
release = fuse4seg.write_phantom_release(work / "release", cases=cases, scale=0.25, overwrite=True)
options = fuse4seg.BuildOptions(out=str(work / "package"), brats=str(release), size=size, slices_per_case=3,
                                split=(0.5, 0.25, 0.25), overwrite=True)
summary = fuse4seg.build_benchmark(options, progress=False)
package = Path(options.out)
print({split: summary["splits"][split]["slices"] for split in ("train", "val", "test")})
print(fuse4seg.verify(package)["splits"])

# %% [markdown]
# ## A torch Dataset
#
# `BraTSFuse(package, split)` gives one dict per slice: `source` (C, H, W) in [0, 1], `fused`
# (1, H, W), `label` (H, W) with canonical labels 0 background, 1 NCR, 2 ED, 3 ET, and the slice's
# `case_id` and `slice_index`. `modalities` picks source channels.

# %%
import torch

from fuse4seg.data import BraTSFuse

train = BraTSFuse(package, "train", modalities=["t1ce", "flair"])
item = train[0]
print(len(train), {k: tuple(v.shape) if torch.is_tensor(v) else v for k, v in item.items()})
loader = torch.utils.data.DataLoader(train, batch_size=4, shuffle=True)
batch = next(iter(loader))
print("batch of sources:", tuple(batch["source"].shape))

# %% [markdown]
# ## Parquet: pandas, Hugging Face datasets, mlcroissant
#
# `export(package, "parquet")` (the command `fuse4seg export PACKAGE --format parquet`) writes the
# records as Parquet shards under `parquet/`, adds the record sets `parquet-<split>` to
# `croissant.json` and `configs:` to the card, so generic tools read the package.

# %%
fuse4seg.export(package, "parquet", overwrite=True)

import pandas as pd

frame = pd.read_parquet(package / "parquet" / "train-00000-of-00001.parquet")
print(frame[["index", "case_id", "slice_index"]].head())
per_case = frame.groupby("case_id").size()
print("slices per case:", per_case.to_dict())

# %%
import datasets
import numpy as np

hub = datasets.load_dataset(str(package), cache_dir=str(work / "hf_cache"))  # the card's configs, offline
print(hub)
fused = np.asarray(hub["train"][0]["fused"], dtype=np.float32)
assert np.array_equal(fused, item["fused"][0].numpy())  # the same slice, bit for bit

# %%
import warnings

import mlcroissant

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    croissant = mlcroissant.Dataset(jsonld=package / "croissant.json")
    names = [record_set.name for record_set in croissant.metadata.record_sets]
    counts = {name: sum(1 for _ in croissant.records(record_set=name)) for name in names}
print(counts)
assert counts == {f"parquet-{s}": summary["splits"][s]["slices"] for s in ("train", "val", "test")}
