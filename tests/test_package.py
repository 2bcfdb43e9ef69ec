"""The dataset package: card, CITATION.cff, Croissant (validated by mlcroissant), verify and cite."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from _benchmark_data import write_release

from fuse4seg import __version__
from fuse4seg.data.build.builder import build_benchmark
from fuse4seg.data.package.citation import cff_to_bibtex, citation_cff, cite
from fuse4seg.data.package.verify import verify
from fuse4seg.errors import ConfigError, DataError
from fuse4seg.io import sha256_file

BRATS_DOIS = ("10.1109/TMI.2014.2377694", "10.1038/sdata.2017.117", "10.48550/arXiv.2107.02314")


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A package built from a 5-case tiny BraTS release (BraTS-derived)."""
    root = tmp_path_factory.mktemp("pkg")
    release = write_release(root / "brats", cases=5)
    out = root / "package"
    build_benchmark(out, brats=release, size=16, slices_per_case=2, progress=False,
                    command="fuse4seg build-benchmark --out package --brats brats --size 16")
    return out


@pytest.fixture
def copy(package: Path, tmp_path: Path) -> Path:
    """A private copy of the package that a test may damage."""
    target = tmp_path / "copy"
    shutil.copytree(package, target)
    return target


def rehash(directory: Path, name: str = "brats_fuse.h5") -> None:
    """Update croissant.json for a deliberately edited file, so the schema checks are reached."""
    path = directory / "croissant.json"
    meta = json.loads(path.read_text())
    for entry in meta["distribution"]:
        if entry["contentUrl"] == name:
            entry["sha256"] = sha256_file(directory / name)
            entry["contentSize"] = f"{(directory / name).stat().st_size} B"
    path.write_text(json.dumps(meta))


def test_verify_passes_on_a_fresh_build(package: Path) -> None:
    """A fresh build verifies: the three hashed files are listed in order and the split case counts add up to the
    5 input cases."""
    report = verify(package)
    assert report["files"] == ["brats_fuse.h5", "README.md", "CITATION.cff"]
    assert sum(s["cases"] for s in report["splits"].values()) == 5


def test_verify_catches_a_flipped_byte(copy: Path) -> None:
    """One flipped bit in brats_fuse.h5 is reported as a sha256 mismatch naming the file."""
    path = copy / "brats_fuse.h5"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="brats_fuse.h5: sha256 differs"):
        verify(copy)


@pytest.mark.parametrize("name", ["brats_fuse.h5", "README.md", "CITATION.cff", "croissant.json"])
def test_verify_catches_a_deleted_file(copy: Path, name: str) -> None:
    """Deleting any package file (including croissant.json itself) is a DataError naming that file as missing."""
    (copy / name).unlink()
    with pytest.raises(DataError, match=f"{name}.*missing"):
        verify(copy)


def test_verify_catches_edits_and_strays(copy: Path) -> None:
    """A file not listed in croissant.json, and an appended line in README.md (a size change), are each a
    DataError naming the file."""
    (copy / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not listed in croissant.json: notes.txt"):
        verify(copy)
    (copy / "notes.txt").unlink()
    with open(copy / "README.md", "a") as handle:
        handle.write("edited\n")
    with pytest.raises(DataError, match="README.md: size"):
        verify(copy)


def test_verify_checks_labels_ranges_and_disjointness(copy: Path) -> None:
    """With hashes updated so the value checks are reached: label 7, a fused value of 1.5 and a case id shared by
    train and test are each a DataError naming the dataset or the splits."""
    with h5py.File(copy / "brats_fuse.h5", "r+") as h5:
        h5["val/label"][0, 0, 0] = 7
    rehash(copy)
    with pytest.raises(DataError, match="/val/label.*label 7"):
        verify(copy)
    with h5py.File(copy / "brats_fuse.h5", "r+") as h5:
        h5["val/label"][0, 0, 0] = 0
        h5["test/fused"][0, 0, 0, 0] = 1.5
    rehash(copy)
    with pytest.raises(DataError, match="/test/fused.*outside"):
        verify(copy)
    with h5py.File(copy / "brats_fuse.h5", "r+") as h5:
        h5["test/fused"][0, 0, 0, 0] = 1.0
        h5["test/case_id"][0] = h5["train/case_id"][0]
    rehash(copy)
    with pytest.raises(DataError, match="in both train and test"):
        verify(copy)


def test_verify_checks_the_schema(copy: Path) -> None:
    """With hashes updated: a fused dataset of the wrong shape and a missing root attribute are DataErrors naming
    them; a missing folder is 'no such package'."""
    with h5py.File(copy / "brats_fuse.h5", "r+") as h5:
        del h5["val/fused"]
        h5["val"].create_dataset("fused", data=h5["val/source"][:, :2])
    rehash(copy)
    with pytest.raises(DataError, match="/val/fused is float32.*expected float32"):
        verify(copy)
    with h5py.File(copy / "brats_fuse.h5", "r+") as h5:
        del h5.attrs["label_scheme"]
    rehash(copy)
    with pytest.raises(DataError, match="missing root attribute.*label_scheme"):
        verify(copy)
    with pytest.raises(DataError, match="no such package"):
        verify(copy / "nope")


def _set_attr(key: str, value: object, **options: object) -> Callable[[h5py.File], None]:
    """An edit that replaces root attribute ``key`` by ``value`` (h5py attrs.create options)."""
    return lambda h5: h5.attrs.create(key, value, **options)


def _replace_case_ids(h5: h5py.File) -> None:
    """Store /train/case_id as non-UTF-8 bytes, first as ASCII-typed, which the schema refuses."""
    n = h5["train/case_id"].shape[0]
    del h5["train/case_id"]
    h5["train"].create_dataset("case_id", data=np.array([b"\xff\xfe"] * n, dtype=object),
                               dtype=h5py.string_dtype("ascii"))


def _utf8_typed_bad_case_ids(h5: h5py.File) -> None:
    """Store /train/case_id typed UTF-8 but holding bytes that are not UTF-8 (passes the schema: chunked as
    the writer chunks it)."""
    n = h5["train/case_id"].shape[0]
    del h5["train/case_id"]
    h5["train"].create_dataset("case_id", data=np.array([b"\xff\xfe"] * n, dtype=object),
                               dtype=h5py.string_dtype("utf-8"), chunks=(256,), maxshape=(None,))


CRAFTED = [  # (edit of brats_fuse.h5, expected one-line message)
    (_set_attr("format_version", "abc"), "format_version must be one integer, got <U3"),
    (_set_attr("format_version", np.array([1, 2])), r"format_version must be one integer, got int64\(2,\)"),
    (_set_attr("format_version", 1.0), "format_version must be one integer, got float64"),
    (_set_attr("format_version", 3), "format_version 3 is not supported"),
    (_set_attr("fusion_inputs", 5), "fusion_inputs must be a 1-D array of modality names, got int64 5"),
    (_set_attr("fusion_inputs", "t1ce,flair"), "fusion_inputs must be a 1-D array of modality names"),
    (_set_attr("fusion_inputs", np.array(["t1ce", "pd"], dtype=object), dtype=h5py.string_dtype()),
     "fusion_inputs is invalid.*unknown modality 'pd'"),
    (_set_attr("label_scheme", 3), "root attribute label_scheme must be a string, got int64"),
    (_set_attr("created", b"\xff\xfe", dtype=h5py.string_dtype("utf-8")), "created is not valid UTF-8"),
    (_set_attr("created", np.bytes_(b"\xff\xfe")), "created is not valid UTF-8"),
    (_replace_case_ids, r"/train/case_id must be \(\d+,\) UTF-8 strings"),
    (_utf8_typed_bad_case_ids, "/train/case_id holds a string that is not UTF-8"),
    (lambda h5: h5["train/source"].attrs.create("modalities", np.arange(3)), "modalities is"),
    (lambda h5: h5["train/source"].attrs.create("modalities", np.array([b"\xff"] * 4, dtype="S1")),
     "malformed BraTS-Fuse HDF5 content .UnicodeDecodeError"),
]


@pytest.mark.parametrize(("edit", "message"), CRAFTED)
def test_verify_names_the_file_for_crafted_attributes(copy: Path, edit: Callable[[h5py.File], None],
                                                      message: str) -> None:
    """Root attributes of the wrong type, undecodable strings and bad case ids give a one-line
    DataError that names brats_fuse.h5 (before the fix: ValueError/TypeError/UnicodeDecodeError)."""
    with h5py.File(copy / "brats_fuse.h5", "r+") as h5:
        edit(h5)
    rehash(copy)
    with pytest.raises(DataError, match=message) as caught:
        verify(copy)
    assert str(caught.value).startswith(f"{copy / 'brats_fuse.h5'}: ") and "\n" not in str(caught.value)


@pytest.mark.parametrize(("text", "message"), [
    ('{"distribution": ["a", 1]}', r"distribution\[0\] is str 'a', not an object"),
    ("[1, 2]", 'expected an object with a "distribution" list'),
    ('{"distribution": {"@type": "cr:FileObject"}}', 'expected an object with a "distribution" list'),
    ('{"distribution": [{"@type": "cr:FileObject", "contentUrl": 7}]}', "contentUrl 7 is not a file name"),
    ('{"distribution": [{"@type": "cr:FileObject", "contentUrl": "."}]}', "'.' is not a relative path"),
    ("{not json", "not valid Croissant JSON"),
])
def test_verify_rejects_a_malformed_croissant_file(copy: Path, text: str, message: str) -> None:
    """croissant.json holding non-objects, a list, a non-string or '.' file name, or bad JSON gives a
    one-line DataError naming croissant.json (before the fix: AttributeError for non-objects)."""
    (copy / "croissant.json").write_text(text)
    with pytest.raises(DataError, match=message) as caught:
        verify(copy)
    assert str(caught.value).startswith(str(copy / "croissant.json")) and "\n" not in str(caught.value)


def test_verify_rejects_non_utf8_croissant_bytes(copy: Path) -> None:
    """Non-UTF-8 bytes in croissant.json are a DataError naming it, not a UnicodeDecodeError."""
    (copy / "croissant.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(DataError, match="croissant.json: not valid Croissant JSON"):
        verify(copy)


@pytest.mark.parametrize(("content", "message"), [
    (b"- a\n- b\n", "expected a YAML mapping at the top level, found list"),
    (b"\xff\xfe\x00bad", "not UTF-8 text"),
    (b"title: [unclosed\n", "not a valid CITATION.cff"),
    (b"cff-version: 1.2.0\ntitle: x\nauthors: 5\n", "not a valid CITATION.cff"),
])
@pytest.mark.parametrize("fmt", ["bibtex", "cff"])
def test_cite_rejects_a_damaged_citation_file(copy: Path, content: bytes, message: str, fmt: str) -> None:
    """A YAML list, non-UTF-8 bytes, malformed YAML or a wrongly typed field in CITATION.cff give a
    one-line DataError naming the file (--format cff only needs the text to be UTF-8)."""
    (copy / "CITATION.cff").write_bytes(content)
    if fmt == "cff" and b"\xff" not in content:
        assert cite(copy, format="cff") == content.decode()
        return
    with pytest.raises(DataError, match=message) as caught:
        cite(copy, format=fmt)
    assert str(caught.value).startswith(str(copy / "CITATION.cff")) and "\n" not in str(caught.value)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # rdflib inside mlcroissant
def test_croissant_validates_with_mlcroissant(package: Path) -> None:
    """mlcroissant loads croissant.json with no errors or warnings and no record set (the HDF5 file, which it
    cannot read, is a FileObject; the Parquet export adds the record sets); its conformsTo is Croissant 1.0 and
    each listed sha256 and size equals the file's."""
    mlcroissant = pytest.importorskip("mlcroissant")
    dataset = mlcroissant.Dataset(jsonld=package / "croissant.json")
    assert not dataset.metadata.ctx.issues.errors and not dataset.metadata.ctx.issues.warnings
    assert [r.name for r in dataset.metadata.record_sets] == []
    meta = json.loads((package / "croissant.json").read_text())
    assert meta["conformsTo"] == "http://mlcommons.org/croissant/1.0"
    for entry in meta["distribution"]:
        file = package / entry["contentUrl"]
        assert entry["sha256"] == sha256_file(file)
        assert entry["contentSize"] == f"{file.stat().st_size} B"


def test_card_front_matter_and_command(package: Path) -> None:
    """The card's YAML front matter matches verify's split counts, marks BraTS builds 'other' licence with BraTS
    as source, has the task and size categories, and the card holds the build command and the required
    sections."""
    text = (package / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    report = verify(package)
    splits = {s["name"]: s["num_examples"] for s in front["dataset_info"]["splits"]}
    assert splits == {k: v["slices"] for k, v in report["splits"].items()}
    assert front["source_datasets"] == ["BraTS"] and front["license"] == "other"
    assert set(front["task_categories"]) == {"image-segmentation", "image-to-image"}
    assert front["size_categories"] == ["n<1K"]
    assert "fuse4seg build-benchmark --out package --brats brats --size 16" in text
    for heading in ("## How it was built", "## Intended use", "## Limits"):
        assert heading in text


def test_citation_cff_and_bibtex_carry_the_brats_papers(package: Path) -> None:
    """CITATION.cff (cff-version 1.2.0, type dataset) lists the three BraTS papers by DOI with Menze's journal,
    volume, issue, pages and year; BibTeX has one misc and three articles with balanced braces and those DOIs;
    an unknown --format is a ConfigError."""
    cff = yaml.safe_load(cite(package, format="cff"))
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "dataset"
    assert [ref["doi"] for ref in cff["references"]] == list(BRATS_DOIS)
    menze = cff["references"][0]
    assert (menze["journal"], menze["volume"], menze["issue"], menze["start"], menze["end"], menze["year"]) == (
        "IEEE Transactions on Medical Imaging", 34, 10, 1993, 2024, 2015)
    bibtex = cite(package)
    assert bibtex.count("@article{") == 3 and bibtex.count("@misc{") == 1
    assert bibtex.count("{") == bibtex.count("}")
    for doi in BRATS_DOIS:
        assert f"doi = {{{doi}}}" in bibtex
    assert "pages = {1993--2024}" in bibtex and "Menze, Bjoern H." in bibtex
    with pytest.raises(ConfigError, match="^format: 'ris'"):
        cite(package, format="ris")


def _build_meta(brats_derived: bool) -> dict:
    """A build summary as build_benchmark returns it (only the keys the citation uses)."""
    return {"splits": {"train": {"cases": 3, "slices": 12}, "val": {"cases": 1, "slices": 4},
                       "test": {"cases": 1, "slices": 4}}, "brats_derived": brats_derived,
            "fusion_method": "laplacian", "builder_version": "fuse4seg 0.1.0", "created": "2026-01-02T03:04:05Z",
            "cases": 5, "skipped_cases": [], "source_dataset": "BraTS, brats2021 release layout",
            "fusion_inputs": ["t1ce", "flair"]}


@pytest.mark.parametrize("brats_derived", [True, False])
def test_citation_cff_validates_against_the_cff_1_2_0_schema(package: Path, brats_derived: bool) -> None:
    """CITATION.cff is valid CFF 1.2.0 per cffconvert's bundled JSON schema, for a BraTS build (the
    file on disk; before the fix its 'LicenseRef-BraTS-data-terms' licence failed the SPDX enum) and a
    phantom build; BraTS builds carry no licence field and state the data terms in message/abstract."""
    citation = pytest.importorskip("cffconvert.citation")
    text = (package / "CITATION.cff").read_text() if brats_derived else yaml.safe_dump(
        citation_cff(_build_meta(False)), sort_keys=False, allow_unicode=True)
    citation.Citation(text).validate()  # raises jsonschema.ValidationError when invalid
    cff = yaml.safe_load(text)
    if brats_derived:
        assert "license" not in cff
        assert "data terms of the BraTS release" in cff["message"] and "data terms" in cff["abstract"]
    else:
        assert cff["license"] == "CC-BY-4.0"
    jsonschema = pytest.importorskip("jsonschema")
    with pytest.raises(jsonschema.ValidationError, match="LicenseRef-BraTS-data-terms"):  # the check can fail
        citation.Citation(yaml.safe_dump({**cff, "license": "LicenseRef-BraTS-data-terms"})).validate()


def test_croissant_and_cff_share_one_version_and_the_card_states_the_hdf5_limit(package: Path) -> None:
    """croissant.json "version" equals CITATION.cff "version" (the builder's semantic version) and the
    card's Limits section says that mlcroissant cannot read the HDF5 record sets."""
    croissant = json.loads((package / "croissant.json").read_text())
    cff = yaml.safe_load((package / "CITATION.cff").read_text())
    assert croissant["version"] == cff["version"] == __version__
    limits = (package / "README.md").read_text().split("## Limits")[1]
    assert "mlcroissant has" in limits and "no HDF5 reader" in limits
    assert all("mlcroissant has no HDF5 reader" in r["description"] for r in croissant["recordSet"])


def test_bibtex_keys_use_the_stored_keys_and_skip_articles() -> None:
    """The BraTS references keep their curated keys; a reference without a stored key takes
    family name + year + first title word that is not an article (menze2015multimodal, not menze2015the)."""
    bibtex = cff_to_bibtex(citation_cff(_build_meta(True)))
    keys = re.findall(r"@\w+\{([^,]+),", bibtex)
    assert keys == ["bratsfuse2026", "menze2015multimodal", "bakas2017advancing", "baid2021rsna"]
    ref = {"authors": [{"family-names": "Menze"}], "year": 2015,
           "title": "The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS)"}
    assert re.search(r"@article\{menze2015multimodal,", cff_to_bibtex({**_build_meta(True), "title": "t",
                                                                        "authors": [{"name": "x"}],
                                                                        "references": [ref]}))
