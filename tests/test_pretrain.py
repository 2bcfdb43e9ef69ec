"""Self-supervised pre-training (fuse4seg.pretrain): the three objectives against hand-worked cases, the
step's seeded draws, a run on the tiny package (files, TensorBoard, exact resume), loading the encoder into
the segmenters, the labelled-case draw, and bad input through the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fuse4seg.cli import main
from fuse4seg.errors import ConfigError
from fuse4seg.models.feature_fusion import FeatureFusionSegmenter
from fuse4seg.models.fusion import FusionCNN
from fuse4seg.models.unet import UNet
from fuse4seg.pretrain.model import PretrainNet, draw_step
from fuse4seg.pretrain.objectives import feature_alignment_loss, info_nce, masked_reconstruction_loss
from fuse4seg.pretrain.options import PretrainOptions
from fuse4seg.pretrain.runner import pretrain
from fuse4seg.runkit.checkpoint import load_checkpoint
from fuse4seg.runkit.pretrained import load_pretrained_encoder
from fuse4seg.train.labels import labelled_cases

TINY = {"width": 4, "depth": 2, "embed_dim": 8, "batch_size": 4, "progress": False}


# ---- objectives, by hand --------------------------------------------------------------------------------


def test_info_nce_two_by_two_by_hand() -> None:
    """a = (e1, e2), b = (e1, e1 + e2), T = 0.5: cosines [[1, 1/sqrt2], [0, 1/sqrt2]], logits = cosines / T;
    the loss is the mean of the row-wise and column-wise cross-entropies against the diagonal."""
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    r = math.sqrt(2.0)  # 1/sqrt(2) / 0.5
    rows = [-2 + math.log(math.exp(2) + math.exp(r)), -r + math.log(1 + math.exp(r))]
    cols = [-2 + math.log(math.exp(2) + 1), -r + math.log(2 * math.exp(r))]
    expected = 0.5 * (sum(rows) / 2 + sum(cols) / 2)
    assert info_nce(a, b, 0.5).item() == pytest.approx(expected, rel=1e-12)
    assert info_nce(3 * a, 0.5 * b, 0.5).item() == pytest.approx(expected, rel=1e-12)  # cosine: scale-free


def test_info_nce_limits() -> None:
    """Identical embeddings (no information) give log(N); well-separated pairs at a low temperature give ~0."""
    same = torch.ones(5, 3, dtype=torch.float64)
    assert info_nce(same, same, 0.1).item() == pytest.approx(math.log(5), rel=1e-12)
    eye = torch.eye(4, dtype=torch.float64)
    assert info_nce(eye, eye, 0.01).item() == pytest.approx(0.0, abs=1e-40)
    with pytest.raises(ConfigError, match="temperature"):
        info_nce(eye, eye, 0.0)


def test_masked_reconstruction_counts_masked_pixels_only() -> None:
    """pred 0, target [[1, 2], [3, 4]], mask on the diagonal: (1^2 + 4^2) / 2 = 8.5; no mask gives 0 with a graph."""
    target = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    pred = torch.zeros_like(target, requires_grad=True)
    mask = torch.tensor([[[[True, False], [False, True]]]])
    loss = masked_reconstruction_loss(pred, target, mask)
    assert loss.item() == pytest.approx(8.5)
    loss.backward()
    expected_grad = torch.tensor([[[[-1.0, 0.0], [0.0, -4.0]]]])  # d/dp (p - t)^2 / 2 = p - t, masked pixels only
    assert torch.equal(pred.grad, expected_grad)
    none = masked_reconstruction_loss(pred, target, torch.zeros_like(mask))
    assert none.item() == 0.0 and none.requires_grad
    # a (N, 1, ...) mask broadcast over two images: the mean runs over both images' masked pixels
    both = masked_reconstruction_loss(torch.zeros(2, 1, 2, 2), torch.arange(8.0).view(2, 1, 2, 2), mask)
    assert both.item() == pytest.approx((0 + 9 + 16 + 49) / 4)


def test_feature_alignment_by_hand() -> None:
    """1 - cos per location: equal or scaled 0, orthogonal 1, opposite 2, 45 degrees 1 - 1/sqrt2; the mean over
    locations of a map half equal, half orthogonal is 0.5."""
    x = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    y = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    assert feature_alignment_loss(x, 3 * x).item() == pytest.approx(0.0, abs=1e-7)
    assert feature_alignment_loss(x, y).item() == pytest.approx(1.0)
    assert feature_alignment_loss(x, -x).item() == pytest.approx(2.0)
    assert feature_alignment_loss(x, x + y).item() == pytest.approx(1 - 1 / math.sqrt(2))
    a = torch.cat([x, x], dim=3)  # (1, 2, 1, 2): two locations
    b = torch.cat([x, y], dim=3)
    assert feature_alignment_loss(a, b).item() == pytest.approx(0.5)
    with pytest.raises(ConfigError):
        feature_alignment_loss(a, x)


# ---- the network and its draws --------------------------------------------------------------------------


def test_draw_step_is_seeded_and_masks_the_asked_fraction() -> None:
    """The same (seed, step) gives the same draw; the pair is two distinct modalities, the masked one a third;
    each image hides round(fraction * cells) whole 4x4 cells."""
    d1 = draw_step(7, 3, batch=3, modalities=4, size=(16, 24), patch=4, mask_fraction=0.5)
    d2 = draw_step(7, 3, batch=3, modalities=4, size=(16, 24), patch=4, mask_fraction=0.5)
    assert d1.pair == d2.pair and d1.masked == d2.masked and torch.equal(d1.mask, d2.mask)
    assert len({*d1.pair, d1.masked}) == 3
    assert d1.mask.shape == (3, 1, 16, 24) and d1.mask.dtype == torch.bool
    cells = d1.mask[:, 0, ::4, ::4]  # one pixel per 4x4 cell
    assert torch.equal(d1.mask, cells.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None])
    assert cells.flatten(1).sum(1).tolist() == [12, 12, 12]  # 0.5 * 24 cells
    others = [draw_step(7, s, 3, 4, (16, 24), 4, 0.5) for s in range(8)]
    assert len({(d.pair, d.masked) for d in others}) > 1  # the choices move with the step
    assert draw_step(7, 0, 1, 4, (8, 8), 4, 0.01).mask.sum().item() == 16  # at least one cell


def test_every_objective_reaches_the_encoder() -> None:
    """Each loss alone has a finite, non-zero gradient on the shared encoder's first convolution."""
    torch.manual_seed(0)
    net = PretrainNet(width=4, depth=2, embed_dim=8)
    sources = torch.rand(3, 4, 12, 12)  # 12 is not a multiple of 4: padded inside
    draw = draw_step(0, 0, 3, 4, (12, 12), 4, 0.5)
    losses = net.losses(sources, draw, 0.1, (1.0, 1.0, 1.0))
    assert losses.total.item() == pytest.approx(
        (losses.consistency + losses.reconstruction + losses.alignment).item(), rel=1e-6)
    first = net.encoder[0][0][0].weight
    for name in ("consistency", "reconstruction", "alignment"):
        (grad,) = torch.autograd.grad(getattr(losses, name), first, retain_graph=True)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name


# ---- runs on the tiny package ---------------------------------------------------------------------------


def run_pretrain(bench: Path, out: Path, **overrides: object) -> dict:
    """pretrain with the tiny network on the session package."""
    return pretrain(PretrainOptions(benchmark=str(bench), out=str(out), **{**TINY, **overrides}))


def test_pretrain_writes_encoder_checkpoint_logs(bench: Path, tmp_path: Path) -> None:
    """A few steps write encoder.pt (weights-only, the shared encoder and its meta), last.pt, config.json,
    one metrics line per step and TensorBoard events, in a directory marked as a pretrain output."""
    out = tmp_path / "pre"
    summary = run_pretrain(bench, out, steps=3, checkpoint_every=2)
    assert summary["steps"] == 3 and summary["steps_this_call"] == 3
    assert json.loads((out / ".fuse4seg").read_text())["kind"] == "pretrain"
    payload = torch.load(out / "encoder.pt", weights_only=True)
    assert payload["meta"]["width"] == 4 and payload["meta"]["depth"] == 2 and payload["meta"]["norm"] == "group"
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == 3
    net_state = state["models"]["pretrain"]
    for key, value in payload["encoder"].items():
        assert torch.equal(value, net_state[f"encoder.{key}"])
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    assert all(math.isfinite(m["total"]) and m["masked"] not in m["pair"] for m in lines)
    # untrained embeddings barely separate 4 slices: the first InfoNCE is close to log(4)
    assert lines[0]["consistency"] == pytest.approx(math.log(4), abs=0.1)
    assert list((out / "tb").glob("events.out.tfevents.*"))
    config = json.loads((out / "config.json").read_text())
    assert config["pretrain"]["width"] == 4 and config["derived"]["slices"] == 9  # 3 train cases x 3 slices


def test_resume_is_bit_identical(bench: Path, tmp_path: Path) -> None:
    """4 steps in one call == 2 steps + --resume to 4: same weights, Adam state, encoder.pt and metrics."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    run_pretrain(bench, whole, steps=4, checkpoint_every=2)
    run_pretrain(bench, split, steps=2, checkpoint_every=2)
    summary = run_pretrain(bench, split, steps=4, checkpoint_every=2, resume=True)
    assert summary["steps_this_call"] == 2
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(split / "last.pt")
    for key, value in a["models"]["pretrain"].items():
        assert torch.equal(value, b["models"]["pretrain"][key]), key
    for (_, sa), (_, sb) in zip(sorted(a["optimizers"]["lower"]["state"].items()),
                                sorted(b["optimizers"]["lower"]["state"].items())):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    ea, eb = (torch.load(p / "encoder.pt", weights_only=True)["encoder"] for p in (whole, split))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    assert (whole / "metrics.jsonl").read_text() == (split / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="width"):
        run_pretrain(bench, split, steps=6, resume=True, width=8)


def test_load_pretrained_encoder_into_segmenters(bench: Path, tmp_path: Path) -> None:
    """encoder.pt goes, tensor for tensor, into UNet(in_channels=1).encoder and every FeatureFusionSegmenter
    encoder (their decoders untouched); a fusion net gets nothing; other widths or inputs are refused."""
    out = tmp_path / "pre"
    run_pretrain(bench, out, steps=1)
    saved = torch.load(out / "encoder.pt", weights_only=True)["encoder"]
    unet = UNet(in_channels=1, width=4, depth=2)
    decoder_before = {k: v.clone() for k, v in unet.decoder.state_dict().items()}
    assert load_pretrained_encoder(unet, out / "encoder.pt") == ["encoder"]
    assert all(torch.equal(v, saved[k]) for k, v in unet.encoder.state_dict().items())
    assert all(torch.equal(v, decoder_before[k]) for k, v in unet.decoder.state_dict().items())
    ff = FeatureFusionSegmenter(in_channels=2, width=4, depth=2)
    assert load_pretrained_encoder(ff, out / "encoder.pt") == ["encoders.0", "encoders.1"]
    for encoder in ff.encoders:
        assert all(torch.equal(v, saved[k]) for k, v in encoder.state_dict().items())
    assert load_pretrained_encoder(FusionCNN(in_channels=2, width=4), out / "encoder.pt") == []
    with pytest.raises(ConfigError, match="width 4.*width 8"):
        load_pretrained_encoder(UNet(in_channels=1, width=8, depth=2), out / "encoder.pt")
    with pytest.raises(ConfigError, match="2 input channel"):
        load_pretrained_encoder(UNet(in_channels=2, width=4, depth=2), out / "encoder.pt")
    with pytest.raises(ConfigError, match="not a pretrain encoder"):
        load_pretrained_encoder(unet, out / "last.pt")


# ---- labelled cases -------------------------------------------------------------------------------------


def test_labelled_cases_by_patient_seeded_and_sized() -> None:
    """round-half-up(F * cases) patients (at least one), the same for the same seed whatever the slice order,
    another set for another seed."""
    cases = [f"case{i:02d}" for i in range(20)]
    slices = [c for c in cases for _ in range(3)]  # three slices per patient
    chosen = labelled_cases(slices, 0.25, seed=0)
    assert len(chosen) == 5 and chosen <= set(cases)
    assert labelled_cases(list(reversed(slices)), 0.25, seed=0) == chosen
    assert labelled_cases(cases, 0.25, seed=1) != chosen
    assert len(labelled_cases(cases, 0.01, seed=0)) == 1
    assert len(labelled_cases(cases, 0.125, seed=0)) == 3  # 2.5 rounds up
    assert labelled_cases(cases, 1.0, seed=3) == set(cases)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="label_fraction"):
            labelled_cases(cases, bad, seed=0)


# ---- command line ---------------------------------------------------------------------------------------


def cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_pretrain_runs(bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The command trains and reports where the encoder is."""
    out = tmp_path / "pre"
    code, stdout, err = cli(["pretrain", "--benchmark", str(bench), "--out", str(out), "--steps", "1", "--width", "4",
                             "--depth", "2", "--embed-dim", "8", "--batch-size", "2", "--no-progress"], capsys)
    assert code == 0, err
    assert "pre-trained 1 steps" in stdout and (out / "encoder.pt").is_file()


def test_cli_resume_takes_the_runs_options(bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`pretrain --out PRE --resume --steps 4` (no --benchmark, no sizes) continues the run with its stored options
    and reaches the encoder of an uninterrupted 4-step run; a differing size given on resume is refused."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    run_pretrain(bench, whole, steps=4, checkpoint_every=2)
    run_pretrain(bench, split, steps=2, checkpoint_every=2)
    code, stdout, err = cli(["pretrain", "--out", str(split), "--resume", "--steps", "4", "--no-progress"], capsys)
    assert code == 0 and "pre-trained 4 steps" in stdout, err
    ea, eb = (torch.load(p / "encoder.pt", weights_only=True)["encoder"] for p in (whole, split))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    code, _, err = cli(["pretrain", "--out", str(split), "--resume", "--steps", "6", "--width", "8"], capsys)
    assert code == 1 and err.startswith("error: --width:") and err.count("\n") == 1
    code, _, err = cli(["pretrain", "--out", str(tmp_path / "fresh")], capsys)
    assert code == 1 and err.startswith("error: --benchmark:") and "required" in err


@pytest.mark.parametrize(("extra", "pattern"), [
    (("--mask-fraction", "0"), "--mask-fraction: must be > 0, got 0"),
    (("--batch-size", "1"), "--batch-size: must be >= 2, got 1"),
    (("--splits", "train,test"), "--splits:"),
    (("--norm", "batch"), "--norm: must be one of group, instance"),
])
def test_cli_bad_options(bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: tuple[str, ...],
                         pattern: str) -> None:
    """A bad value is one `error:` line naming the flag, exit 1, and nothing written."""
    code, _, err = cli(["pretrain", "--benchmark", str(bench), "--out", str(tmp_path / "pre"), *extra], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], err
    assert not any(tmp_path.iterdir())


def test_cli_missing_benchmark(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A benchmark directory that does not exist is one line naming --benchmark; --out is not created."""
    code, _, err = cli(["pretrain", "--benchmark", str(tmp_path / "nope"), "--out", str(tmp_path / "pre")], capsys)
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: --benchmark:") and "does not exist" in err
    assert not (tmp_path / "pre").exists()


def test_resume_after_a_kill_mid_run(bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted inside step 4 (checkpoint at 2, metrics and TensorBoard already at 3), then resumed: the final
    weights and the metrics equal an uninterrupted run's (the killed run's lines past step 2 are dropped)."""
    from fuse4seg.pretrain import runner

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_pretrain(bench, whole, steps=5, checkpoint_every=2)
    original = runner.Pretrainer.one_step

    def interrupted(self: runner.Pretrainer, sources: torch.Tensor) -> dict:
        """Step as usual, but the 4th step is interrupted half-way."""
        if self.step == 3:
            raise KeyboardInterrupt
        return original(self, sources)

    monkeypatch.setattr(runner.Pretrainer, "one_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(bench, killed, steps=5, checkpoint_every=2)
    assert load_checkpoint(killed / "last.pt")["step"] == 2  # mid-step: the periodic checkpoint is kept
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 3
    monkeypatch.setattr(runner.Pretrainer, "one_step", original)
    run_pretrain(bench, killed, steps=5, checkpoint_every=2, resume=True)
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(killed / "last.pt")
    assert all(torch.equal(v, b["models"]["pretrain"][k]) for k, v in a["models"]["pretrain"].items())
    assert (whole / "metrics.jsonl").read_text() == (killed / "metrics.jsonl").read_text()


def test_cli_options_are_the_fields() -> None:
    """pretrain has one option per PretrainOptions field, in declaration order, with its help and default."""
    import dataclasses

    import typer.main

    from fuse4seg.cli import app

    params = {p.name: p for p in typer.main.get_command(app).commands["pretrain"].params}
    fields = {f.name: f for f in dataclasses.fields(PretrainOptions)}
    assert list(params) == list(fields)
    # --benchmark and --out are checked by PretrainOptions.validate (--resume takes the run's benchmark).
    assert params["benchmark"].default == params["out"].default == "" and params["splits"].default == "train"
    assert all(params[n].default == fields[n].default for n in fields if n != "splits")
    assert all(params[n].help == fields[n].metadata["help"] for n in fields)
    assert params["mask_fraction"].opts == ["--mask-fraction"] and params["progress"].secondary_opts == ["--no-progress"]


def test_existing_output_needs_overwrite(bench: Path, tmp_path: Path) -> None:
    """An existing --out is refused without --overwrite and replaced with it (no temporary sibling left); a
    directory that is not a pretrain output is never replaced."""
    out = tmp_path / "pre"
    run_pretrain(bench, out, steps=1)
    with pytest.raises(ConfigError, match="already exists"):
        run_pretrain(bench, out, steps=1)
    run_pretrain(bench, out, steps=2, overwrite=True)
    assert load_checkpoint(out / "last.pt")["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pre"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a fuse4seg pretrain"):
        run_pretrain(bench, other, steps=1, overwrite=True)
    assert (other / "keep.txt").read_text() == "x"
