"""Extension points: register_model / register_fusion_loss from Python, and plug-in networks of the entry-point
group ``fuse4seg.models`` that an installed package declares (here a package and its ``*.dist-info`` written
into a folder on PYTHONPATH, which importlib.metadata discovers like any installed distribution)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import fuse4seg
from fuse4seg.errors import ConfigError
from fuse4seg.losses import fusion as fusion_losses
from fuse4seg.models import registry

PLUGIN_MODULE = '''
"""A tiny plug-in fusion network: a learned per-pixel mix of the sources."""
import torch
from torch import nn


class MixFusion(nn.Module):
    kind = "fusion"

    def __init__(self, in_channels: int = 2, width: int = 4):
        super().__init__()
        self.in_channels = in_channels
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(width, in_channels, 3, padding=1))

    def forward(self, x):
        return (torch.softmax(self.body(x), dim=1) * x).sum(dim=1, keepdim=True)
'''


def install_plugin(site: Path, entry_points: dict[str, str], module: str = PLUGIN_MODULE) -> Path:
    """Write the package ``tinyplug`` and its dist-info (entry points of fuse4seg.models) into ``site``."""
    (site / "tinyplug").mkdir(parents=True)
    (site / "tinyplug" / "__init__.py").write_text(textwrap.dedent(module))
    info = site / "tinyplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyplug\nVersion: 0.1\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[fuse4seg.models]\n{lines}")
    return site


def run_cli(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m fuse4seg ARGS`` with ``site`` first on PYTHONPATH (one torch thread)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fuse4seg", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.fixture
def clean_registries() -> Iterator[None]:
    """Restore the model and fusion-loss registries after a test that registers into them."""
    models = dict(registry.MODEL_REGISTRY)
    losses, weights = dict(fusion_losses.FUSION_LOSSES), dict(fusion_losses.DEFAULT_FUSION_WEIGHTS)
    yield
    for current, saved in ((registry.MODEL_REGISTRY, models), (fusion_losses.FUSION_LOSSES, losses),
                           (fusion_losses.DEFAULT_FUSION_WEIGHTS, weights)):
        current.clear()
        current.update(saved)


class TinyFusion(nn.Module):
    """Mean of the sources plus a small learned correction, in [0, 1]."""

    def __init__(self, in_channels: int = 2, width: int = 4) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv = nn.Conv2d(in_channels, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(torch.logit(x.mean(dim=1, keepdim=True).clamp(1e-4, 1 - 1e-4)) + self.conv(x))


def test_import_fuse4seg_is_lazy_and_exposes_the_api() -> None:
    """``import fuse4seg`` imports no torch and no submodule; every public name resolves."""
    code = ("import sys, fuse4seg; assert 'torch' not in sys.modules; "
            "assert not [m for m in sys.modules if m.startswith('fuse4seg.')]; "
            "[getattr(fuse4seg, n) for n in fuse4seg.__all__]; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout.strip() == "ok", done.stderr
    assert fuse4seg.train_run is __import__("fuse4seg.train.loop", fromlist=["train"]).train
    assert fuse4seg.register_model is registry.register_model


def test_register_model_from_python(clean_registries: None) -> None:
    """A registered network is listed, built with its options and accepted as a config's fusion_model; built-in
    names, duplicates and options without defaults are refused; unregister removes it."""
    assert fuse4seg.register_model("tiny-fusion")(TinyFusion) is TinyFusion  # decorator form
    assert "tiny-fusion" in registry.list_models(dims=2, plugins=False)
    assert registry.model_options("tiny-fusion") == {"in_channels": 2, "width": 4}
    assert registry.build_model("tiny-fusion", in_channels=3)(torch.rand(1, 3, 8, 8)).shape == (1, 1, 8, 8)
    config = fuse4seg.build_config({"benchmark": "b", "out": "r", "fusion_model": "tiny-fusion"})
    assert config.fusion_model == "tiny-fusion"
    with pytest.raises(ConfigError, match="built in and cannot be replaced"):
        fuse4seg.register_model("unet", TinyFusion)
    with pytest.raises(ConfigError, match="already registered"):
        fuse4seg.register_model("tiny-fusion", lambda in_channels=2: TinyFusion(in_channels))
    with pytest.raises(ConfigError, match="option 'width' has no default"):
        fuse4seg.register_model("bad", lambda width: width)
    fuse4seg.unregister_model("tiny-fusion")
    with pytest.raises(ConfigError, match="unknown model 'tiny-fusion'"):
        registry.build_model("tiny-fusion")


def test_register_fusion_loss_weighs_a_new_term_and_leaves_the_others_unchanged(clean_registries: None) -> None:
    """At default weight 0 the total and components are bit-identical to before; a TOML-style weight adds the
    term to the total and the components; bad names and weights are refused."""
    fused, sources = torch.rand(2, 1, 16, 16), torch.rand(2, 2, 16, 16)
    before_total, before_parts = fusion_losses.fusion_loss(fused, sources)

    def mean_gap(f: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return (f.mean() - s.mean()).abs()

    fuse4seg.register_fusion_loss("mean_gap", mean_gap)
    total, parts = fusion_losses.fusion_loss(fused, sources)
    assert torch.equal(total, before_total) and parts.keys() == before_parts.keys()
    assert all(torch.equal(parts[k], before_parts[k]) for k in parts)
    total, parts = fusion_losses.fusion_loss(fused, sources, {"mean_gap": 2.0})
    assert torch.equal(parts["mean_gap"], mean_gap(fused, sources))
    torch.testing.assert_close(total, before_total + 2.0 * mean_gap(fused, sources))
    config = fuse4seg.build_config({"benchmark": "b", "out": "r", "fusion_loss_weights": {"mean_gap": 0.5}})
    assert config.fusion_loss_weights["mean_gap"] == 0.5
    for name, fn, weight, message in [("ssim", mean_gap, 0, "built in"), ("mean_gap", lambda f, s: f, 0, "already"),
                                      ("bad name", mean_gap, 0, "identifier"), ("x", 3, 0, "callable"),
                                      ("x", mean_gap, -1, "finite number >= 0")]:
        with pytest.raises(ConfigError, match=message):
            fuse4seg.register_fusion_loss(name, fn, weight)
    fuse4seg.unregister_fusion_loss("mean_gap")
    with pytest.raises(ConfigError, match="unknown fusion loss 'mean_gap'"):
        fusion_losses.resolve_fusion_weights({"mean_gap": 1.0})


def test_broken_plugin_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    """A plug-in whose module does not import is one `error:` line naming it, for `train` with its name and for
    `models`; training a built-in network is unaffected by it."""
    site = install_plugin(tmp_path / "site", {"broken-fusion": "tinyplug.missing:Net", "my-fusion": "tinyplug:MixFusion"})
    for args in (["train", "--benchmark", str(tmp_path), "--out", str(tmp_path / "run"), "--fusion-model",
                  "broken-fusion"], ["models"]):
        done = run_cli(site, *args, cwd=tmp_path)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1, done.stderr
        assert "plug-in model 'broken-fusion'" in lines[0] and "tinyplug.missing:Net" in lines[0]
        assert "ModuleNotFoundError" in lines[0] and "Traceback" not in done.stderr


@pytest.mark.slow
def test_plugin_network_trains_and_evaluates_from_the_command_line(bench: Path, tmp_path: Path) -> None:
    """An installed package's entry point names a network the CLI lists (`fuse4seg models`), trains bi-level
    (`train --fusion-model my-fusion` with its option width) and evaluates."""
    site = install_plugin(tmp_path / "site", {"my-fusion": "tinyplug:MixFusion"})
    listed = run_cli(site, "models", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert any(line.split()[:2] == ["my-fusion", "fusion"] for line in listed.stdout.splitlines()), listed.stdout
    run = tmp_path / "run"
    done = run_cli(site, "train", "--benchmark", str(bench), "--out", str(run), "--fusion-model", "my-fusion",
                   "--fusion-width", "3", "--steps", "2", "--inner-steps", "1", "--seg-width", "4", "--seg-depth",
                   "2", "--batch-size", "2", "--eval-slices", "2", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    config = json.loads((run / "config.json").read_text())["options"]
    assert config["fusion_model"] == "my-fusion" and config["fusion_options"] == {"width": 3}
    done = run_cli(site, "evaluate", "--run", str(run), "--max-slices", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (run / "eval").is_dir() and any((run / "eval").iterdir())
    # Without the plug-in installed, the run's network is unknown: a one-line error, not a traceback.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    missing = subprocess.run([sys.executable, "-m", "fuse4seg", "evaluate", "--run", str(run)], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=300, check=False)
    assert missing.returncode == 1 and "unknown model 'my-fusion'" in missing.stderr, missing.stderr
