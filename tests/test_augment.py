"""Augmentation and input-degradation specs: presets, files (and their refusal), seeding, serialisation."""

from __future__ import annotations

import json

import albumentations as A
import numpy as np
import pytest

from fuse4seg.data.augment.degradations import ClippedGaussianBlur, GaussianNoise, RicianNoise
from fuse4seg.data.augment.specs import (
    ChannelIntensity,
    augmentation,
    input_degradation,
    seeded,
    spec_dict,
    spec_text,
)
from fuse4seg.errors import ConfigError


def sample(size: int = 64, channels: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, C) float32 image in [0, 1] with a bright square where the (H, W) uint8 mask is 1..3."""
    rng = np.random.default_rng(0)
    mask = np.zeros((size, size), dtype=np.uint8)
    top, left = size // 4, 5 * size // 16
    mask[top:size - top, left:size - left] = rng.integers(1, 4, (size - 2 * top, size - 2 * left))
    image = (0.1 + 0.1 * rng.random((size, size, channels))).astype(np.float32)
    image[mask > 0] = 1.0
    return image, mask


@pytest.mark.parametrize("preset", ["light", "strong"])
def test_presets_keep_shapes_dtypes_labels_and_alignment(preset: str) -> None:
    """A preset keeps (H, W, 5) float32 in [0, 1] and (H, W) uint8 labels {0..3}; image and mask move together."""
    image, mask = sample()
    transform = augmentation(preset)
    assert isinstance(transform, A.Compose)
    moved = 0
    for seed in range(8):
        out = seeded(transform, seed, image=image, mask=mask)
        assert out["image"].shape == image.shape and out["image"].dtype == np.float32
        assert out["mask"].shape == mask.shape and out["mask"].dtype == np.uint8
        assert set(np.unique(out["mask"])) <= {0, 1, 2, 3}
        assert 0 <= out["image"].min() and out["image"].max() <= 1
        moved += not np.array_equal(out["mask"], mask)
        if preset == "light":  # no degradations: the bright square is where the labels are
            bright, labelled = out["image"][..., 0] > 0.6, out["mask"] > 0
            assert (bright & labelled).sum() / (bright | labelled).sum() > 0.9
    assert moved >= 4  # most draws move the slice


def test_channel_intensity_formula_and_draws() -> None:
    """Each channel becomes s m (x / m)^gamma clipped to [0, 1], with its own s and gamma; zero channels stay zero."""
    image = np.random.default_rng(1).random((8, 8, 3)).astype(np.float32) * np.float32([0.5, 1.0, 0.0])
    transform = ChannelIntensity(scale_range=(0.8, 1.2), gamma_range=(0.7, 1.4), p=1.0)
    scale, gamma = np.array([1.2, 0.9, 1.1]), np.array([0.7, 1.3, 1.0])
    out = transform.apply(image, scale=scale, gamma=gamma)
    peak = np.array([image[..., 0].max(), image[..., 1].max(), 1.0])
    expected = np.clip(scale * peak * (image.astype(np.float64) / peak) ** gamma, 0, 1)
    expected[..., 2] = 0
    np.testing.assert_allclose(out, expected, atol=1e-6)
    transform.set_random_seed(0)
    transform(image=image)
    drawn = transform.get_applied_params()
    assert len(set(drawn["scale"])) == 3 and ((0.7 <= drawn["gamma"]) & (drawn["gamma"] <= 1.4)).all()


def test_spec_forms_of_input_degradation() -> None:
    """none; comma lists of names and groups in acquisition order with p=0.5; light and strong presets."""
    assert augmentation("none") is None and input_degradation("none") is None
    listed = input_degradation("noise,blur,kspace")
    assert [type(t).__name__ for t in listed.transforms] == [
        "KSpaceSpike", "KSpaceUndersampling", "ClippedGaussianBlur", "GaussianNoise", "RicianNoise"]
    assert all(t.p == 0.5 for t in listed.transforms)
    assert len(input_degradation("rician, noise ,rician").transforms) == 2  # groups expand, repeats collapse
    light, strong = input_degradation("light"), input_degradation("strong")
    assert len(light.transforms) == len(strong.transforms) == 8
    assert {t.p for t in light.transforms} == {0.1} and {t.p for t in strong.transforms} == {0.25}
    assert light.transforms[-2].fraction_range == (0.0, 0.05)  # half of the largest noise
    image, _ = sample(32, 4)
    out = seeded(strong, 0, image=image)["image"]
    assert out.shape == image.shape and out.dtype == np.float32


def test_files_round_trip(tmp_path) -> None:
    """Presets and degradation pipelines saved by A.save (JSON, YAML) load back and give identical outputs."""
    image, mask = sample(32)
    for spec, load in (("strong", augmentation), ("light", augmentation), ("strong", input_degradation)):
        original = load(spec)
        for suffix, data_format in ((".json", "json"), (".yml", "yaml"), (".yaml", "yaml")):
            path = tmp_path / f"spec{suffix}"
            A.save(original, str(path), data_format=data_format)
            loaded = load(str(path))
            assert spec_dict(loaded) == spec_dict(original)
            for seed in (0, 1, 2):
                a, b = seeded(original, seed, image=image, mask=mask), seeded(loaded, seed, image=image, mask=mask)
                np.testing.assert_array_equal(a["image"], b["image"])
                np.testing.assert_array_equal(a["mask"], b["mask"])
    single = tmp_path / "one.json"
    A.save(GaussianNoise(p=1.0), str(single))
    assert isinstance(input_degradation(str(single)), A.Compose)  # a single transform is wrapped


def write(path, text: str) -> str:
    """Write ``text`` to ``path``; its name as a string."""
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_bad_specs_are_one_line_config_errors(tmp_path) -> None:
    """Unknown names, missing or corrupt files, foreign classes, missing p, bad arguments, spatial
    transforms in --degrade-inputs: one-line ConfigErrors naming the option."""
    flip = {"transform": {"__class_fullname__": "Compose", "p": 1.0,
                          "transforms": [{"__class_fullname__": "HorizontalFlip", "p": 0.5}]}}

    def node(name: str, **args: object) -> str:
        """A file holding one transform ``name`` with ``args``."""
        return write(tmp_path / f"{name.rsplit('.', 1)[-1]}.json",
                     json.dumps({"transform": {"__class_fullname__": name, **args}}))

    cases = [
        (augmentation, "medium", "augment", "must be none, light, strong"),
        (input_degradation, "noise,gibbs", "degrade_inputs", "unknown degradation 'gibbs'"),
        (augmentation, str(tmp_path / "missing.yaml"), "augment", "missing.yaml: no such file"),
        (augmentation, write(tmp_path / "bad.yaml", "transform: [unclosed\n  x: {"), "augment", "not valid YAML"),
        (input_degradation, write(tmp_path / "bad.json", "{\"transform\": "), "degrade_inputs", "not valid JSON"),
        (augmentation, write(tmp_path / "list.yaml", "- 1\n- 2\n"), "augment", "'transform' mapping"),
        (augmentation, node("builtins.eval", p=1.0), "augment", "unknown transform 'builtins.eval'"),
        (augmentation, node("Lambda", p=1.0), "augment", "unknown transform 'Lambda'"),
        (augmentation, node("HorizontalFlip"), "augment", "has no 'p'"),
        (augmentation, node("GaussianBlur", p=1.0, sigma_limt=[1, 2]), "augment", "sigma_limt"),
        (input_degradation, node("fuse4seg.data.augment.degradations.GaussianNoise", p=1.0, fraction_range=[0.5, 0.1]),
         "degrade_inputs", "fraction_range"),
        (input_degradation, write(tmp_path / "flip.json", json.dumps(flip)), "degrade_inputs",
         "HorizontalFlip is not an image-only transform"),
    ]
    for parse, spec, option, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            parse(spec)
        assert info.value.option == option and "\n" not in str(info.value), spec
    assert isinstance(augmentation(str(tmp_path / "flip.json")), A.Compose)  # fine for --augment


def test_seeded_is_deterministic_and_draws_one_stream() -> None:
    """seeded: same seed, same output; children draw in turn from one stream (no repeated draws);
    seeds must be non-negative integers."""
    image, _ = sample(32, 2)
    pipeline = A.Compose([GaussianNoise(fraction_range=(0.1, 0.1), clip=False, p=1.0),
                          RicianNoise(fraction_range=(0.1, 0.1), clip=False, p=1.0),
                          ClippedGaussianBlur(sigma_limit=(0.1, 3.0), blur_limit=0, p=1.0)])
    first = seeded(pipeline, 5, image=image)["image"]
    np.testing.assert_array_equal(seeded(pipeline, 5, image=image)["image"], first)
    assert not np.array_equal(seeded(pipeline, 6, image=image)["image"], first)
    twins = A.Compose([GaussianNoise(fraction_range=(0.1, 0.1), clip=False, p=1.0) for _ in range(2)])
    seeded(twins, 0, image=image)
    noises = [t.get_applied_params()["draws"]["noise"] for t in twins.transforms]
    assert not np.array_equal(*noises)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ConfigError, match="non-negative integer") as info:
            seeded(pipeline, bad, image=image)
        assert info.value.option == "seed"


def test_spec_dict_and_text_rebuild_the_pipeline() -> None:
    """spec_dict is JSON-ready and A.from_dict of it rebuilds the pipeline; spec_text is its JSON."""
    transform = augmentation("strong")
    recorded = json.loads(spec_text(transform))
    assert recorded == spec_dict(transform) and spec_text(None) == "null" and spec_dict(None) is None
    image, mask = sample(32)
    a = seeded(transform, 4, image=image, mask=mask)
    b = seeded(A.from_dict(recorded), 4, image=image, mask=mask)
    np.testing.assert_array_equal(a["image"], b["image"])


def test_files_naming_the_modules_before_the_move_still_load(tmp_path) -> None:
    """A file saved when the transforms lived in fuse4seg.data.degradations and fuse4seg.data.augment loads as the
    same transforms under their new names (same classes, same values, same output for a seed); new saves name the
    new modules."""
    saved = {"__version__": A.__version__, "transform": {
        "__class_fullname__": "Compose", "p": 1.0, "transforms": [
            {"__class_fullname__": "fuse4seg.data.degradations.GaussianNoise", "p": 1.0, "fraction_range": [0.05, 0.05],
             "clip": True},
            {"__class_fullname__": "fuse4seg.data.augment.ChannelIntensity", "p": 1.0, "scale_range": [0.9, 0.9],
             "gamma_range": [1.2, 1.2]}]}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(saved), encoding="utf-8")
    loaded = augmentation(str(path))
    expected = A.Compose([GaussianNoise(fraction_range=(0.05, 0.05), clip=True, p=1.0),
                          ChannelIntensity(scale_range=(0.9, 0.9), gamma_range=(1.2, 1.2), p=1.0)])
    assert [type(t) for t in loaded.transforms] == [GaussianNoise, ChannelIntensity]
    image, mask = sample(32, 2)
    got, want = seeded(loaded, 7, image=image, mask=mask), seeded(expected, 7, image=image, mask=mask)
    assert np.array_equal(got["image"], want["image"]) and not np.array_equal(got["image"], image)
    names = [t["__class_fullname__"] for t in spec_dict(loaded)["transform"]["transforms"]]
    assert names == ["fuse4seg.data.augment.degradations.GaussianNoise", "fuse4seg.data.augment.specs.ChannelIntensity"]
    with pytest.raises(ConfigError, match="unknown transform 'fuse4seg.data.nowhere.GaussianNoise'"):
        saved["transform"]["transforms"][0]["__class_fullname__"] = "fuse4seg.data.nowhere.GaussianNoise"
        path.write_text(json.dumps(saved), encoding="utf-8")
        augmentation(str(path))
