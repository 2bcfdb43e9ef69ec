"""The dataset card (``README.md``) of a BraTS-Fuse package: YAML front matter for dataset hubs and a Markdown
description of the build (:func:`dataset_card`), and the card with its Parquet section and ``configs:`` added
(:func:`card_with_parquet`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from fuse4seg.data.package.citation import BRATS_TERMS, package_version
from fuse4seg.data.package.schema import (
    CARD_NAME,
    FORMAT_VERSION,
    H5_NAME,
    PARQUET_DIR,
    SPLITS,
    VOLUME_CHUNK,
    VOLUMES_GROUP,
    card_file_lines,
)
from fuse4seg.errors import DataError
from fuse4seg.io import one_line

if TYPE_CHECKING:
    from fuse4seg.data.package.records import Column

#: The card section on the Parquet shards.
PARQUET_HEADING = "## Parquet records"
#: The card's statement that the HDF5 record sets are not loadable by mlcroissant (extended when Parquet is there).
HDF5_ONLY = "read `brats_fuse.h5` with h5py or `fuse4seg.data.BraTSFuse`."



def _size_category(n: int) -> str:
    """Hugging Face size_categories bucket for ``n`` examples."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return name
    return "100K<n<1M"


def _front_matter(meta: dict) -> dict:
    """The card's YAML front matter for the build summary ``meta`` (the keys dataset hubs read)."""
    total = sum(s["slices"] for s in meta["splits"].values())
    return {
        "pretty_name": "BraTS-Fuse",
        "license": "cc-by-4.0" if not meta["brats_derived"] else "other",
        **({"license_name": "brats-data-terms"} if meta["brats_derived"] else {}),
        "task_categories": ["image-segmentation", "image-to-image"],
        "tags": ["medical", "mri", "brain-tumor", "image-fusion", "brats"],
        "size_categories": [_size_category(total)],
        "source_datasets": ["BraTS"] if meta["brats_derived"] else ["synthetic (fuse4seg phantom, MNI152 ICBM 2009)"],
        # only SplitInfo's keys: load_dataset(DIR) refuses others (cases per split: the table below)
        "dataset_info": {"splits": [{"name": s, "num_examples": meta["splits"][s]["slices"]} for s in SPLITS]},
    }


def _licence(meta: dict) -> str:
    """The card's licence paragraph: the BraTS terms for a BraTS build, CC BY 4.0 (and the template's credit)
    for a phantom build."""
    return (f"{BRATS_TERMS} Cite the BraTS papers (CITATION.cff)."
            if meta["brats_derived"] else
            "CC BY 4.0. Synthetic data: anatomy from the MNI ICBM 2009 template (Copyright (C) 1993-2009 "
            "Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University).")


def dataset_card(meta: dict) -> str:
    """README.md dataset card (YAML front matter + Markdown) for the build summary ``meta``."""
    front = _front_matter(meta)
    rows = "\n".join(f"| {s} | {meta['splits'][s]['cases']} | {meta['splits'][s]['slices']} |" for s in SPLITS)
    licence = _licence(meta)
    files = "\n".join(card_file_lines(meta["attrs"]))
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# BraTS-Fuse built from {meta['source_dataset']}

Paired multi-modal brain-MRI slices for image-level fusion and tumour segmentation: for every
axial slice the four normalised source modalities, one fused image of
{' + '.join(meta['fusion_inputs'])} (fusion method `{meta['fusion_method']}`), and the tumour label map.
Splits are by patient: no case appears in two splits.

| split | cases | slices |
|---|---|---|
{rows}

Slices are {meta['height']} x {meta['width']} pixels (H = first voxel axis of the volume, W = second,
no rotation); label scheme: {meta['label_scheme']}.
Version {package_version(meta)} (HDF5 format {FORMAT_VERSION}), created {meta['created']} by {meta['builder_version']}.

{_build_text(meta)}{_volumes_text(meta)}
## Files

{files}
- `CITATION.cff`: how to cite (`fuse4seg cite DIR --format bibtex`).
- `croissant.json`: MLCommons Croissant 1.0 metadata with the sha256 of every file
  (`fuse4seg verify DIR` checks them).

## Intended use

Training and evaluating image-level fusion networks and segmentation networks on fused images
(Fuse4Seg), and comparing them with feature-level fusion, on identical slices and splits.

## Limits

2-D axial slices chosen for tumour content: not representative of whole volumes or of
tumour-free anatomy, so slice metrics are not BraTS volume metrics. The fused image is one
method's output, not ground truth. {'Phantom builds are synthetic and only for testing pipelines; '
'results on them say nothing about patients.' if not meta['brats_derived'] else 'Inherits the '
'selection biases and annotation noise of BraTS.'}
`croissant.json` describes the files and record sets and carries their hashes, but mlcroissant has
no HDF5 reader, so `mlcroissant.Dataset(...).records(...)` cannot load the records: {HDF5_ONLY}

## Licence

{licence}
"""


def _build_text(meta: dict) -> str:
    """The card's section on how the build ran: its command line, the slice rule, the crop, the cases left
    out and the texts."""
    return f"""## How it was built

```
{meta['command']}
```

Slice rule: per case, axial slices whose whole-tumour area is at least 25% of the case's largest
slice area are candidates; {meta['slices_per_case']} of them are kept, evenly spaced from the first to the last.
{'Each case was cropped to the square around its brain bounding box and resized to ' + str(meta['size']) +
 ' px (images bilinear, labels nearest).' if meta['size'] else 'Slices keep the volume size.'}
Cases without tumour (left out): {', '.join(meta['skipped_cases']) or 'none'}.
Texts: each slice's `text` describes it (regions and areas in mm², location, how the labels relate, the
modality each is most conspicuous on; rules in `fuse4seg/data/package/describe.py`, wording seeded by the build's seed){
', replaced by the supplied report where `--reports` gave one' if meta.get('reports') else ''}.
"""


def _volumes_text(meta: dict) -> str:
    """The card's paragraph on the volumes layout of a ``--volumes`` build (empty otherwise)."""
    if not meta.get("volumes"):
        return ""
    return f"""
Whole volumes (`--volumes`): every case above is also stored whole under `/{VOLUMES_GROUP}/<split>/<case_id>`
(the same cases and splits as the slices), cropped to the bounding box of its brain mask over all three
axes (no margin) at the release's voxel grid: `--size` is not applied to volumes. Arrays are (D, H, W) =
the box's z, x, y extents, so a plane `source[:, d]` is an axial slice in the slices' (x, y) order; the
attribute `box` places the crop in the original volume (`shape`, `affine`, `spacing` in mm). The fused
volume applies `{meta['fusion_method']}` to each axial plane of the cropped fusion inputs (the rules are
2-D; mean and max are voxelwise, while pyramid, wavelet and PCA fusion see the cropped plane and differ
from the fused slices near the box's edges). Chunks are {VOLUME_CHUNK}^3 voxel cubes per modality
(clipped to the volume), gzip level 1, for random patch reads (`fuse4seg.data.BraTSFuseVolumes.read_patch`).
"""


def _card_front_matter(card: str, where: Path) -> tuple[dict, str]:
    """(YAML front matter, Markdown body) of the dataset card text ``card``; DataError naming ``where`` if it has
    none."""
    parts = card.split("---\n", 2) if card.startswith("---\n") else []
    try:
        front = yaml.safe_load(parts[1]) if len(parts) == 3 else None
    except (yaml.YAMLError, RecursionError) as exc:
        raise DataError(f"{where}: front matter is not valid YAML ({one_line(exc)})") from None
    if not isinstance(front, dict):
        raise DataError(f"{where}: no YAML front matter (a mapping between --- lines)")
    return front, parts[2]


def card_with_parquet(card: str, shards: dict[str, list[str]], columns: Sequence[Column],
                      shape: tuple[int, int], num_bytes: dict[str, int], where: Path = Path(CARD_NAME)) -> str:
    """The dataset card ``card`` describing the Parquet ``shards`` ({split: file names}): ``configs:`` in the front
    matter (one data_files glob per split, for ``datasets.load_dataset``), its ``dataset_info`` splits with
    exactly the keys datasets reads (``num_bytes``: the split's records as Arrow bytes, datasets' measure),
    and the section PARQUET_HEADING (replaced when present) before Intended use; ``where`` names the card in errors."""
    front, body = _card_front_matter(card, where)
    info = front.get("dataset_info")
    if isinstance(info, dict) and isinstance(info.get("splits"), list):
        info["splits"] = [{"name": s.get("name"), "num_bytes": num_bytes.get(s.get("name"), 0),
                           "num_examples": s.get("num_examples")} if isinstance(s, dict) else s for s in info["splits"]]
    front["configs"] = [{"config_name": "default", "data_files": [
        {"split": split, "path": f"{PARQUET_DIR}/{split}-*.parquet"} for split in shards]}]
    listed = "\n".join(f"- `{c.name}`: {c.description.replace('(H, W)', f'({shape[0]}, {shape[1]})')}"
                        for c in columns)
    count = sum(len(names) for names in shards.values())
    section = f"""{PARQUET_HEADING}

`{PARQUET_DIR}/<split>-NNNNN-of-MMMMM.parquet` ({count} files, zstd; `fuse4seg export DIR --format parquet` or
`build-benchmark --parquet`): one row per slice of each split, in the order of `{H5_NAME}`, with the columns

{listed}

Images are arrays (Arrow fixed-size lists of {shape[0]} rows of {shape[1]} values), so the values are exactly
those of `{H5_NAME}`. croissant.json describes them as the record sets
{', '.join(f'`parquet-{s}`' for s in shards)} (mlcroissant reads them), and the `configs:` above let
`datasets.load_dataset(DIR)` load every split.

"""
    start = body.find(PARQUET_HEADING)
    if start >= 0:
        end = body.find("\n## ", start + len(PARQUET_HEADING))
        body = body[:start] + body[end + 1 if end >= 0 else len(body):]
    anchor = body.find("## Intended use")
    body = body[:anchor] + section + body[anchor:] if anchor >= 0 else body + "\n" + section
    if HDF5_ONLY in body and f"{HDF5_ONLY[:-1]}, or" not in body:
        body = body.replace(HDF5_ONLY, f"{HDF5_ONLY[:-1]}, or the Parquet record sets (`{PARQUET_DIR}/`).")
    return f"---\n{yaml.safe_dump(front, sort_keys=False).strip()}\n---\n{body}"
