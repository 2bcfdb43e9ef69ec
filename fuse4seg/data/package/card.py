"""The BraTS-Fuse dataset package around ``brats_fuse.h5``: dataset card, citation, Croissant
metadata, and :func:`verify` / :func:`cite` for a built package directory.

Files: ``brats_fuse.h5`` (schema declared in :mod:`fuse4seg.data.package.schema`), ``README.md`` (dataset card
with YAML front matter), ``CITATION.cff``, ``croissant.json`` (MLCommons Croissant 1.0, with the
sha256 and size of every other file; written last), and optionally ``parquet/`` (the records as Parquet
shards, :mod:`fuse4seg.data.package.export`; :func:`write_parquet_metadata` adds them to the card and croissant.json).
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from fuse4seg.data.package.citation import BRATS_TERMS, cff_to_bibtex, citation_cff, package_version
from fuse4seg.data.package.h5format import has_text, has_volumes, open_validated, read_spacing, reading_data
from fuse4seg.data.package.h5volumes import scan_volumes
from fuse4seg.data.package.schema import (
    FORMAT_VERSION,
    H5_NAME,
    MAX_DESCRIPTION_BYTES,
    SPLITS,
    VOLUME_ATTRIBUTES,
    VOLUME_CHUNK,
    VOLUME_DATASETS,
    VOLUMES_GROUP,
    card_file_lines,
    split_datasets,
)
from fuse4seg.errors import ConfigError, DataError
from fuse4seg.io import MARKER, one_line, sha256_file

if TYPE_CHECKING:
    from fuse4seg.data.package.export import Column

CARD_NAME, CITATION_NAME, CROISSANT_NAME = "README.md", "CITATION.cff", "croissant.json"
CROISSANT_CONFORMS_TO = "http://mlcommons.org/croissant/1.0"
#: The Croissant 1.0 JSON-LD context (as published with the 1.0 specification).
CROISSANT_CONTEXT: dict[str, object] = {
    "@language": "en", "@vocab": "https://schema.org/", "citeAs": "cr:citeAs", "column": "cr:column",
    "conformsTo": "dct:conformsTo", "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/", "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"}, "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty", "examples": {"@id": "cr:examples", "@type": "@json"}, "extract": "cr:extract", "field": "cr:field",
    "fileProperty": "cr:fileProperty", "fileObject": "cr:fileObject", "fileSet": "cr:fileSet",
    "format": "cr:format", "includes": "cr:includes", "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath", "key": "cr:key", "md5": "cr:md5", "parentField": "cr:parentField",
    "path": "cr:path", "recordSet": "cr:recordSet", "references": "cr:references", "regex": "cr:regex",
    "repeated": "cr:repeated", "replace": "cr:replace", "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator", "source": "cr:source", "subField": "cr:subField", "transform": "cr:transform",
}
#: Bytes of image data ``verify`` reads at a time: memory stays bounded whatever the slice size (a
#: 4096 x 4096 slice is 256 MiB of source alone, so the block shrinks to one slice there).
SCAN_BLOCK_BYTES = 64 * 1024**2
#: Strings ``verify`` decodes at a time: SCAN_BLOCK_BYTES of the longest declared strings.
STRING_BLOCK = SCAN_BLOCK_BYTES // MAX_DESCRIPTION_BYTES
#: The package folder of the Parquet shards (:data:`fuse4seg.data.package.export.PARQUET_DIR`) and the card section on them.
PARQUET_DIR = "parquet"
PARQUET_HEADING = "## Parquet records"
#: Media types of the package files, by suffix.
ENCODING_FORMATS = {"h5": "application/x-hdf5", "md": "text/markdown", "cff": "application/x-yaml",
                    "parquet": "application/x-parquet"}
#: The card's statement that the HDF5 record sets are not loadable by mlcroissant (extended when Parquet is there).
HDF5_ONLY = "read `brats_fuse.h5` with h5py or `fuse4seg.data.BraTSFuse`."


def _short(value: object) -> str:
    """A bounded one-line rendering of a value read from a package file, for a message (reprlib caps depth
    and length, so a huge or deeply nested value neither floods the terminal nor recurses)."""
    return one_line(reprlib.repr(value))


def _size_category(n: int) -> str:
    """Hugging Face size_categories bucket for ``n`` examples."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return name
    return "100K<n<1M"


def dataset_card(meta: dict) -> str:
    """README.md dataset card (YAML front matter + Markdown) for the build summary ``meta``."""
    total = sum(s["slices"] for s in meta["splits"].values())
    front = {
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
    rows = "\n".join(f"| {s} | {meta['splits'][s]['cases']} | {meta['splits'][s]['slices']} |" for s in SPLITS)
    licence = (f"{BRATS_TERMS} Cite the BraTS papers (CITATION.cff)."
               if meta["brats_derived"] else
               "CC BY 4.0. Synthetic data: anatomy from the MNI ICBM 2009 template (Copyright (C) 1993-2009 "
               "Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University).")
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

## How it was built

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
{_volumes_text(meta)}
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


def croissant_metadata(directory: Path, meta: dict, files: list[str]) -> dict:
    """Croissant 1.0 JSON-LD for the package in ``directory`` listing ``files`` with their hashes."""
    distribution = [_file_object(name, directory / name) for name in files]
    record_sets = []
    for split in SPLITS:
        fields = [{
            "@type": "cr:Field", "@id": f"{split}/{spec.name}", "name": spec.name,
            "description": spec.record_description(), "dataType": spec.croissant,
            "source": {"fileObject": {"@id": H5_NAME}, "extract": {"column": f"/{split}/{spec.name}"}},
        } for spec in split_datasets(meta["attrs"])]
        record_sets.append({
            "@type": "cr:RecordSet", "@id": split, "name": split,
            "description": f"{meta['splits'][split]['slices']} slices of {meta['splits'][split]['cases']} cases; "
                           f"each field is the HDF5 dataset /{split}/<field> (one record per index N). "
                           f"Read it with h5py or fuse4seg.data.BraTSFuse: mlcroissant has no HDF5 reader.",
            "field": fields,
        })
    if meta.get("volumes"):
        record_sets += [_volume_record_set(split, meta) for split in SPLITS]
    cff = citation_cff(meta)
    return {
        "@context": CROISSANT_CONTEXT, "@type": "sc:Dataset", "conformsTo": CROISSANT_CONFORMS_TO,
        "name": "BraTS-Fuse", "description": cff["abstract"],
        "license": "https://creativecommons.org/licenses/by/4.0/" if not meta["brats_derived"]
        else "BraTS data terms of the source release (derived data; see README.md)",
        "version": package_version(meta), "datePublished": meta["created"],
        "citeAs": cff_to_bibtex(cff), "keywords": cff["keywords"],
        "creator": {"@type": "sc:Organization", "name": "fuse4seg contributors"},
        "distribution": distribution, "recordSet": record_sets,
    }


def _file_object(name: str, file: Path) -> dict:
    """The Croissant FileObject of the package file ``name`` (a relative path) whose bytes are in ``file``."""
    return {"@type": "cr:FileObject", "@id": name, "name": name, "contentUrl": name,
            "encodingFormat": ENCODING_FORMATS[name.rsplit(".", 1)[-1]],
            "contentSize": f"{file.stat().st_size} B", "sha256": sha256_file(file)}


def _volume_record_set(split: str, meta: dict) -> dict:
    """The Croissant RecordSet of one split's volumes: one record per case group, one field per dataset and
    attribute (their shapes in the descriptions)."""
    base = f"/{VOLUMES_GROUP}/{split}/*"
    fields = [{
        "@type": "cr:Field", "@id": f"volumes-{split}/case_id", "name": "case_id", "dataType": "sc:Text",
        "description": "patient / case identifier: the name of the case group",
        "source": {"fileObject": {"@id": H5_NAME}, "extract": {"column": base}},
    }]
    fields += [{
        "@type": "cr:Field", "@id": f"volumes-{split}/{spec.name}", "name": spec.name,
        "description": spec.record_description(), "dataType": spec.croissant,
        "source": {"fileObject": {"@id": H5_NAME}, "extract": {"column": f"{base}/{spec.name}"}},
    } for spec in VOLUME_DATASETS]
    fields += [{
        "@type": "cr:Field", "@id": f"volumes-{split}/{spec.name}", "name": spec.name,
        "description": f"attribute {spec.type_text()}: {spec.description}",
        "dataType": "sc:Integer" if spec.dtype.startswith("int") else "sc:Float",
        "source": {"fileObject": {"@id": H5_NAME}, "extract": {"column": f"{base}@{spec.name}"}},
    } for spec in VOLUME_ATTRIBUTES]
    return {
        "@type": "cr:RecordSet", "@id": f"volumes-{split}", "name": f"volumes-{split}",
        "description": f"the whole brain-box volumes of the {meta['splits'][split]['cases']} cases of {split}; each "
                       f"record is the HDF5 group {base} (datasets and attributes). Read it with h5py or "
                       "fuse4seg.data.BraTSFuseVolumes: mlcroissant has no HDF5 reader.",
        "field": fields,
    }


def write_package_files(directory: Path, meta: dict) -> None:
    """Write README.md, CITATION.cff and then croissant.json (hashing the others) into ``directory``."""
    directory = Path(directory)
    (directory / CARD_NAME).write_text(dataset_card(meta), encoding="utf-8")
    (directory / CITATION_NAME).write_text(
        yaml.safe_dump(citation_cff(meta), sort_keys=False, allow_unicode=True, width=100), encoding="utf-8")
    croissant = croissant_metadata(directory, meta, [H5_NAME, CARD_NAME, CITATION_NAME])
    (directory / CROISSANT_NAME).write_text(json.dumps(croissant, indent=2) + "\n", encoding="utf-8")


def _parquet_record_set(split: str, columns: Sequence[Column], shape: tuple[int, int], rows: int) -> dict:
    """The Croissant RecordSet ``parquet-<split>`` over the FileSet of the split's shards: one field per column."""
    fields = [{
        "@type": "cr:Field", "@id": f"parquet-{split}/{c.name}", "name": c.name,
        "description": c.description.replace("(H, W)", f"({shape[0]}, {shape[1]})"), "dataType": c.croissant,
        **({"repeated": True} if c.repeated else {}),
        "source": {"fileSet": {"@id": f"parquet-files-{split}"}, "extract": {"column": c.name}},
    } for c in columns]
    return {
        "@type": "cr:RecordSet", "@id": f"parquet-{split}", "name": f"parquet-{split}",
        "description": f"the {rows} slices of /{split} as Parquet records (one row per slice, in the HDF5 order; "
                       f"images are {shape[0]} x {shape[1]} nested lists of their exact float32 / uint8 values): "
                       "mlcroissant, datasets and pandas read them.",
        "field": fields,
    }


def _is_parquet_entry(entry: object) -> bool:
    """Whether a croissant.json distribution entry or record set describes the Parquet shards."""
    return isinstance(entry, dict) and (str(entry.get("contentUrl", "")).startswith(f"{PARQUET_DIR}/")
                                        or str(entry.get("@id", "")).startswith("parquet-"))


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


def write_parquet_metadata(directory: Path, staged: Path, shards: dict[str, list[str]], columns: Sequence[Column],
                           counts: dict[str, int], num_bytes: dict[str, int], card_out: Path,
                           croissant_out: Path) -> None:
    """Write the card and croissant.json of the package ``directory`` with its Parquet ``shards`` (written to
    ``staged``, the folder that becomes ``directory/parquet``; ``counts``: rows per split, "height" and "width"
    in pixels; ``num_bytes``: Arrow bytes per split) to ``card_out`` and ``croissant_out``: the card by
    :func:`card_with_parquet`, croissant.json with the shards' FileObjects (sha256 and size), a FileSet and a
    RecordSet ``parquet-<split>`` per split (replacing earlier Parquet entries) and the card's new hash."""
    shape = (counts["height"], counts["width"])
    card = card_with_parquet((directory / CARD_NAME).read_text(encoding="utf-8"), shards, columns, shape, num_bytes,
                             directory / CARD_NAME)
    card_out.write_text(card, encoding="utf-8")
    metadata = json.loads((directory / CROISSANT_NAME).read_text(encoding="utf-8"))
    distribution = [d for d in metadata["distribution"] if not _is_parquet_entry(d)]
    for entry in distribution:
        if entry.get("contentUrl") == CARD_NAME:
            entry.update({k: v for k, v in _file_object(CARD_NAME, card_out).items() if k in ("contentSize", "sha256")})
    distribution += [_file_object(f"{PARQUET_DIR}/{name}", staged / name) for split in shards for name in shards[split]]
    distribution += [{"@type": "cr:FileSet", "@id": f"parquet-files-{split}", "name": f"parquet-files-{split}",
                      "description": f"the Parquet shards of the {split} split",
                      "encodingFormat": ENCODING_FORMATS["parquet"], "includes": f"{PARQUET_DIR}/{split}-*.parquet"}
                     for split in shards]
    metadata["distribution"] = distribution
    metadata["recordSet"] = [r for r in metadata.get("recordSet", []) if not _is_parquet_entry(r)] + [
        _parquet_record_set(split, columns, shape, counts[split]) for split in shards]
    croissant_out.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")


def cite(directory: str | Path, format: str = "bibtex") -> str:
    """The package's citation as BibTeX (dataset + references) or as the CITATION.cff text."""
    path = Path(directory) / CITATION_NAME
    if format not in ("bibtex", "cff"):
        raise ConfigError(f"{format!r}: expected bibtex or cff", option="format")
    if not path.is_file():
        raise DataError(f"{path}: missing (not a BraTS-Fuse package directory?)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a valid CITATION.cff (not UTF-8 text: {one_line(exc)})") from None
    if format == "cff":
        return text
    try:
        cff = yaml.safe_load(text)
        if not isinstance(cff, dict):
            raise TypeError(f"expected a YAML mapping at the top level, found {type(cff).__name__}")
        return cff_to_bibtex(cff)
    # The file is data: any malformed structure shows up as one of these while rendering it (RecursionError:
    # deeply nested YAML, which PyYAML composes recursively).
    except (yaml.YAMLError, KeyError, TypeError, IndexError, AttributeError, ValueError, RecursionError) as exc:
        raise DataError(f"{path}: not a valid CITATION.cff ({type(exc).__name__}: {one_line(exc)})") from None


def _package_entries(directory: Path) -> list[str]:
    """Relative paths of the files under ``directory`` (and of its empty folders, with a trailing /), fuse4seg's
    output markers aside; links are entries, never followed."""
    entries = []
    for path in directory.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                entries.append(path.relative_to(directory).as_posix() + "/")
        elif path.name != MARKER:
            entries.append(path.relative_to(directory).as_posix())
    return entries


def _in_parquet(name: str) -> bool:
    """Whether a package path lies in the Parquet folder or is an export's temporary sibling or lock of it."""
    return name.startswith((f"{PARQUET_DIR}/", f".{PARQUET_DIR}."))


def _check_files(directory: Path, parquet: bool = True) -> list[str]:
    """Re-hash every file listed in croissant.json; DataError on a missing, changed or unlisted file (with
    ``parquet`` False, the Parquet folder and its entries are left out: an export is about to replace them)."""
    path = directory / CROISSANT_NAME
    if not path.is_file():
        raise DataError(f"{path}: missing (not a BraTS-Fuse package directory?)")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # JSON syntax and non-UTF-8 bytes (UnicodeDecodeError) alike
        raise DataError(f"{path}: not valid Croissant JSON ({one_line(exc)})") from None
    except RecursionError:  # the decoder recurses per nesting level; a crafted file can nest 10**5 deep
        raise DataError(f"{path}: not valid Croissant JSON (nested too deeply)") from None
    distribution = metadata.get("distribution") if isinstance(metadata, dict) else None
    if not isinstance(distribution, list):
        raise DataError(f"{path}: not valid Croissant JSON (expected an object with a \"distribution\" list)")
    for i, entry in enumerate(distribution):
        if not isinstance(entry, dict):
            raise DataError(f"{path}: distribution[{i}] is {type(entry).__name__} {_short(entry)}, not an object")
    objects = [d for d in distribution if d.get("@type") == "cr:FileObject"
               and (parquet or not _in_parquet(str(d.get("contentUrl", ""))))]
    listed = []
    for entry in objects:
        name = entry.get("contentUrl", "")
        if not isinstance(name, str) or "\0" in name:
            raise DataError(f"{path}: file entry contentUrl {_short(name)} is not a file name")
        file = directory / name
        if not name or Path(name).is_absolute() or ".." in Path(name).parts or not Path(name).name:
            raise DataError(f"{path}: file entry {name!r} is not a relative path inside the package")
        if not file.is_file():
            raise DataError(f"{file}: listed in croissant.json but missing")
        size = f"{file.stat().st_size} B"
        if entry.get("contentSize") != size:
            raise DataError(f"{file}: size {size} differs from croissant.json ({_short(entry.get('contentSize'))})")
        if entry.get("sha256") != sha256_file(file):
            raise DataError(f"{file}: sha256 differs from croissant.json (file modified or corrupt)")
        listed.append(name)
    unlisted = sorted(name for name in _package_entries(directory) if name not in {*listed, CROISSANT_NAME}
                      and (parquet or not _in_parquet(name)))
    if unlisted:
        raise DataError(f"{directory}: file(s) not listed in croissant.json: {', '.join(unlisted)}")
    if H5_NAME not in listed:
        raise DataError(f"{path}: does not list {H5_NAME}")
    return listed


def _check_values(h5: object, path: Path, split: str) -> set[str]:
    """Scan one split in blocks of at most SCAN_BLOCK_BYTES per dataset: sources/fused finite in [0, 1],
    labels in {0..3}, spacing finite and > 0, case ids and texts UTF-8; returns case ids. The validated header bounds the work
    (MAX_SLICES, MAX_SLICE_SIDE, every chunk stored)."""
    group = h5[split]
    n = group["source"].shape[0]
    block = max(1, SCAN_BLOCK_BYTES // (int(np.prod(group["source"].shape[1:])) * 4))  # source: the largest
    for start in range(0, n, block):
        stop = min(n, start + block)
        for name in ("source", "fused"):
            with reading_data(path, f"/{split}/{name}[{start}:{stop}]"):
                values = group[name][start:stop]
            if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
                raise DataError(f"{path}: /{split}/{name}[{start}:{stop}] has values outside [0, 1] or NaN/Inf")
        with reading_data(path, f"/{split}/label[{start}:{stop}]"):
            labels = group["label"][start:stop]
        if labels.max(initial=0) > 3:
            raise DataError(f"{path}: /{split}/label[{start}:{stop}] has label {int(labels.max())} not in {{0,1,2,3}}")
    with reading_data(path, f"/{split}/slice_index"):
        slice_index = group["slice_index"][:]
    if n and slice_index.min() < 0:
        raise DataError(f"{path}: /{split}/slice_index has negative values")
    read_spacing(h5, split, path)  # finite and > 0
    if "text" in group:  # present exactly when announced (validator); each block must decode
        for _block in _string_blocks(group, "text", path, split):
            pass
    return {value for block in _string_blocks(group, "case_id", path, split) for value in block}


def _string_blocks(group: object, name: str, path: Path, split: str) -> Iterator[list[str]]:
    """The UTF-8 strings of ``/<split>/<name>`` in blocks of STRING_BLOCK (each string's length is bounded by
    the validator, so a block is at most STRING_BLOCK x MAX_DESCRIPTION_BYTES); DataError naming the
    dataset and block of a string that is not UTF-8."""
    dataset = group[name]
    for start in range(0, dataset.shape[0], STRING_BLOCK):
        stop = min(dataset.shape[0], start + STRING_BLOCK)
        with reading_data(path, f"/{split}/{name}[{start}:{stop}]"):
            raw = dataset[start:stop]
        try:
            yield [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in raw]
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: /{split}/{name} holds a string that is not UTF-8 (among [{start}:{stop}]: "
                            f"{one_line(exc)})") from None


def verify(directory: str | Path, parquet: bool = True) -> dict:
    """Check a package: file hashes and sizes against croissant.json, the HDF5 schema (dtypes, shapes,
    attributes), value ranges, that no case is in two splits, with volumes, that each split's volumes
    are exactly its slices' cases, and with Parquet shards, their schema and row counts
    (:func:`fuse4seg.data.package.export.check_parquet`; ``parquet`` False leaves the Parquet folder out). DataError on
    the first problem; returns {"files": [...], "splits": {split: {"cases", "slices"}}, "volumes": {split: cases}
    or None, "parquet": {split: records} or None} when everything holds."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such package directory")
    files = _check_files(directory, parquet)
    path = directory / H5_NAME
    h5, counts = open_validated(path)  # also checks the root attributes' types and values
    with h5:  # a corrupt chunk is a DataError naming it (the hashes only vouch for what croissant.json says)
        text = has_text(h5)
        cases = {split: _check_values(h5, path, split) for split in SPLITS}
        volumes = {split: scan_volumes(h5, path, split, SCAN_BLOCK_BYTES) for split in SPLITS} \
            if has_volumes(h5) else None
    for split, ids in (volumes or {}).items():
        if set(ids) != cases[split]:
            odd = min(set(ids) ^ cases[split])
            raise DataError(f"{path}: /{VOLUMES_GROUP}/{split} and /{split} hold different cases (first: {_short(odd)}); "
                            "the volumes must be the split's cases")
    for i, first in enumerate(SPLITS):
        for second in SPLITS[i + 1:]:
            shared = sorted(cases[first] & cases[second])
            if shared:
                raise DataError(f"{path}: case {shared[0]} is in both {first} and {second} "
                                f"({len(shared)} shared case(s)); splits must be by patient")
    shards = [name for name in files if _in_parquet(name)]
    records = None
    if shards:
        from fuse4seg.data.package.export import check_parquet

        records = check_parquet(directory, shards, counts, text)
    return {"files": files, "splits": {s: {"cases": len(cases[s]), "slices": counts[s]} for s in SPLITS},
            "volumes": None if volumes is None else {s: len(volumes[s]) for s in SPLITS}, "parquet": records}
