"""Text-guided fusion: text encoders, fusion-text, the semantic loss, report-based evaluation, and text flowing
through train, evaluate and fuse (hand-worked cases and a tiny local Hugging Face model written here)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_weights, checkpoint_weights

from fuse4seg.cli import main
from fuse4seg.errors import ConfigError
from fuse4seg.metrics.reports import compare_reports, report_facts, report_score, summarise_reports
from fuse4seg.models import build_model
from fuse4seg.text.alignment import AlignmentModel, clip_loss, masked_mean, semantic_loss
from fuse4seg.text.encoders import (
    TextTokens,
    VocabularyEncoder,
    _ppmi,
    build_text_encoder,
    fit_word_vectors,
    tokenize,
)
from fuse4seg.train.loop import train
from fuse4seg.train.resolve import build_config
from fuse4seg.train.run import resolve_config

TINY = {"seg_options": {"width": 4, "depth": 2}, "fusion_options": {"width": 4, "layers": 3}, "batch_size": 2,
        "progress": False, "eval_slices": 2, "lr_lower": 0.01, "fusion_model": "fusion-text"}
CORPUS = ["Oedema surrounding enhancing tumour in the left hemisphere.", "Areas: oedema 151.3 mm², whole tumour 1072.7 mm².",
          "Enhancing tumour is most conspicuous on T1ce.", "Oedema is most conspicuous on FLAIR."]


def options(bench: Path, out: Path, **extra) -> dict:
    """Tiny fusion-text training options on ``bench`` writing to ``out``."""
    return {**TINY, "benchmark": str(bench), "out": str(out), **extra}


# ---- encoders ---------------------------------------------------------------------------------------


def test_tokenize_bins_numbers_by_powers_of_two() -> None:
    """Words lower-cased; 151.3 -> floor(log2 152.3) = 7, 1072.7 -> 10; the superscript two is punctuation."""
    assert tokenize("Oedema 151.3 mm², WT 1072.7 mm².") == ["oedema", "<num:7>", "mm", "²", ",", "wt", "<num:10>",
                                                           "mm", "²", "."]
    assert tokenize("") == []
    assert tokenize("9" * 400) == ["<num:40>"]  # beyond any area: the last bin, not an overflow


def test_ppmi_of_a_hand_worked_corpus() -> None:
    """Corpus 'a b', 'a c': symmetric counts a-b = a-c = 1 (total 4, row sums a 2, b 1, c 1), so
    PPMI(a, b) = PPMI(a, c) = log(1 * 4 / (2 * 1)) = log 2 and every other entry is 0."""
    out = _ppmi([[0, 1], [0, 2]], 3)
    expected = np.array([[0, math.log(2), math.log(2)], [math.log(2), 0, 0], [math.log(2), 0, 0]])
    np.testing.assert_allclose(out, expected, atol=1e-12)


def test_word_vectors_are_deterministic_and_order_free() -> None:
    """The same texts in another order give the same sorted vocabulary and the same vectors, unit rows."""
    vocab_a, vectors_a = fit_word_vectors(CORPUS, 8)
    vocab_b, vectors_b = fit_word_vectors(CORPUS[::-1], 8)
    assert vocab_a == vocab_b == sorted(vocab_a)
    np.testing.assert_array_equal(vectors_a, vectors_b)
    np.testing.assert_allclose(np.linalg.norm(vectors_a, axis=1), 1.0, atol=1e-6)


def test_builtin_features_are_word_and_neighbour_mean() -> None:
    """A token's feature is its vector beside the mean of its (up to 2 per side) neighbours; unknown words are 0."""
    enc = VocabularyEncoder(8).fit(CORPUS)
    vec = {tok: enc.vectors[i] for tok, i in enc.vocab.items()}
    out = enc(["oedema zzz tumour"])
    assert out.features.shape == (1, 3, 8) and out.mask.tolist() == [[True, True, True]]
    words, context = out.features[0, :, :4], out.features[0, :, 4:]
    zero = torch.zeros(4)
    for got, want in zip(words, [vec["oedema"], zero, vec["tumour"]]):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(context[0], (zero + vec["tumour"]) / 2)
    torch.testing.assert_close(context[1], (vec["oedema"] + vec["tumour"]) / 2)
    torch.testing.assert_close(context[2], (vec["oedema"] + zero) / 2)


def test_builtin_encoder_state_round_trips(tmp_path: Path) -> None:
    """state_dict -> torch.save -> weights_only load -> a fresh encoder encodes identically; padding is masked."""
    enc = VocabularyEncoder(8).fit(CORPUS)
    torch.save(enc.state_dict(), tmp_path / "enc.pt")
    fresh = VocabularyEncoder(8)
    fresh.load_state_dict(torch.load(tmp_path / "enc.pt", weights_only=True))
    a, b = enc(CORPUS[:2]), fresh(CORPUS[:2])
    assert torch.equal(a.features, b.features) and torch.equal(a.mask, b.mask)
    assert a.mask[0].sum() == len(tokenize(CORPUS[0])) and not a.features[0, ~a.mask[0]].any()
    with pytest.raises(ValueError, match="does not fit"):
        VocabularyEncoder(6).load_state_dict(torch.load(tmp_path / "enc.pt", weights_only=True))
    with pytest.raises(ConfigError, match="not been fitted"):
        VocabularyEncoder(8)(["x"])


@pytest.fixture(scope="module")
def tiny_hf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer, 16-feature BERT with a 20-word vocabulary, written to disk here (nothing downloaded)."""
    transformers = pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("hf") / "tiny-bert"
    path.mkdir()
    words = ["oedema", "tumour", "enhancing", "necrotic", "core", "the", "in", "left", "right", "hemisphere",
             "slice", "shows", "no", "visible", "this", ".", ",", "mm", "whole", "on"]
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer_class = getattr(transformers, "BertTokenizerFast", None) or transformers.BertTokenizer
    tokenizer_class(vocab_file=str(path / "vocab.txt")).save_pretrained(str(path))
    config = transformers.BertConfig(vocab_size=25, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=160)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(str(path))
    return path


def test_pretrained_encoder_equals_the_model_run_directly(tiny_hf_model: Path) -> None:
    """The encoder's features are the model's last hidden states of the real tokens, as transformers computes them."""
    import transformers

    texts = ["the slice shows oedema in the left hemisphere .", "no tumour"]
    enc = build_text_encoder(str(tiny_hf_model))
    assert enc.dim == 16
    out = enc(texts)
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_hf_model), local_files_only=True)
    model = transformers.AutoModel.from_pretrained(str(tiny_hf_model), local_files_only=True).eval()
    for i, text in enumerate(texts):
        ids = tok(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**ids).last_hidden_state[0]
        n = hidden.shape[0]
        assert out.mask[i].sum() == n
        torch.testing.assert_close(out.features[i, :n], hidden, rtol=1e-5, atol=1e-5)
    again = enc(texts)  # from the cache
    assert torch.equal(again.features, out.features)


def test_missing_or_bad_text_model_is_a_one_line_error(tmp_path: Path) -> None:
    """A missing folder and a folder without a model: ConfigError naming the option, one line."""
    with pytest.raises(ConfigError, match="no such folder") as missing:
        build_text_encoder(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a loadable text model") as empty:
        build_text_encoder(str(tmp_path / "empty"))
    for exc in (missing, empty):
        assert exc.value.option == "text_encoder" and "\n" not in str(exc.value)


# ---- fusion-text ------------------------------------------------------------------------------------


def tiny_text_net() -> torch.nn.Module:
    """A tiny fusion-text net with 8 text features, perturbed so text matters."""
    torch.manual_seed(0)
    net = build_model("fusion-text", width=4, layers=3, heads=2, text_dim=8).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net


def test_fusion_text_output_range_and_text_effect() -> None:
    """Outputs in (0, 1) of the input's shape; different texts give different fused images."""
    net = tiny_text_net().requires_grad_(False)
    x = torch.rand(2, 2, 24, 20)
    a = net(x, torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool))
    b = net(x, torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool))
    assert a.shape == (2, 1, 24, 20) and bool(((a > 0) & (a < 1)).all())
    assert float((a - b).abs().max()) > 1e-4


def test_fusion_text_padding_permutation_and_null_token() -> None:
    """Padded tokens change nothing; the order of tokens changes nothing (no positions); a text without tokens is
    the same as no text (the learned 'no text' token)."""
    net = tiny_text_net()
    x = torch.rand(1, 2, 16, 16)
    text = torch.randn(1, 4, 8)
    base = net(x, text, torch.ones(1, 4, dtype=torch.bool))
    padded = torch.cat([text, torch.randn(1, 3, 8)], dim=1)
    mask = torch.tensor([[True] * 4 + [False] * 3])
    torch.testing.assert_close(net(x, padded, mask), base)
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(net(x, text[:, perm], torch.ones(1, 4, dtype=torch.bool)), base)
    torch.testing.assert_close(net(x, text, torch.zeros(1, 4, dtype=torch.bool)), net(x))
    with pytest.raises(ConfigError, match="text features"):
        net(x, torch.randn(1, 4, 7))


def test_fusion_text_equals_the_attention_written_out() -> None:
    """The forward pass equals the same layers with attention written as softmax(q k^T / sqrt(d)) v over the
    unmasked tokens, and the FiLM injection by hand."""
    net = tiny_text_net().requires_grad_(False)
    x, text = torch.rand(2, 2, 12, 10), torch.randn(2, 5, 8)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    f = net.features(x)
    n, c, h, w = f.shape
    tokens = torch.cat([net.null_text.expand(n, 1, 8), text], dim=1)
    keep = torch.cat([torch.zeros(n, 1, dtype=torch.bool), mask], dim=1)  # both texts have tokens: no null
    q = net.query(f.flatten(2).transpose(1, 2)).view(n, h * w, 2, c // 2).transpose(1, 2)
    k = net.key(tokens).view(n, -1, 2, c // 2).transpose(1, 2)
    v = net.value(tokens).view(n, -1, 2, c // 2).transpose(1, 2)
    scores = (q @ k.transpose(2, 3)) / math.sqrt(c // 2)
    weights = scores.masked_fill(~keep[:, None, None, :], float("-inf")).softmax(-1)
    f = f + net.attend_out((weights @ v).transpose(1, 2).reshape(n, h * w, c)).transpose(1, 2).reshape(n, c, h, w)
    pooled = torch.stack([tokens[i, keep[i]].mean(0) for i in range(n)])
    gamma, beta = net.inject(pooled).chunk(2, dim=1)
    f = f * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
    expected = torch.sigmoid(net.head(net.mix(f)) + torch.logit(x.mean(1, keepdim=True).clamp(1e-3, 1 - 1e-3)))
    torch.testing.assert_close(net(x, text, mask), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the fused kernel used for inference gives the same image
        torch.testing.assert_close(net(x, text, mask), expected, rtol=1e-5, atol=1e-5)


# ---- the semantic loss ------------------------------------------------------------------------------


def test_clip_loss_hand_worked() -> None:
    """Orthonormal pairs at temperature 1: each row's logits are (1, 0), so both cross-entropies are
    log(1 + e^-1); swapping the texts makes them log(1 + e)."""
    eye = torch.eye(2)
    assert float(clip_loss(eye, eye, 1.0)) == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert float(clip_loss(eye, eye.flip(0), 1.0)) == pytest.approx(math.log(1 + math.e), abs=1e-6)


def test_semantic_loss_is_one_minus_cosine_and_reduces_over_shards() -> None:
    """1 - cosine of the towers' unit embeddings, mean over items; a simulated 2-shard all-reduce of the same
    shard (sums doubled) gives the same mean; the masked mean ignores padding."""
    torch.manual_seed(0)
    model = AlignmentModel(text_dim=6, embed=8, width=4).requires_grad_(False)
    fused = torch.rand(3, 1, 16, 16)
    tokens = TextTokens(torch.randn(3, 4, 6), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool))
    cos = torch.nn.functional.cosine_similarity(model.embed_images(fused), model.embed_texts(tokens))
    value = semantic_loss(model, fused, tokens)
    assert float(value) == pytest.approx(float((1 - cos).mean()), abs=1e-6)
    assert 0 <= float(value) <= 2
    assert float(semantic_loss(model, fused, tokens, reduce=lambda t: 2 * t)) == pytest.approx(float(value), abs=1e-6)
    torch.testing.assert_close(masked_mean(tokens)[0], tokens.features[0, :2].mean(0))


# ---- report-based evaluation ------------------------------------------------------------------------


def ring_label() -> np.ndarray:
    """20 x 20: an 8 x 8 enhancing square (rows/cols 6..13) with a 4 x 4 necrotic core (8..11), oedema around it
    (4..15): ET 48 px, NCR 16 px, ED 144 - 64 = 80 px."""
    label = np.zeros((20, 20), np.uint8)
    label[4:16, 4:16] = 2
    label[6:14, 6:14] = 3
    label[8:12, 8:12] = 1
    return label


def test_report_facts_of_a_hand_built_slice() -> None:
    """Areas at 1 x 2 mm pixels, the relation words, and the midline/central location of a centred tumour."""
    facts = report_facts(ring_label(), np.ones((4, 20, 20), np.float32), (1.0, 2.0))
    assert facts["areas"] == {"WT": 288.0, "TC": 128.0, "ET": 96.0, "NCR": 32.0, "ED": 160.0}
    assert facts["relation"] == "oedema surrounding an enhancing rim with a necrotic core"
    assert facts["location"] == {"hemisphere": "midline", "ap": "central"}


def test_compare_reports_field_by_field() -> None:
    """A perfect prediction agrees on all 11 fields. Filling the core with ET: NCR absent (present_NCR, size_NCR
    wrong), ET 64 vs 48 px (+33 % > 25 %: wrong), the relation wrong; WT, TC, ED, location right: 7/11."""
    truth = ring_label()
    sources = np.ones((4, 20, 20), np.float32)
    t_facts = report_facts(truth, sources, (1.0, 1.0))
    perfect = compare_reports(t_facts, t_facts)
    assert len(perfect) == 11 and all(perfect.values()) and report_score(perfect) == 1.0
    pred = truth.copy()
    pred[pred == 1] = 3
    fields = compare_reports(report_facts(pred, sources, (1.0, 1.0)), t_facts)
    wrong = {k for k, ok in fields.items() if not ok}
    assert wrong == {"present_NCR", "size_NCR", "size_ET", "relation"}
    assert report_score(fields) == pytest.approx(7 / 11)
    empty = compare_reports(report_facts(np.zeros_like(truth), sources, (1.0, 1.0)),
                            report_facts(np.zeros_like(truth), sources, (1.0, 1.0)))
    assert empty == {"present_ET": True, "present_NCR": True, "present_ED": True, "relation": True}
    summary = summarise_reports([perfect, fields])
    assert summary["score"] == pytest.approx((1 + 7 / 11) / 2) and summary["fields"]["size_ET"] == 0.5


# ---- text through train, evaluate and fuse ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bilevel", "two-stage", "joint"])
def test_fusion_text_trains_in_every_fusion_mode(bench: Path, tmp_path: Path, mode: str) -> None:
    """fusion-text with the semantic loss trains in each fusion mode: the fusion net moves, the checkpoint carries
    the fitted encoder and the frozen image-text model, the loss is logged, config.json records the text facts."""
    config = build_config(options(bench, tmp_path / "run", mode=mode, steps=3, semantic_weight=0.5, semantic_steps=5,
                                  fusion_steps=1 if mode == "two-stage" else None))
    summary = train(config)
    assert summary["steps"] == 3 and summary["skipped"] == 0
    models = checkpoint_weights(tmp_path / "run" / "last.pt")
    assert set(models) == {"fusion", "seg", "text", "alignment"}
    vocab = models["text"]["_extra_state"]["vocab"]
    assert "oedema" in vocab and all(isinstance(w, str) for w in vocab)
    derived = json.loads((tmp_path / "run" / "config.json").read_text())["derived"]
    assert derived["text_vocabulary"] == len(vocab) and derived["alignment_slices"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    assert "loss/semantic" in acc.Tags()["scalars"]


@pytest.mark.slow
def test_resume_with_text_models_is_exact(bench: Path, tmp_path: Path) -> None:
    """3 steps then --resume to 5 equals 5 steps: the text models come back from last.pt, not refitted."""
    extra = {"mode": "bilevel", "semantic_weight": 0.5, "semantic_steps": 5, "checkpoint_every": 1}
    train(build_config(options(bench, tmp_path / "a", steps=5, **extra)))
    train(build_config(options(bench, tmp_path / "b", steps=3, **extra)))
    train(resolve_config({"out": str(tmp_path / "b"), "resume": True, "steps": 5, "progress": False}))
    assert_same_weights(checkpoint_weights(tmp_path / "a" / "last.pt"), checkpoint_weights(tmp_path / "b" / "last.pt"))
    facts = [json.loads((tmp_path / r / "config.json").read_text())["derived"] for r in "ab"]
    assert facts[0]["alignment_loss_last"] == facts[1]["alignment_loss_last"]


@pytest.mark.slow
def test_text_flows_through_evaluate_and_fuse(bench: Path, phantom_release: Path, tmp_path: Path,
                                              tiny_hf_model: Path, capsys: pytest.CaptureFixture) -> None:
    """A fusion-text run on a local Hugging Face model (--text-encoder PATH): evaluate reports the semantic score
    and writes reports.csv; --no-texts changes the learned fusion; fuse takes --reports; a missing model folder
    and a text option on a 3-D run are one-line errors."""
    run = tmp_path / "run"
    assert main(["train", "--benchmark", str(bench), "--out", str(run), "--fusion-model", "fusion-text",
                 "--text-encoder", str(tiny_hf_model), "--steps", "2", "--batch-size", "2", "--seg-width", "4",
                 "--seg-depth", "2", "--fusion-width", "4", "--no-progress"]) == 0
    stored = checkpoint_weights(run / "best.pt")["text"]["_extra_state"]
    assert stored["path"] == str(tiny_hf_model) and stored["dim"] == 16 and len(stored["fingerprint"]) == 64
    assert main(["evaluate", "--run", str(run)]) == 0
    with_text = json.loads((run / "eval" / "metrics.json").read_text())
    assert 0 <= with_text["semantic"]["score"] <= 1 and with_text["text"] == "the slices' texts"
    rows = list(csv.DictReader((run / "eval" / "reports.csv").open(encoding="utf-8")))
    assert len(rows) == with_text["slices"] and all(r["predicted_report"] and r["reference_report"] for r in rows)
    assert np.mean([float(r["score"]) for r in rows]) == pytest.approx(with_text["semantic"]["score"], abs=1e-3)
    assert main(["evaluate", "--run", str(run), "--no-texts"]) == 0
    without = json.loads((run / "eval" / "metrics.json").read_text())
    assert without["text"].startswith("none") and without["fusion"]["learned"] != with_text["fusion"]["learned"]
    case = phantom_release / "BraTS2021_00000"
    reports = tmp_path / "reports.csv"
    reports.write_text("case_id,slice_index,text\nBraTS2021_00000,,the slice shows oedema in the left hemisphere .\n",
                       encoding="utf-8")
    capsys.readouterr()
    assert main(["fuse", "--run", str(run), "--case", str(case), "--out", str(tmp_path / "f1"),
                 "--reports", str(reports)]) == 0
    assert main(["fuse", "--run", str(run), "--case", str(case), "--out", str(tmp_path / "f2")]) == 0
    import nibabel as nib

    a = nib.load(tmp_path / "f1" / "fused.nii.gz").get_fdata()
    b = nib.load(tmp_path / "f2" / "fused.nii.gz").get_fdata()
    assert a.shape == b.shape and not np.array_equal(a, b)
    capsys.readouterr()
    for argv, needle in (
        (["--text-encoder", str(tmp_path / "missing")], "--text-encoder"),
        (["--dims", "3"], "--fusion-model"),
        (["--augment", "light"], "--fusion-model"),
        (["--task", "classify"], "--fusion-model"),  # the texts state the target
        (["--label-fraction", "0.5"], "--fusion-model"),  # the texts state the unlabelled cases' labels
    ):
        rc = main(["train", "--benchmark", str(bench), "--out", str(tmp_path / "bad"), "--fusion-model", "fusion-text",
                   "--steps", "1", "--no-progress", *argv])
        err = capsys.readouterr().err.strip()
        assert rc != 0 and len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
    (tiny_hf_model / "extra.txt").write_text("another model now")  # the folder changed since training
    rc = main(["evaluate", "--run", str(run)])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "has changed" in err and len(err.splitlines()) == 1
    (tiny_hf_model / "extra.txt").unlink()
