"""BuildOptions: one declaration behind the build-benchmark command line, the library call and the recorded command."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import pytest
import typer

from fuse4seg.cli import app, main
from fuse4seg.data.build import builder
from fuse4seg.data.build import builder as benchmark
from fuse4seg.data.build.options import BuildOptions
from fuse4seg.errors import ConfigError, cli_message
from fuse4seg.inference import build as inference_build


def parse_with_cli(command: str, monkeypatch: pytest.MonkeyPatch) -> BuildOptions:
    """The BuildOptions that `fuse4seg build-benchmark` builds from the shell command line ``command``."""
    seen: list[BuildOptions] = []
    monkeypatch.setattr(inference_build, "build_benchmark", lambda options: seen.append(options) or {})
    monkeypatch.setattr(builder, "format_summary", lambda summary: "built")
    argv = shlex.split(command)
    assert argv[:2] == ["fuse4seg", "build-benchmark"]
    assert main(argv[1:]) == 0
    (options,) = seen
    return options


@pytest.mark.parametrize("options", [
    BuildOptions("pkg"),
    BuildOptions("my pkg/with 'quotes'", brats="/data/BraTS 2021", size=192, slices_per_case=4,
                 split="0.6,0.2,0.2", seed=7, fusion_inputs="flair,t1ce,t2", fusion="wavelet"),
    BuildOptions("o", phantom=4, phantom_scale=0.25, fusion="max", split=(1, 0, 0), fusion_checkpoint="r/best.pt",
                 volumes=True),
    BuildOptions(Path("o"), split=(1 / 3, 1 / 3, 1 / 3), phantom_scale=0.3),
])
def test_command_line_parses_back_to_equal_options(options: BuildOptions, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorded command line, run through the CLI, gives the same options (workers and overwrite, which do not
    change the package, are not recorded and come back as their defaults); 1/3 fractions round-trip exactly."""
    assert parse_with_cli(options.command_line(), monkeypatch) == options
    busy = dataclasses.replace(options, workers=3, overwrite=True)
    assert busy.command_line() == options.command_line()
    assert parse_with_cli(busy.command_line(), monkeypatch) == options


def test_command_line_text() -> None:
    """Literal command lines: defaults written out, None options and phantom_scale 1 left out, paths quoted."""
    assert BuildOptions("pkg").command_line() == (
        "fuse4seg build-benchmark --out pkg --fusion-inputs t1ce,flair --fusion laplacian --slices-per-case 8 "
        "--split 0.7,0.1,0.2 --seed 0")
    assert BuildOptions("a b", brats="rel", phantom_scale=0.5, size=64).command_line() == (
        "fuse4seg build-benchmark --out 'a b' --brats rel --fusion-inputs t1ce,flair --fusion laplacian --size 64 "
        "--slices-per-case 8 --split 0.7,0.1,0.2 --seed 0")
    assert BuildOptions("pkg", volumes=True).command_line().endswith(" --seed 0 --volumes")  # a bare flag when set


def test_cli_options_are_the_fields() -> None:
    """build-benchmark has one option per BuildOptions field, with the field's help text and its default shown as
    command-line text."""
    command = typer.main.get_command(app).commands["build-benchmark"]
    params = {p.name: p for p in command.params}
    assert list(params) == [f.name for f in dataclasses.fields(BuildOptions)]
    assert params["split"].default == "0.7,0.1,0.2" and params["fusion_inputs"].default == "t1ce,flair"
    assert params["out"].required and params["workers"].default == 1 and params["phantom_scale"].default == 1.0
    assert params["slices_per_case"].opts == ["--slices-per-case"]
    assert params["seed"].help == "Seed of the patient split (and of the phantom release), 0 to 4294967295."


@pytest.mark.parametrize(("changes", "option", "message"), [
    ({"workers": 0}, "workers", "must be >= 1, got 0"),
    ({"size": 4}, "size", "must be >= 8 pixels, got 4"),
    ({"slices_per_case": 0}, "slices_per_case", "must be >= 1, got 0"),
    ({"phantom": 0}, "phantom", "must be >= 1, got 0"),
    ({"phantom_scale": 1.5}, "phantom_scale", "must be <= 1, got 1.5"),
    ({"fusion": "median"}, "fusion", "unknown fusion method 'median'"),
    ({"brats": "rel", "phantom": 2}, "brats", "cannot be combined with phantom"),
    ({"seed": -1}, "seed", "must be an integer in [0, 4294967295] (32 bits), got -1"),
    ({"seed": 2**32}, "seed", "must be an integer in [0, 4294967295] (32 bits), got 4294967296"),
    ({"phantom": 5001}, "phantom", "must be <= 5000, got 5001"),
    ({"slices_per_case": 8193}, "slices_per_case", "must be <= 8192, got 8193"),
])
def test_validate_names_the_parameter(changes: dict, option: str, message: str) -> None:
    """validate() raises a ConfigError carrying the parameter name; the CLI form shows it as the flag."""
    with pytest.raises(ConfigError) as caught:
        BuildOptions("o", **changes).validate()
    assert caught.value.option == option and caught.value.message.startswith(message)
    assert str(caught.value).startswith(f"{option}: ")
    assert cli_message(caught.value).startswith(f"--{option.replace('_', '-')}: {message}")


def test_parsing_errors_name_the_parameter() -> None:
    """A bad split or modality list fails at construction, naming split / fusion_inputs."""
    with pytest.raises(ConfigError, match=r"^split: '0.5,0.5': expected three"):
        BuildOptions("o", split="0.5,0.5")
    with pytest.raises(ConfigError, match="^fusion_inputs: unknown modality 'pd'"):
        BuildOptions("o", fusion_inputs="t1,pd")


def test_library_call_forms(tmp_path: Path) -> None:
    """build_benchmark takes a BuildOptions or keywords, not both; fusion_fn with fusion_checkpoint is refused
    before anything is read or written."""
    with pytest.raises(TypeError, match="beside a BuildOptions"):
        benchmark.build_benchmark(BuildOptions(tmp_path / "x"), size=16)
    with pytest.raises(ConfigError, match="^fusion_checkpoint: give fusion_checkpoint or fusion_fn"):
        benchmark.build_benchmark(tmp_path / "x", fusion_checkpoint=tmp_path / "c.pt", fusion_fn=lambda x: x[:, 0])
    assert list(tmp_path.iterdir()) == []
