"""The MLCommons Croissant 1.0 metadata (``croissant.json``) of a BraTS-Fuse package: its files with their sha256
and size (the HDF5 file's layout in its description), and record sets over the Parquet shards, the only ones
mlcroissant can read. Writes a package's
metadata files: the card, CITATION.cff and then croissant.json, which hashes the others
(:func:`write_package_files`), and their Parquet additions (:func:`write_parquet_metadata`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from fuse4seg.data.package.card import card_with_parquet, dataset_card
from fuse4seg.data.package.citation import cff_to_bibtex, citation_cff, package_version
from fuse4seg.data.package.schema import (
    CARD_NAME,
    CITATION_NAME,
    CROISSANT_NAME,
    H5_NAME,
    PARQUET_DIR,
    SPLITS,
    VOLUME_ATTRIBUTES,
    VOLUME_DATASETS,
    VOLUMES_GROUP,
    split_datasets,
)
from fuse4seg.io import sha256_file

if TYPE_CHECKING:
    from fuse4seg.data.package.records import Column

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
#: Media types of the package files, by suffix.
ENCODING_FORMATS = {"h5": "application/x-hdf5", "md": "text/markdown", "cff": "application/x-yaml",
                    "parquet": "application/x-parquet"}

def croissant_metadata(directory: Path, meta: dict, files: list[str]) -> dict:
    """Croissant 1.0 JSON-LD for the package in ``directory`` listing ``files`` with their hashes.

    Every RecordSet declared is one mlcroissant can iterate: the HDF5 file is a FileObject whose description
    states its layout (mlcroissant has no HDF5 reader, so record sets sourced from it could not be read), and
    the record sets are the Parquet ones ``parquet-<split>`` that ``fuse4seg export --format parquet`` (or
    ``build-benchmark --parquet``) adds with :func:`write_parquet_metadata`; a package without them declares none.
    """
    distribution = [_file_object(name, directory / name) for name in files]
    for entry in distribution:
        if entry["@id"] == H5_NAME:
            entry["description"] = hdf5_description(meta)
    cff = citation_cff(meta)
    return {
        "@context": CROISSANT_CONTEXT, "@type": "sc:Dataset", "conformsTo": CROISSANT_CONFORMS_TO,
        "name": "BraTS-Fuse", "description": cff["abstract"],
        "license": "https://creativecommons.org/licenses/by/4.0/" if not meta["brats_derived"]
        else "BraTS data terms of the source release (derived data; see README.md)",
        "version": package_version(meta), "datePublished": meta["created"],
        "citeAs": cff_to_bibtex(cff), "keywords": cff["keywords"],
        "creator": {"@type": "sc:Organization", "name": "fuse4seg contributors"},
        "distribution": distribution, "recordSet": [],
    }


def hdf5_description(meta: dict) -> str:
    """The layout of ``brats_fuse.h5`` in words (the description of its FileObject): per split, its slice
    count and datasets (one record per index N) with their declared types; with volumes, their groups."""
    fields = " | ".join(f"{spec.name}: {spec.record_description()}" for spec in split_datasets(meta["attrs"]))
    splits = ", ".join(f"/{s} ({meta['splits'][s]['slices']} slices of {meta['splits'][s]['cases']} cases)"
                       for s in SPLITS)
    text = (f"HDF5 file of the records: groups {splits}; each holds the datasets <split>/<field>, one record per "
            f"index N along their first axis: {fields}.")
    if meta.get("volumes"):
        volume_fields = " | ".join([*(f"{spec.name}: {spec.record_description()}" for spec in VOLUME_DATASETS),
                                   *(f"attribute {spec.name}: {spec.type_text()}: {spec.description}"
                                     for spec in VOLUME_ATTRIBUTES)])
        text += (f" Whole volumes: one group /{VOLUMES_GROUP}/<split>/<case_id> per case, with {volume_fields}.")
    return (text + " Read it with h5py or fuse4seg.data.BraTSFuse / BraTSFuseVolumes (mlcroissant has no HDF5 "
            "reader); `fuse4seg export DIR --format parquet` adds the record sets parquet-<split> that it reads.")


def _file_object(name: str, file: Path) -> dict:
    """The Croissant FileObject of the package file ``name`` (a relative path) whose bytes are in ``file``."""
    return {"@type": "cr:FileObject", "@id": name, "name": name, "contentUrl": name,
            "encodingFormat": ENCODING_FORMATS[name.rsplit(".", 1)[-1]],
            "contentSize": f"{file.stat().st_size} B", "sha256": sha256_file(file)}


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
