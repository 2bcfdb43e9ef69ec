"""Networks: registry, shapes at 240/128/odd sizes, functional_call equivalence, gradients, no BatchNorm."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_functional_call_matches
from torch import nn
from torch.func import functional_call

from fuse4seg.errors import ConfigError
from fuse4seg.models import (
    MODEL_REGISTRY,
    build_model,
    count_parameters,
    format_model_table,
    list_models,
    model_dims,
    model_options,
    model_summary,
)
from fuse4seg.models.blocks import segmenter_plan

# Small variants so every test runs in well under a second on one core.
TINY: dict[str, dict] = {
    "fusion-cnn": {"width": 4, "layers": 3},
    "fusion-freq": {"width": 4, "layers": 2},
    "fusion-text": {"width": 4, "layers": 3, "heads": 2, "text_dim": 8},
    "unet": {"width": 4, "depth": 3},
    "feature-fusion": {"width": 4, "depth": 3},
}
FUSION = ("fusion-cnn", "fusion-freq", "fusion-text")


def tiny(name: str, **extra) -> nn.Module:
    """Tiny variant of model ``name`` with fixed seed."""
    torch.manual_seed(0)
    return build_model(name, **{**TINY[name], **extra})


def test_registry_lists_every_model() -> None:
    """list_models gives the six 2-D names in registry order, then the four with a 3-D variant with -3d (tests
    in test_models3d.py; fusion-text and the classifier have none: texts and presence describe slices); every
    2-D model but the classifier has a tiny test variant here,
    and the unet defaults are in_channels 1, 4 classes, width 16, depth 4, GroupNorm (dims is fixed by the name,
    not an option)."""
    two_d = ["fusion-cnn", "fusion-freq", "fusion-text", "unet", "feature-fusion", "classifier"]
    assert list_models(dims=2) == two_d
    assert list_models(dims=3) == [f"{name}-3d" for name in two_d if name not in ("fusion-text", "classifier")]
    assert list_models() == list(MODEL_REGISTRY) == two_d + list_models(dims=3)
    assert set(TINY) == set(list_models(dims=2)) - {"classifier"}  # the classifier: tests/test_classification.py
    assert [model_dims(name) for name in list_models()] == [2] * 6 + [3] * 4
    assert model_options("unet") == {
        "in_channels": 1,
        "num_classes": 4,
        "width": 16,
        "depth": 4,
        "norm": "group",
    }


@pytest.mark.parametrize(
    ("name", "options", "needle"),
    [
        ("resnet", {}, "resnet"),
        ("unet", {"widht": 8}, "widht"),
        ("unet", {"norm": "batch"}, "norm"),
        ("unet", {"width": 0}, "width"),
        ("unet", {"depth": 2.5}, "depth"),
        ("fusion-cnn", {"output": "clamp"}, "output"),
        ("fusion-cnn", {"layers": 1}, "layers"),
        ("fusion-freq", {"sigma": -1.0}, "sigma"),
        ("feature-fusion", {"in_channels": True}, "in_channels"),
        ("unet", {"dims": 3}, "dims"),
        ("unet-3d", {"dims": 2}, "dims"),
    ],
)
def test_registry_errors_name_the_problem(name: str, options: dict, needle: str) -> None:
    """An unknown model, a misspelt option and each invalid option value (norm, width 0, fractional depth, layers
    1, negative sigma, bool in_channels) are ConfigErrors naming it; ``dims`` is not an option (the name fixes
    it)."""
    with pytest.raises(ConfigError, match=needle):
        build_model(name, **options)


def test_fusion_cnn_parameter_count_by_hand() -> None:
    # conv 2->16 (no bias before GroupNorm) + GN, two conv 16->16 + GN, head 16->1 with bias.
    """Default fusion-cnn has 5137 parameters, counted by hand: bias-free 3x3 convs with GroupNorm scale and
    shift, and a 3x3 head with bias."""
    expected = 2 * 16 * 9 + 32 + 2 * (16 * 16 * 9 + 32) + (16 * 9 + 1)
    assert count_parameters(build_model("fusion-cnn")) == expected == 5137


def test_unet_parameter_count_by_hand() -> None:
    """Default unet parameters counted by hand: bias-free DoubleConv stages with GroupNorm per scale, 2x2
    transposed convs with bias, decoder stages and a 1x1 head to 4 classes."""
    def double_conv(cin: int, c: int) -> int:
        return 9 * cin * c + 2 * c + 9 * c * c + 2 * c  # bias-free convs, GroupNorm weight + bias

    c = [16 * 2**i for i in range(5)]
    encoder = double_conv(1, c[0]) + sum(double_conv(c[i - 1], c[i]) for i in range(1, 5))
    decoder = sum(4 * c[i + 1] * c[i] + c[i] + double_conv(2 * c[i], c[i]) for i in range(4))
    head = c[0] * 4 + 4
    assert count_parameters(build_model("unet")) == encoder + decoder + head


def test_feature_fusion_parameter_count_by_hand() -> None:
    """feature-fusion = one 1-channel UNet encoder per modality + a 1x1 merge conv (with bias) per
    scale + the UNet decoder and head; counted by hand for the defaults (2 modalities, width 16, depth 4)."""
    def double_conv(cin: int, c: int) -> int:
        return 9 * cin * c + 2 * c + 9 * c * c + 2 * c

    c = [16 * 2**i for i in range(5)]
    encoder = double_conv(1, c[0]) + sum(double_conv(c[i - 1], c[i]) for i in range(1, 5))
    merge = sum(2 * ci * ci + ci for ci in c)
    decoder = sum(4 * c[i + 1] * c[i] + c[i] + double_conv(2 * c[i], c[i]) for i in range(4)) + c[0] * 4 + 4
    assert count_parameters(build_model("feature-fusion")) == 2 * encoder + merge + decoder


def test_segmenter_plan_validates_and_doubles_the_width() -> None:
    """The shared segmenter set-up: channels width * 2**i for scales 0..depth; a bad option is a
    ConfigError naming it; UNet and feature-fusion build their encoders from that plan."""
    plan = segmenter_plan(2, 4, 8, 3, "instance")
    assert plan == (2, 4, 3, "instance", [8, 16, 32, 64])
    for bad, needle in (({"width": 0}, "width"), ({"depth": 1.5}, "depth"), ({"norm": "batch"}, "norm")):
        with pytest.raises(ConfigError, match=needle):
            segmenter_plan(**{"in_channels": 1, "num_classes": 4, "width": 8, "depth": 3, "norm": "group", **bad})
    unet = build_model("unet", width=8, depth=3)
    fusion = build_model("feature-fusion", width=8, depth=3, in_channels=3)
    for encoder in (unet.encoder, *fusion.encoders):
        assert [stage[0][0].out_channels for stage in encoder] == plan.channels


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("size", [(240, 240), (128, 128), (97, 130)])
def test_output_shapes(name: str, size: tuple[int, int]) -> None:
    """At 240x240, 128x128 and 97x130 every model keeps H and W, fusion nets give one channel in [0, 1] and
    segmenters four finite logit channels."""
    model = tiny(name)
    x = torch.rand(2, model.in_channels, *size)
    with torch.no_grad():
        out = model(x)
    channels = 1 if name in FUSION else 4
    assert out.shape == (2, channels, *size)
    assert torch.isfinite(out).all()
    if name in FUSION:
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("name", ["unet", "feature-fusion"])
def test_odd_sizes_are_zero_padded_and_cropped(name: str) -> None:
    """A 37x50 input gives the same logits as the same input zero-padded by hand to 40x56 and cropped back, so
    internal padding is exactly bottom/right zeros."""
    model = tiny(name)  # depth 3: multiples of 8
    x = torch.rand(1, model.in_channels, 37, 50)
    with torch.no_grad():
        direct = model(x)
        padded = model(F.pad(x, (0, 6, 0, 3)))[..., :37, :50]
    torch.testing.assert_close(direct, padded)


@pytest.mark.parametrize("name", list(TINY))
def test_functional_call_matches_module(name: str) -> None:
    """With perturbed parameters, torch.func.functional_call equals the module holding those parameters, in the
    output and in every parameter gradient."""
    model = tiny(name, norm="instance") if name != "fusion-cnn" else tiny(name)
    assert_functional_call_matches(model, torch.rand(2, model.in_channels, 40, 36))


@pytest.mark.parametrize("name", list(TINY))
def test_gradients_reach_every_parameter(name: str) -> None:
    """A random linear function of the output gives every parameter a finite, non-zero gradient (no dead branch);
    a text-guided net is given a text of 5 tokens and an empty one (with its "no text" token alone, attention is
    constant; with a text, that token is not attended to)."""
    model = tiny(name)
    text = ()
    if getattr(model, "reads_text", False):
        text = (torch.randn(2, 5, model.text_dim), torch.tensor([[True] * 5, [False] * 5]))
    out = model(torch.rand(2, model.in_channels, 32, 32), *text)
    (out * torch.randn_like(out)).sum().backward()
    for k, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), k
        assert float(p.grad.abs().max()) > 0, k


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("norm", ["group", "instance"])
def test_no_batchnorm_and_no_running_statistics(name: str, norm: str) -> None:
    """With either norm, no BatchNorm module exists, a Group/InstanceNorm does, and train() and eval() outputs
    are identical (no running statistics)."""
    model = tiny(name, norm=norm)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, (nn.GroupNorm, nn.InstanceNorm2d)) for m in model.modules())
    x = torch.rand(2, model.in_channels, 32, 32)
    with torch.no_grad():
        train_out = model.train()(x)
        eval_out = model.eval()(x)
    torch.testing.assert_close(train_out, eval_out)


def test_fusion_cnn_starts_at_mean_of_inputs() -> None:
    """With the head's weights zeroed, fusion-cnn outputs the mean of its inputs clamped to [1e-3, 1 - 1e-3] (its
    residual base)."""
    model = tiny("fusion-cnn")
    with torch.no_grad():
        model.head.weight.zero_()
        x = torch.rand(3, 2, 20, 24)
        out = model(x)
    torch.testing.assert_close(out, x.mean(dim=1, keepdim=True).clamp(1e-3, 1 - 1e-3))


def test_fusion_freq_base_is_low_mean_plus_max_abs_detail() -> None:
    """fusion-freq's split is exact (low + high = x, a constant is all low band), and with a zeroed head the
    output is the mean low band plus the max-absolute detail, clamped."""
    model = tiny("fusion-freq", in_channels=3)
    x = torch.rand(2, 3, 24, 24)
    low, high = model.split(x)
    torch.testing.assert_close(low + high, x)
    const = torch.full((1, 3, 16, 16), 0.3)
    torch.testing.assert_close(model.split(const)[0], const)
    with torch.no_grad():
        model.head.weight.zero_()
        out = model(x)
    idx = high.abs().argmax(dim=1, keepdim=True)
    base = low.mean(dim=1, keepdim=True) + high.gather(1, idx)
    torch.testing.assert_close(out, base.clamp(1e-3, 1 - 1e-3))


def test_feature_fusion_has_one_encoder_per_modality() -> None:
    """feature-fusion with 3 inputs has 3 encoders and the logits depend on every input channel (non-zero input
    gradient for each)."""
    model = tiny("feature-fusion", in_channels=3)
    assert len(model.encoders) == 3
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    out = model(x)
    out.sum().backward()
    assert all(float(x.grad[0, m].abs().sum()) > 0 for m in range(3))


def test_fusion_input_subset_sizes() -> None:
    """Fusion nets accept 1, 3 or 4 input modalities and odd sizes (17x23), returning (1, 1, 17, 23)."""
    for c in (1, 3, 4):
        for name in FUSION:
            model = tiny(name, in_channels=c)
            assert model(torch.rand(1, c, 17, 23)).shape == (1, 1, 17, 23)


def test_unet_region_based_head() -> None:
    """unet with num_classes 3 (region-based WT/TC/ET) and 2 inputs returns 3 logit channels at the input size."""
    model = tiny("unet", num_classes=3, in_channels=2)
    assert model(torch.rand(1, 2, 24, 24)).shape == (1, 3, 24, 24)


def test_model_summary_and_table() -> None:
    """model_summary lists every model with its dims, parameter count and output shape at 32 and 64 px (3-D
    models on a 32^3 cube, "-" above SUMMARY_MAX_EDGE_3D = 32); the table text carries the names, 5,137 for
    fusion-cnn, the dims and the size columns."""
    rows = model_summary(sizes=(32, 64))
    assert [r["name"] for r in rows] == list_models()
    for r in rows:
        assert r["parameters"] == count_parameters(build_model(r["name"]))
        channels = "1" if r["kind"] == "fusion" else "4"
        if r["kind"] == "classification":  # (N, 3) presence logits, no spatial axes
            assert (r["output@32"], r["output@64"]) == ("3", "3")
        elif r["dims"] == 2:
            assert (r["output@32"], r["output@64"]) == (f"{channels} x 32 x 32", f"{channels} x 64 x 64")
        else:
            assert (r["output@32"], r["output@64"]) == (f"{channels} x 32 x 32 x 32", "-")
    table = format_model_table(rows)
    assert "fusion-cnn" in table and "5,137" in table and "output@64" in table and "3-D" in table


def test_cli_models_command(capsys: pytest.CaptureFixture[str]) -> None:
    """`fuse4seg models` exits 0 and lists every model with the default unet's 1,942,340 parameters."""
    from fuse4seg.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in list_models():
        assert name in out
    assert "1,942,340" in out  # the default UNet: width 16, depth 4


@pytest.mark.parametrize("name", list(TINY))
def test_second_order_gradients_match_finite_differences(name: str) -> None:
    """Hessian-vector products through functional_call (needed by implicit and unrolled hypergradients) equal
    central finite differences of the gradient in float64 for every model."""
    model = tiny(name, **({"depth": 2} if name in ("unet", "feature-fusion") else {})).double()
    x = torch.rand(1, model.in_channels, 12, 12, dtype=torch.float64)
    names = [k for k, _ in model.named_parameters()]
    p0 = [p.detach() for p in model.parameters()]
    v = [torch.randn_like(p) for p in p0]

    def grads(params: list[torch.Tensor], create_graph: bool = False) -> tuple[torch.Tensor, ...]:
        out = functional_call(model, dict(zip(names, params)), (x,))
        return torch.autograd.grad((out**3).mean(), params, create_graph=create_graph)

    leaves = [p.clone().requires_grad_(True) for p in p0]
    g = grads(leaves, create_graph=True)
    hvp = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), leaves)
    eps = 1e-6
    plus = grads([(p + eps * d).requires_grad_(True) for p, d in zip(p0, v)])
    minus = grads([(p - eps * d).requires_grad_(True) for p, d in zip(p0, v)])
    for k, h, a, b in zip(names, hvp, plus, minus):
        torch.testing.assert_close(h, (a - b) / (2 * eps), rtol=1e-4, atol=1e-7, msg=k)


def test_fusion_cnn_weighted_base_is_a_learned_convex_combination() -> None:
    """output="weighted" starts exactly where "residual" starts (same seed, same image); with the head zeroed and
    base_logits set, the output is the convex combination softmax(BASE_GAIN * logits) . x, clamped; the logits
    receive a gradient."""
    from fuse4seg.models.fusion import BASE_GAIN, FusionCNN

    x = torch.rand(2, 2, 20, 24)
    torch.manual_seed(3)
    plain = FusionCNN(2, width=4, layers=3)
    torch.manual_seed(3)
    weighted = FusionCNN(2, width=4, layers=3, output="weighted")
    torch.testing.assert_close(weighted(x), plain(x))
    with torch.no_grad():
        weighted.head.weight.zero_()
        weighted.head.bias.zero_()
        weighted.base_logits.copy_(torch.tensor([0.3, -0.1]))
    w1 = 1.0 / (1.0 + math.exp(-BASE_GAIN * 0.4))  # softmax of two logits = sigmoid of their difference
    expected = (w1 * x[:, :1] + (1 - w1) * x[:, 1:]).clamp(1e-3, 1 - 1e-3)
    torch.testing.assert_close(weighted(x), expected)
    weighted(x).sum().backward()
    assert weighted.base_logits.grad is not None and bool(weighted.base_logits.grad.abs().sum() > 0)
