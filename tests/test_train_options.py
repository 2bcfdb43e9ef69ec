"""Options declared once: the `train` command, relevance checks, the stored form and the mode registry all
derive from the declarations (fuse4seg.train.config, fuse4seg.bilevel.Options, fuse4seg.train.modes)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import click
import pytest
import torch
import typer

from fuse4seg.errors import ConfigError
from fuse4seg.train.command_line import command_line_options
from fuse4seg.train.config import OPTIONS, TrainConfig
from fuse4seg.train.modes import MODES
from fuse4seg.train.resolve import build_config, config_from_dict, where_used

#: Every flag `fuse4seg train` accepted before its options were declared once (from its --help then).
FLAGS_BEFORE = (
    "--batch-size", "--benchmark", "--bilevel", "--cache", "--cg-iters", "--checkpoint-every", "--config",
    "--damping", "--device", "--epochs", "--eval-every", "--eval-slices", "--fd-eps", "--fusion-inputs",
    "--fusion-model", "--fusion-steps", "--fusion-width", "--hypergrad", "--inner-momentum",
    "--inner-optimizer", "--inner-steps", "--inputs", "--label-based", "--lambda-seg", "--log-every",
    "--lower-optimizer", "--lr-lower", "--lr-upper", "--max-bad-steps", "--mode", "--neumann-alpha",
    "--neumann-terms", "--no-cache", "--no-progress", "--num-workers", "--out", "--overwrite", "--progress",
    "--region-based", "--resume", "--seed", "--seg-depth", "--seg-model", "--seg-width", "--steps",
    "--threads", "--truncate", "--upper-optimizer", "--val-fraction",
)


def train_click_command() -> click.Command:
    """The click command `fuse4seg train` builds (on first use) from the declarations."""
    from fuse4seg.cli import app

    group = typer.main.get_command(app)
    return group.get_command(click.Context(group), "train")


def test_train_command_lists_every_declared_option_with_its_help() -> None:
    """Every flag accepted before is still there; every option has its declared help; --help prints them."""
    params = {opt: p for p in train_click_command().params for opt in (*p.opts, *p.secondary_opts)}
    assert set(FLAGS_BEFORE) <= set(params)
    assert {"--cg-tol", "--inner-betas"} <= set(params)  # the engine's other options, now declared once too
    for name, _, declaration in command_line_options():
        flag = declaration.metadata["flag"].split("/")[0]
        assert params[flag].name == name and params[flag].help == declaration.metadata["help"]
        assert params[flag].default is None  # not given: the TOML file or the declared default applies
    assert OPTIONS["inner_steps"].metadata["help"] in params["--inner-steps"].help
    assert "Only with --mode bilevel --hypergrad truncated" in params["--truncate"].help


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[TrainConfig]:
    """Configs that `fuse4seg train` would train (training itself replaced by recording the config)."""
    from fuse4seg.train import loop

    seen: list[TrainConfig] = []
    summary = {"run": "r", "mode": "m", "steps": 0, "steps_this_call": 0, "skipped": 0, "seconds": 0.0,
               "val": {}, "best_step": -1, "tensorboard": "tb"}
    monkeypatch.setattr(loop, "train", lambda config: seen.append(config) or summary)
    return seen


def run_train(args: list[str]) -> None:
    """`fuse4seg train ARGS` through the command line; it must succeed."""
    from fuse4seg.cli import main

    assert main(["train", "--benchmark", "b", "--out", "o", *args]) == 0


def test_every_flag_parses_as_before(parsed: list[TrainConfig]) -> None:
    """Each flag sets the option it always set (engine options nested under hypergrad, by their flags)."""
    run_train(["--bilevel", "--hypergrad", "truncated", "--inner-steps", "3", "--truncate", "2", "--inner-optimizer",
               "momentum", "--inner-momentum", "0.5", "--lr-lower", "0.01", "--lr-upper", "0.02", "--upper-optimizer",
               "sgd", "--lambda-seg", "2", "--val-fraction", "0.3", "--fusion-model", "fusion-freq", "--fusion-width",
               "4", "--seg-width", "6", "--seg-depth", "2", "--fusion-inputs", "t1,flair", "--region-based", "--steps",
               "5", "--batch-size", "2", "--eval-every", "2", "--eval-slices", "3", "--checkpoint-every", "2",
               "--log-every", "2", "--num-workers", "1", "--no-cache", "--device", "cpu", "--threads", "1", "--seed",
               "3", "--max-bad-steps", "4", "--no-progress", "--overwrite", "--seg-model", "unet"])
    c = parsed.pop()
    assert (c.mode, c.method, c.engine.steps, c.engine.truncate, c.engine.optimizer) == (
        "bilevel", "truncated", 3, 2, "momentum")
    assert (c.engine.momentum, c.engine.lr, c.lr_upper, c.upper_optimizer, c.lambda_seg) == (0.5, 0.01, 0.02,
                                                                                                    "sgd", 2.0)
    assert (c.val_fraction, c.fusion_model, c.fusion_options, c.seg_options, c.fusion_inputs) == (
        0.3, "fusion-freq", {"width": 4}, {"width": 6, "depth": 2}, ("t1", "flair"))
    assert (c.region_based, c.steps, c.batch_size, c.eval_every, c.eval_slices, c.checkpoint_every) == (
        True, 5, 2, 2, 3, 2)
    assert (c.log_every, c.num_workers, c.cache, c.device, c.threads, c.seed, c.max_bad_steps, c.progress) == (
        2, 1, False, "cpu", 1, 3, 4, False)
    assert c.overwrite and not c.resume and c.seg_model == "unet"
    run_train(["--hypergrad", "implicit-neumann", "--neumann-terms", "3", "--neumann-alpha", "0.1", "--damping", "0.2"])
    run_train(["--hypergrad", "implicit-cg", "--cg-iters", "4", "--cg-tol", "1e-6", "--inner-betas", "0.8,0.9"])
    run_train(["--hypergrad", "finite-difference", "--fd-eps", "0.02"])
    run_train(["--mode", "two-stage", "--fusion-steps", "2", "--steps", "5", "--lower-optimizer", "sgd"])
    run_train(["--mode", "direct", "--inputs", "t1,t2", "--label-based", "--cache", "--progress", "--epochs", "1.5"])
    neumann, cg, fd, two, direct = parsed
    assert (neumann.engine.neumann_terms, neumann.engine.neumann_alpha, neumann.engine.damping) == (3, 0.1,
                                                                                                         0.2)
    assert (cg.engine.cg_iters, cg.engine.tol, cg.engine.betas) == (4, 1e-6, (0.8, 0.9))
    assert (fd.engine.eps, fd.engine.optimizer) == (0.02, "sgd")  # sgd: finite-difference's default
    assert (two.mode, two.fusion_steps, two.lower_optimizer) == ("two-stage", 2, "sgd")
    assert (direct.inputs, direct.region_based, direct.cache, direct.progress, direct.epochs) == (
        ("t1", "t2"), False, True, True, 1.5)


def test_every_option_a_mode_ignores_is_refused() -> None:
    """For every declared option restricted to some modes, giving it with a mode that does not read it is a
    ConfigError naming the option (derived from the declaration, not a table)."""
    restricted = {key: where_used(d)[0] for key, d in OPTIONS.items() if where_used(d)[0]}
    assert {"hypergrad", "inner_steps", "truncate", "fd_eps", "cg_iters", "damping", "val_fraction",
            "lower_optimizer", "fusion_steps", "lambda_seg", "lr_upper"} <= set(restricted)
    assert "lr_lower" not in restricted  # the segmenter's learning rate in every mode
    for key, modes in restricted.items():
        other = next(m for m in MODES if m not in modes)
        table = {"ssim": 1.0} if key == "fusion_loss_weights" else {"width": 4}  # a valid entry of each table
        value = OPTIONS[key].get(TrainConfig()) or (table if OPTIONS[key].base_type is dict else 1)
        with pytest.raises(ConfigError, match="only used with") as caught:
            build_config({"benchmark": "b", "out": "o", "mode": other, key: value}, strict=True)
        assert caught.value.option == key


def test_declared_modes_exist_and_agree_with_the_registry() -> None:
    """Every mode name an option declares is registered; a mode with an upper optimiser has a fusion net."""
    for key, d in OPTIONS.items():
        assert set(where_used(d)[0] or ()) <= set(MODES), key
    for mode in MODES.values():
        assert ("upper" in mode.optimisers) == mode.has_fusion
        assert set(mode.optimisers) <= {"upper", "lower"}


def test_stored_config_of_an_earlier_version_reads() -> None:
    """config.json written before the engine options were nested (truncate: null, no cg_tol/inner_betas)
    reads with the declared defaults; the stored form round-trips."""
    stored = build_config({"benchmark": "b", "out": "o"}).to_dict()
    stored.pop("cg_tol")
    stored.pop("inner_betas")
    stored["truncate"] = None
    c = config_from_dict(stored)
    assert c == build_config({"benchmark": "b", "out": "o"}) and c.engine.truncate == 1
    assert config_from_dict(c.to_dict()) == c


def test_bilevel_step_keeps_the_engines_batchnorm_guard(tmp_path: Path) -> None:
    """The bi-level step goes through module_hypergradient, so a BatchNorm segmenter is refused by its guard."""
    from fuse4seg.distributed import World
    from fuse4seg.train.networks import Pipeline
    from fuse4seg.train.optimisers import Optimisers
    from fuse4seg.train.steps import bilevel_step

    fusion = torch.nn.Conv2d(2, 1, 1)
    seg = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 1), torch.nn.BatchNorm2d(4))
    batch = {"source": torch.rand(2, 4, 8, 8), "fused": torch.rand(2, 1, 8, 8), "label": torch.zeros(2, 8, 8)}
    t = SimpleNamespace(config=build_config({"benchmark": "b", "out": "o"}), device=torch.device("cpu"), step=0,
                        pipeline=Pipeline(fusion, seg, ("t1ce", "flair")), fusion_steps=0, world=World(), unlabelled=None,
                        opts=Optimisers(torch.optim.SGD(fusion.parameters(), lr=0.1), None))
    with pytest.raises(ConfigError, match="BatchNorm"):
        bilevel_step(t, batch, batch)
