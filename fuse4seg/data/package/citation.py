"""Citation metadata of a BraTS-Fuse package: CITATION.cff content, its BibTeX rendering, and :func:`cite` for a
built package directory."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from fuse4seg.data.package.schema import CITATION_NAME
from fuse4seg.errors import ConfigError, DataError
from fuse4seg.io import one_line
from fuse4seg.user_files import read_user_file

#: The three papers that every publication using BraTS data must cite (the BraTS organisers' terms: Menze et al.
#: 2015, Bakas et al. 2017, Baid et al. 2021); the package's CITATION.cff carries them as references.
BRATS_REFERENCES: tuple[dict, ...] = (
    {
        "type": "article", "key": "menze2015multimodal",
        "authors": [{"family-names": "Menze", "given-names": "Bjoern H."},
                    {"family-names": "Jakab", "given-names": "Andras"},
                    {"family-names": "Bauer", "given-names": "Stefan"},
                    {"family-names": "Kalpathy-Cramer", "given-names": "Jayashree"},
                    {"family-names": "Farahani", "given-names": "Keyvan"},
                    {"family-names": "Kirby", "given-names": "Justin"},
                    {"name": "others"}],
        "title": "The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS)",
        "journal": "IEEE Transactions on Medical Imaging", "volume": 34, "issue": 10,
        "start": 1993, "end": 2024, "year": 2015, "doi": "10.1109/TMI.2014.2377694",
    },
    {
        "type": "article", "key": "bakas2017advancing",
        "authors": [{"family-names": "Bakas", "given-names": "Spyridon"},
                    {"family-names": "Akbari", "given-names": "Hamed"},
                    {"family-names": "Sotiras", "given-names": "Aristeidis"},
                    {"family-names": "Bilello", "given-names": "Michel"},
                    {"family-names": "Rozycki", "given-names": "Martin"},
                    {"family-names": "Kirby", "given-names": "Justin S."},
                    {"family-names": "Freymann", "given-names": "John B."},
                    {"family-names": "Farahani", "given-names": "Keyvan"},
                    {"family-names": "Davatzikos", "given-names": "Christos"}],
        "title": "Advancing The Cancer Genome Atlas glioma MRI collections with expert segmentation "
                 "labels and radiomic features",
        "journal": "Scientific Data", "volume": 4, "issue": 1, "start": 170117, "year": 2017,
        "doi": "10.1038/sdata.2017.117",
    },
    {
        "type": "article", "key": "baid2021rsna",
        "authors": [{"family-names": "Baid", "given-names": "Ujjwal"},
                    {"family-names": "Ghodasara", "given-names": "Satyam"},
                    {"family-names": "Mohan", "given-names": "Suyash"},
                    {"family-names": "Bilello", "given-names": "Michel"},
                    {"family-names": "Calabrese", "given-names": "Evan"},
                    {"family-names": "Colak", "given-names": "Errol"},
                    {"family-names": "Farahani", "given-names": "Keyvan"},
                    {"name": "others"}],
        "title": "The RSNA-ASNR-MICCAI BraTS 2021 Benchmark on Brain Tumor Segmentation and "
                 "Radiogenomic Classification",
        "journal": "arXiv preprint arXiv:2107.02314", "year": 2021, "doi": "10.48550/arXiv.2107.02314",
        "url": "https://arxiv.org/abs/2107.02314",
    },
)


#: Largest CITATION.cff read (bytes; checked before reading): a citation file is a few kB.
MAX_CITATION_BYTES = 2**20
#: What CITATION.cff and the card say about sharing a BraTS-derived build (CFF 1.2.0 only takes SPDX
#: ids in ``license``, and the BraTS data terms have none, so the field is left out for such builds).
BRATS_TERMS = ("Derived from BraTS: sharing it is governed by the data terms of the BraTS release it was "
               "built from (not an open licence); check them before redistributing.")


def package_version(meta: dict) -> str:
    """The package's version string, shared by CITATION.cff and croissant.json: the builder's
    semantic version (``builder_version`` is 'fuse4seg X.Y.Z'), as Croissant expects MAJOR.MINOR.PATCH."""
    return str(meta["builder_version"]).split()[-1]


def citation_cff(meta: dict) -> dict:
    """CITATION.cff content (cff-version 1.2.0, type dataset) for a package described by ``meta``
    (the build summary); BraTS-derived builds carry the three BraTS papers as references."""
    total = sum(s["slices"] for s in meta["splits"].values())
    cff: dict = {
        "cff-version": "1.2.0",
        "message": "If you use this dataset, please cite it as below"
                   + (" and cite the BraTS papers listed under references. " + BRATS_TERMS
                      if meta["brats_derived"] else "."),
        "type": "dataset",
        "title": f"BraTS-Fuse: paired multi-modal MRI source, fused ({meta['fusion_method']}) and "
                 f"label slices, built with {meta['builder_version']}",
        "authors": [{"name": "fuse4seg contributors"}],
        "version": package_version(meta),
        "date-released": meta["created"][:10],
        "abstract": f"{total} axial slices from {meta['cases'] - len(meta['skipped_cases'])} cases of "
                    f"{meta['source_dataset']}: four source modalities (t1, t1ce, t2, flair), a fused image "
                    f"of {'+'.join(meta['fusion_inputs'])} and the tumour label map, split by patient."
                    + (" " + BRATS_TERMS if meta["brats_derived"] else ""),
        "keywords": ["brain tumour", "MRI", "image fusion", "segmentation", "BraTS"],
    }
    if not meta["brats_derived"]:
        cff["license"] = "CC-BY-4.0"
    else:
        # CFF references have no key field: the BibTeX key travels as ``notes`` (a CFF reference key).
        cff["references"] = [{**{k: v for k, v in ref.items() if k != "key"}, "notes": f"BibTeX key: {ref['key']}"}
                             for ref in BRATS_REFERENCES]
    return cff


def _bibtex_authors(authors: list[dict]) -> str:
    """BibTeX author list 'Family, Given and ...' ('others' for an 'others' entity)."""
    names = []
    for author in authors:
        if "family-names" in author:
            names.append(f"{author['family-names']}, {author.get('given-names', '')}".strip(", "))
        else:
            names.append("others" if author.get("name") == "others" else "{" + author["name"] + "}")
    return " and ".join(names)


def _bibtex_entry(kind: str, key: str, fields: dict[str, object]) -> str:
    """One BibTeX entry with fields in the given order (None values left out)."""
    body = ",\n".join(f"  {name} = {{{value}}}" for name, value in fields.items() if value is not None)
    return f"@{kind}{{{key},\n{body}\n}}"


def _reference_key(ref: dict) -> str:
    """BibTeX key of a CFF reference: the one stored in ``notes`` ('BibTeX key: K'), else family name +
    year + first title word that is not an article or preposition (e.g. menze2015multimodal)."""
    stored = re.fullmatch(r"BibTeX key: ([A-Za-z0-9_:-]+)", str(ref.get("notes", "")).strip())
    if stored:
        return stored.group(1)
    first = str(ref["authors"][0].get("family-names", "ref")).lower()
    words = [w for w in re.findall(r"[a-z0-9]+", str(ref["title"]).lower()) if w not in _STOP_WORDS]
    return re.sub(r"[^a-z0-9]", "", f"{first}{ref.get('year', '')}{words[0] if words else ''}")


#: Words skipped when a citation key takes the first word of a title (as Google Scholar keys do).
_STOP_WORDS = frozenset({"a", "an", "the", "on", "of", "in", "for", "and", "to", "with", "from"})


def cff_to_bibtex(cff: dict) -> str:
    """Render parsed CITATION.cff content as BibTeX: the dataset, then each reference."""
    year = str(cff.get("date-released", ""))[:4] or None
    entries = [_bibtex_entry("misc", f"bratsfuse{year or ''}", {
        "title": cff["title"], "author": _bibtex_authors(cff["authors"]), "year": year,
        "version": cff.get("version"),
        "note": f"Dataset; licence {cff['license']}" if cff.get("license") else "Dataset; see its README.md for the data terms",
        "howpublished": "Built with the fuse4seg toolkit (fuse4seg build-benchmark)",
    })]
    for ref in cff.get("references", []):
        key = _reference_key(ref)
        pages = f"{ref['start']}--{ref['end']}" if "end" in ref else ref.get("start")
        entries.append(_bibtex_entry("article", key, {
            "title": ref["title"], "author": _bibtex_authors(ref["authors"]), "journal": ref.get("journal"),
            "volume": ref.get("volume"), "number": ref.get("issue"), "pages": pages,
            "year": ref.get("year"), "doi": ref.get("doi"), "url": ref.get("url"),
        }))
    return "\n\n".join(entries) + "\n"


def cite(directory: str | Path, format: str = "bibtex") -> str:
    """The package's citation as BibTeX (dataset + references) or as the CITATION.cff text."""
    path = Path(directory) / CITATION_NAME
    if format not in ("bibtex", "cff"):
        raise ConfigError(f"{format!r}: expected bibtex or cff", option="format")
    if not path.is_file():
        raise DataError(f"{path}: missing (not a BraTS-Fuse package directory?)")
    try:
        text = read_user_file(path, MAX_CITATION_BYTES, what="CITATION.cff").decode("utf-8")
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
