"""The dataset package: card, CITATION.cff, Croissant (validated by mlcroissant), verify and cite."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import pytest
import yaml
from _benchmark_data import write_release

from fuse4seg.data.benchmark import build_benchmark
from fuse4seg.data.package import cite, sha256_file, verify
from fuse4seg.errors import ConfigError, DataError

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
    """Verify passes on a fresh build."""
    report = verify(package)
    assert report["files"] == ["brats_fuse.h5", "README.md", "CITATION.cff"]
    assert sum(s["cases"] for s in report["splits"].values()) == 5


def test_verify_catches_a_flipped_byte(copy: Path) -> None:
    """Verify catches a flipped byte."""
    path = copy / "brats_fuse.h5"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="brats_fuse.h5: sha256 differs"):
        verify(copy)


@pytest.mark.parametrize("name", ["brats_fuse.h5", "README.md", "CITATION.cff", "croissant.json"])
def test_verify_catches_a_deleted_file(copy: Path, name: str) -> None:
    """Verify catches a deleted file."""
    (copy / name).unlink()
    with pytest.raises(DataError, match=f"{name}.*missing"):
        verify(copy)


def test_verify_catches_edits_and_strays(copy: Path) -> None:
    """Verify catches edits and strays."""
    (copy / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not listed in croissant.json: notes.txt"):
        verify(copy)
    (copy / "notes.txt").unlink()
    with open(copy / "README.md", "a") as handle:
        handle.write("edited\n")
    with pytest.raises(DataError, match="README.md: size"):
        verify(copy)


def test_verify_checks_labels_ranges_and_disjointness(copy: Path) -> None:
    """Verify checks labels ranges and disjointness."""
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
    """Verify checks the schema."""
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


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # rdflib inside mlcroissant
def test_croissant_validates_with_mlcroissant(package: Path) -> None:
    """Croissant validates with mlcroissant."""
    mlcroissant = pytest.importorskip("mlcroissant")
    dataset = mlcroissant.Dataset(jsonld=package / "croissant.json")
    assert not dataset.metadata.ctx.issues.errors and not dataset.metadata.ctx.issues.warnings
    assert [r.name for r in dataset.metadata.record_sets] == ["train", "val", "test"]
    meta = json.loads((package / "croissant.json").read_text())
    assert meta["conformsTo"] == "http://mlcommons.org/croissant/1.0"
    for entry in meta["distribution"]:
        file = package / entry["contentUrl"]
        assert entry["sha256"] == sha256_file(file)
        assert entry["contentSize"] == f"{file.stat().st_size} B"


def test_card_front_matter_and_command(package: Path) -> None:
    """Card front matter and command."""
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
    """Citation cff and bibtex carry the brats papers."""
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
    with pytest.raises(ConfigError, match="--format"):
        cite(package, format="ris")
