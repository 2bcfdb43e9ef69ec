"""Training configuration (TOML, overrides, validation), deterministic batches, checkpoints, CLI errors."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fuse4seg.cli import main
from fuse4seg.errors import ConfigError, DataError, cli_message
from fuse4seg.runkit.batches import batch_indices, split_by_case
from fuse4seg.runkit.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from fuse4seg.train.command_line import cli_overrides, error_flags
from fuse4seg.train.config import TrainConfig
from fuse4seg.train.resolve import build_config, resolve_steps
from fuse4seg.train.run import read_config_json, write_config_json


def test_defaults_toml_and_cli_precedence(tmp_path: Path) -> None:
    """defaults < TOML < CLI; option tables merge key by key; every option lands in config.json."""
    toml = tmp_path / "c.toml"
    toml.write_text('[train]\nbenchmark = "B"\nout = "R"\nlr-upper = 0.5\nsteps = 7\nfusion-inputs = "t1,flair"\n'
                    'seg_options = { width = 8, depth = 2 }\n')
    c = build_config(cli_overrides({"lr_upper": None, "seg_depth": 3, "batch_size": 2}), toml)
    assert (c.lr_upper, c.steps, c.batch_size, c.fusion_inputs) == (0.5, 7, 2, ("t1", "flair"))
    assert c.seg_options == {"width": 8, "depth": 3}
    assert c.engine.lr == TrainConfig().engine.lr
    write_config_json(c, tmp_path / "config.json", {"total_steps": 7})
    stored = json.loads((tmp_path / "config.json").read_text())
    assert set(stored["options"]) == set(TrainConfig().to_dict())
    assert read_config_json(tmp_path / "config.json") == c
    # --epochs on the command line replaces the file's --steps instead of clashing with it
    assert build_config({"epochs": 2}, toml).steps is None


@pytest.mark.parametrize("inputs", ["fused", "t1ce", "t1,t2,flair"])
def test_config_survives_its_stored_form(inputs: str) -> None:
    """to_dict (config.json, checkpoints) -> config_from_dict gives the same config back."""
    from fuse4seg.train.resolve import config_from_dict

    c = build_config({"benchmark": "b", "out": "o", "mode": "direct", "inputs": inputs, "seg_options": {"width": 4}})
    assert config_from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_finite_difference_defaults_to_an_sgd_inner_step() -> None:
    """Adam is the inner default, except for DARTS finite differences, which differentiate an SGD step."""
    assert build_config({"benchmark": "b", "out": "o"}).engine.optimizer == "adam"
    fd = build_config({"benchmark": "b", "out": "o", "hypergrad": "finite-difference"})
    assert fd.engine.optimizer == "sgd"


def test_resolve_steps_from_epochs() -> None:
    """ceil(epochs * slices / batch), one epoch by default."""
    c = TrainConfig(benchmark="b", out="o", epochs=2.5, batch_size=4)
    assert resolve_steps(c, 10) == 7  # ceil(25 / 4)
    assert resolve_steps(TrainConfig(benchmark="b", out="o", batch_size=4), 10) == 3


@pytest.mark.parametrize(("overrides", "message"), [
    ({"mode": "nonsense"}, "--mode"),
    ({"steps": 0}, "--steps"),
    ({"steps": 3, "epochs": 1.0}, "--steps: give steps or epochs, not both"),
    ({"lr_upper": -1.0}, "--lr-upper"),
    ({"hypergrad": "magic"}, "--hypergrad"),
    ({"fusion_inputs": "t1ce,bogus"}, "--fusion-inputs"),
    ({"batch_size": "many"}, "--batch-size"),
    ({"val_fraction": 1.0}, "--val-fraction"),
    ({"inner_steps": 2, "truncate": 3}, "--truncate"),
    ({"mode": "bilevel", "inputs": "t1"}, "--inputs"),
    ({"seg_model": "resnet"}, "--seg-model"),
    ({"hypergrad": "finite-difference", "inner_optimizer": "adam"}, "--inner-optimizer"),
])
def test_bad_options_raise_config_error_naming_the_option(overrides: dict, message: str) -> None:
    """Each bad value is a ConfigError naming the option: by its key for a Python caller (``lr_upper: ...``),
    by its flag on the command line (``--lr-upper: ...``, errors.cli_message)."""
    with pytest.raises(ConfigError) as caught:
        build_config({"benchmark": "b", "out": "o", **overrides})
    key = message.split(":")[0].removeprefix("--").replace("-", "_")
    assert caught.value.option == key and str(caught.value).startswith(f"{key}: "), str(caught.value)
    assert cli_message(caught.value, error_flags()).startswith(message)


def test_unknown_toml_key(tmp_path: Path) -> None:
    """An unknown key in the TOML file is named with the file."""
    toml = tmp_path / "c.toml"
    toml.write_text("lr_uper = 0.1\n")
    with pytest.raises(ConfigError, match="unknown option 'lr_uper'"):
        build_config({"benchmark": "b", "out": "o"}, toml)


def test_batches_depend_only_on_seed_and_step() -> None:
    """Same (seed, step) -> same batch; an epoch of full batches is a permutation of the pool."""
    n, b = 12, 4
    steps = [batch_indices(n, b, seed=3, step=s) for s in range(6)]
    assert steps[4] == batch_indices(n, b, seed=3, step=4)
    epoch0, epoch1 = [i for s in steps[:3] for i in s], [i for s in steps[3:] for i in s]
    assert sorted(epoch0) == list(range(n)) and sorted(epoch1) == list(range(n))
    assert steps[:3] != steps[3:]  # a new order each epoch
    assert batch_indices(n, b, seed=4, step=0) != steps[0]
    # a batch straddling an epoch boundary takes the tail of one permutation and the head of the next
    assert batch_indices(10, 4, seed=0, step=2)[:2] == batch_indices(10, 2, seed=0, step=4)


def test_split_by_case_keeps_cases_whole() -> None:
    """Held-out and fitting slices never share a case; about the asked fraction of cases is held out."""
    ids = [f"c{i // 3}" for i in range(30)]  # 10 cases x 3 slices
    fit, hold = split_by_case(ids, 0.2, seed=0)
    assert sorted(fit + hold) == list(range(30))
    assert not {ids[i] for i in fit} & {ids[i] for i in hold}
    assert len({ids[i] for i in hold}) == 2
    with pytest.raises(ConfigError, match="^val_fraction: "):
        split_by_case(["a", "a"], 0.2, seed=0)


def full_state(models: dict, lower: dict | None, rng: dict) -> dict:
    """A checkpoint with every entry the training loop writes (direct mode: no upper optimiser)."""
    return {"config": {"mode": "direct"}, "step": 2, "total_steps": 4, "models": models,
            "optimizers": {"upper": None, "lower": lower}, "inner_state": None, "rng": rng,
            "counters": {"skipped": 0, "bad_in_a_row": 0}, "best": {"score": -math.inf, "step": -1}}


def _drop(state: dict, dotted: str) -> None:
    """Delete a dotted key from nested dicts."""
    *parents, last = dotted.split(".")
    for part in parents:
        state = state[part]
    del state[last]


def _set(state: dict, dotted: str, value: object) -> None:
    """Set a dotted key inside nested dicts."""
    *parents, last = dotted.split(".")
    for part in parents:
        state = state[part]
    state[last] = value


@pytest.mark.parametrize(("edit", "key", "message"), [
    ("drop", "rng", "lacks 'rng'"),
    ("drop", "optimizers", "lacks 'optimizers'"),
    ("drop", "counters.bad_in_a_row", "lacks 'counters.bad_in_a_row'"),
    ("drop", "best.score", "lacks 'best.score'"),
    ("drop", "total_steps", "lacks 'total_steps'"),
    ("set", "step", "entry 'step' is str, expected int"),
    ("set", "rng.torch", "entry 'rng.torch' is list, expected Tensor"),
    ("set", "counters.skipped", "entry 'counters.skipped' is bool, expected int"),
    ("set", "models.seg", "'models.seg' is not a state dict of tensors"),
    ("set", "optimizers.lower", "'optimizers.lower' is not an optimiser state dict"),
])
def test_checkpoint_missing_or_mistyped_entry_is_a_data_error(tmp_path: Path, edit: str, key: str, message: str
                                                               ) -> None:
    """Each entry the loop reads on resume is checked at load: DataError naming the file and the key."""
    net = torch.nn.Linear(3, 2)
    state = full_state({"seg": net.state_dict()}, torch.optim.SGD(net.parameters(), lr=0.1).state_dict(),
                       capture_rng_state())
    bad_values = {"step": "2", "rng.torch": [1, 2], "counters.skipped": True, "models.seg": {"weight": [1.0]},
                  "optimizers.lower": {"state": {}}}
    _drop(state, key) if edit == "drop" else _set(state, key, bad_values[key])
    path = save_checkpoint(tmp_path / "odd.pt", state)
    with pytest.raises(DataError, match=f"odd.pt.*{re.escape(message)}"):
        load_checkpoint(path)


def test_checkpoint_roundtrip_weights_only_and_rng(tmp_path: Path) -> None:
    """Tensors, optimiser state and RNG states survive save/load with weights_only=True."""
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    torch.manual_seed(5)
    np.random.seed(6)
    random.seed(7)
    rng = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    path = save_checkpoint(tmp_path / "x.pt", full_state({"seg": net.state_dict()}, opt.state_dict(), rng))
    state = torch.load(path, weights_only=True)  # plain data: no code is needed to read it
    assert torch.equal(state["models"]["seg"]["weight"], net.weight.detach())
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    opt2.load_state_dict(state["optimizers"]["lower"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    restore_rng_state(load_checkpoint(path)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
    assert not list(tmp_path.glob(".*partial"))  # the atomic write left no temporary file


class _Payload:
    """An arbitrary object: pickled code that weights_only loading must refuse."""


def test_checkpoint_with_code_or_garbage_is_refused(tmp_path: Path) -> None:
    """A pickle holding an arbitrary object, or a corrupt file, is a DataError naming the file."""
    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "config": {}, "step": 0, "models": {}, "x": _Payload()}, evil)
    with pytest.raises(DataError, match="evil.pt"):
        load_checkpoint(evil)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="bad.pt"):
        load_checkpoint(bad)


def _write_bad_checkpoint(path: Path, kind: str) -> None:
    """Write a file that is not a fuse4seg checkpoint: raw bytes, a pickled object, empty, or a bare tensor."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif kind == "object":
        torch.save({"format": 1, "config": {}, "step": 0, "models": {}, "x": _Payload()}, path)
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        torch.save(torch.zeros(3), path)


@pytest.mark.parametrize("kind", ["garbage", "object", "empty", "tensor"])
@pytest.mark.parametrize("command", ["fuse", "build-benchmark"])
def test_cli_bad_checkpoint_is_one_line_without_weights_only_advice(
        tmp_path: Path, capsys: pytest.CaptureFixture, kind: str, command: str) -> None:
    """`fuse --run RUN` (RUN/best.pt) and `build-benchmark --fusion-checkpoint`: a file that is not a
    checkpoint exits 1 with one line "PATH is not a fuse4seg checkpoint (...)" that never suggests
    weights_only=False (torch's advice: a checkpoint is untrusted data, not code)."""
    path = tmp_path / "run" / "best.pt"
    _write_bad_checkpoint(path, kind)
    out = str(tmp_path / "out")
    argv = (["fuse", "--run", str(path.parent), "--case", str(tmp_path / "case"), "--out", out] if command == "fuse"
            else ["build-benchmark", "--out", out, "--fusion-checkpoint", str(path)])
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {path} is not a fuse4seg checkpoint (") and err.endswith(")"), err
    assert "weights_only" not in err and "trusted" not in err and "add_safe_globals" not in err
    assert not (tmp_path / "out").exists()


def test_cli_fusion_checkpoint_with_mismatched_weights_is_one_line(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """`build-benchmark --fusion-checkpoint` on a well-formed checkpoint whose fusion weights do not fit the
    network its config builds (a wider layer) exits 1 with one DataError line naming the file, no traceback."""
    from fuse4seg.train.networks import build_pipeline

    config = build_config({"mode": "bilevel", "benchmark": str(tmp_path / "bench"), "out": str(tmp_path / "run")})
    models = build_pipeline(config).state_dicts()
    name, weight = next(iter(models["fusion"].items()))
    models["fusion"][name] = torch.zeros(weight.shape[0] + 1, *weight.shape[1:])
    state = full_state(models, None, capture_rng_state())
    state["config"] = config.to_dict()
    path = save_checkpoint(tmp_path / "run" / "best.pt", state)
    rc = main(["build-benchmark", "--out", str(tmp_path / "out"), "--fusion-checkpoint", str(path)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: checkpoint {path}: weights do not fit the networks: "), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [
    ["--mode", "nonsense"],
    ["--steps", "0"],
    ["--bilevel", "--mode", "direct"],
    ["--lr-lower", "0"],
])
def test_cli_bad_options_exit_1_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str]) -> None:
    """Bad options: exit status 1 and exactly one `error:` line on stderr, no traceback."""
    rc = main(["train", "--benchmark", str(tmp_path), "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("error: ") and len(err.splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_cuda_is_a_config_error() -> None:
    """--device cuda on a CPU-only machine is refused with a message naming the option."""
    from fuse4seg.runkit.device import resolve_device

    with pytest.raises(ConfigError, match="^device: cuda asked for") as caught:
        resolve_device("cuda")
    assert cli_message(caught.value).startswith("--device: cuda")


def test_cli_missing_benchmark_and_resume_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A directory without brats_fuse.h5, and --resume without last.pt, are one-line errors."""
    assert main(["train", "--benchmark", str(tmp_path), "--out", str(tmp_path / "r"), "--steps", "1"]) == 1
    assert "brats_fuse.h5" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing written for a failed start
    assert main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --out: ") and "config.json not found" in err  # train has no --run option


@pytest.mark.parametrize(("args", "option", "where"), [
    (["--mode", "direct", "--hypergrad", "implicit-cg"], "--hypergrad", "--mode bilevel"),
    (["--mode", "joint", "--inner-steps", "3"], "--inner-steps", "--mode bilevel"),
    (["--mode", "two-stage", "--damping", "0.1"], "--damping", "implicit-cg or implicit-neumann"),
    (["--hypergrad", "unrolled", "--damping", "0.1"], "--damping", "implicit-cg or implicit-neumann"),
    (["--hypergrad", "unrolled", "--truncate", "1"], "--truncate", "--hypergrad truncated"),
    (["--hypergrad", "implicit-cg", "--neumann-terms", "3"], "--neumann-terms", "implicit-neumann"),
    (["--hypergrad", "implicit-cg", "--neumann-alpha", "0.1"], "--neumann-alpha", "implicit-neumann"),
    (["--hypergrad", "unrolled", "--cg-iters", "3"], "--cg-iters", "implicit-cg"),
    (["--mode", "direct", "--fd-eps", "0.1"], "--fd-eps", "finite-difference"),
    (["--inner-optimizer", "adam", "--inner-momentum", "0.5"], "--inner-momentum", "--inner-optimizer momentum"),
    (["--mode", "joint", "--fusion-steps", "2"], "--fusion-steps", "--mode bilevel, two-stage"),
    (["--mode", "direct", "--fusion-width", "4"], "--fusion-width/fusion_options", "--mode bilevel, two-stage, joint"),
    (["--mode", "feature-fusion", "--lr-upper", "0.1"], "--lr-upper", "--mode bilevel, two-stage, joint"),
    (["--mode", "bilevel", "--lower-optimizer", "sgd"], "--lower-optimizer", "other than bilevel"),
    (["--mode", "direct", "--val-fraction", "0.3"], "--val-fraction", "--mode bilevel"),
])
def test_cli_option_the_mode_ignores_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
                                                option: str, where: str) -> None:
    """An explicitly given option that the chosen mode/method never reads: one line naming both, exit 1."""
    rc = main(["train", "--benchmark", str(tmp_path), "--out", str(tmp_path / "run"), "--steps", "1", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {option}: only used with ") and where in err, err
    assert not (tmp_path / "run").exists()


def test_relevant_options_and_defaults_pass_the_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Options that apply pass (the run then stops at the missing data); a TOML option counts as given."""
    for args in (["--hypergrad", "truncated", "--truncate", "1", "--inner-steps", "2"],
                 ["--hypergrad", "implicit-neumann", "--neumann-alpha", "0.1", "--damping", "0.2"],
                 ["--inner-optimizer", "momentum", "--inner-momentum", "0.5"],
                 ["--mode", "two-stage", "--fusion-steps", "1", "--steps", "2"],
                 ["--mode", "direct", "--lower-optimizer", "sgd", "--region-based"]):
        assert main(["train", "--benchmark", str(tmp_path), "--out", str(tmp_path / "r"), *args]) == 1
        assert "brats_fuse.h5" in capsys.readouterr().err, args
    toml = tmp_path / "c.toml"
    toml.write_text('mode = "joint"\nfusion-steps = 3\n')
    assert main(["train", "--benchmark", str(tmp_path), "--out", str(tmp_path / "r"), "--config", str(toml)]) == 1
    assert "--fusion-steps: only used with --mode bilevel, two-stage" in capsys.readouterr().err
    # library callers may share one option set across modes (experiments); only strict mode refuses
    assert build_config({"benchmark": "b", "out": "o", "mode": "direct", "lr_upper": 0.1}).lr_upper == 0.1


def test_creating_the_data_loader_leaves_the_global_rng_alone() -> None:
    """Starting a step loader draws no number from torch's global RNG (exact resume with augmentation)."""
    from fuse4seg.runkit.batches import step_loader

    data = torch.utils.data.TensorDataset(torch.arange(10.0))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    batches = [b[0].tolist() for b in step_loader(data, list(range(10)), 4, seed=1, start=0, stop=3, stream="fit")]
    assert torch.equal(torch.rand(3), expected)
    assert batches == [[float(i) for i in batch_indices(10, 4, 1, s)] for s in range(3)]


def test_every_test_gets_the_shared_one_thread_fixture(request: pytest.FixtureRequest) -> None:
    """conftest's autouse one_torch_thread applies here (a module that defines no fixture of its own)."""
    assert "one_torch_thread" in request.fixturenames
    assert torch.get_num_threads() == 1
