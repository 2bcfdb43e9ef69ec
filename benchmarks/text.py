"""Benchmark text-guided fusion on CPU: what text costs per training step and per encoded text.

Usage: python benchmarks/text.py [--sizes 64,128,240] [--batch 8] [--threads 1] [--repeats 5]
           [--out benchmarks/results/text.json]

1. Fusion networks, forward + backward of a random linear function of the output on a (batch, 2, S, S) input:
   ``fusion-text`` (width 16, 4 layers, 2 heads, text features 64, texts of 80 tokens: about the length of the
   generated descriptions) against ``fusion-cnn`` (width 16, 4 layers), the reference, measured in the same run;
   the table gives the ratio, and fusion-text's forward without gradients (evaluation and ``fuse``: the fused
   attention kernel).
2. Text encoding: the built-in encoder (fitted on 200 generated-style texts) encoding a batch of texts, against
   the fusion-text step it feeds (encoding is done once per step, outside the network).

Every measurement is the best CPU time of ``--repeats`` calls after one untimed warm-up (benchmarks/metrics.py's
``best_time``: other processes on the machine inflate it least), with ``--threads`` torch threads; the table is
printed and the JSON written.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from metrics import best_time  # benchmarks/ is this script's directory, hence on sys.path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOKENS = 80
TEXT_DIM = 64


def step_seconds(name: str, size: int, batch: int, repeats: int) -> float:
    """Seconds of one forward + backward of fusion network ``name`` on a (batch, 2, size, size) input."""
    import torch

    from fuse4seg.models import build_model

    torch.manual_seed(0)
    options = {"text_dim": TEXT_DIM} if name == "fusion-text" else {}
    net = build_model(name, width=16, layers=4, **options)
    x = torch.rand(batch, 2, size, size)
    text = (torch.randn(batch, TOKENS, TEXT_DIM), torch.ones(batch, TOKENS, dtype=torch.bool)) \
        if name == "fusion-text" else ()
    weights = torch.randn(batch, 1, size, size)

    def run() -> None:
        """One forward and backward."""
        net.zero_grad(set_to_none=True)
        (net(x, *text) * weights).sum().backward()

    return best_time(run, repeats)


def inference_seconds(size: int, batch: int, repeats: int) -> float:
    """Seconds of one no-grad forward of fusion-text (the fused attention kernel) on a (batch, 2, size, size) input."""
    import torch

    from fuse4seg.models import build_model

    torch.manual_seed(0)
    net = build_model("fusion-text", width=16, layers=4, text_dim=TEXT_DIM).eval()
    x, text = torch.rand(batch, 2, size, size), torch.randn(batch, TOKENS, TEXT_DIM)
    mask = torch.ones(batch, TOKENS, dtype=torch.bool)

    def run() -> None:
        """One forward without gradients."""
        with torch.no_grad():
            net(x, text, mask)

    return best_time(run, repeats)


def texts(n: int) -> list[str]:
    """``n`` texts worded like the generated descriptions, with varying numbers and places."""
    import numpy as np

    rng = np.random.default_rng(0)
    sides, places = ("left", "right"), ("anterior", "central", "posterior")
    return [f"This slice shows oedema surrounding an enhancing rim with a necrotic core in the {sides[i % 2]} "
            f"hemisphere ({places[i % 3]}, mid-level). Areas: whole tumour {rng.uniform(100, 9000):.1f} mm², tumour "
            f"core {rng.uniform(50, 3000):.1f} mm², enhancing tumour {rng.uniform(20, 2000):.1f} mm², oedema "
            f"{rng.uniform(50, 6000):.1f} mm². Enhancing tumour is most conspicuous on T1ce (brighter than the "
            "surrounding brain)." for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    """Run every measurement; print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128,240")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "text.json")
    args = parser.parse_args(argv)
    import torch

    from fuse4seg.text.encoders import VocabularyEncoder

    torch.set_num_threads(args.threads)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        cnn = step_seconds("fusion-cnn", size, args.batch, args.repeats)
        text = step_seconds("fusion-text", size, args.batch, args.repeats)
        infer = inference_seconds(size, args.batch, args.repeats)
        rows.append({"size": size, "fusion_cnn_s": cnn, "fusion_text_s": text, "ratio": text / cnn,
                     "fusion_text_inference_s": infer})
    encoder = VocabularyEncoder(TEXT_DIM).fit(texts(200))
    batch_texts = texts(args.batch)
    encode = best_time(lambda: encoder(batch_texts), args.repeats)
    tokens = encoder(batch_texts).mask.sum(1).float().mean().item()
    result = {"machine": platform.processor() or platform.machine(), "threads": args.threads, "batch": args.batch,
              "tokens_per_text": TOKENS, "fusion": rows,
              "builtin_encode_s": encode, "builtin_tokens_per_generated_text": tokens,
              "texts_per_second": args.batch / encode}
    print(f"fusion nets, forward + backward, batch {args.batch}, {args.threads} thread(s), best CPU time of {args.repeats}:")
    print(f"{'size':>6}  {'fusion-cnn s':>12}  {'fusion-text s':>13}  {'ratio':>6}  {'fusion-text no-grad forward s':>29}")
    for r in rows:
        print(f"{r['size']:>6}  {r['fusion_cnn_s']:>12.4f}  {r['fusion_text_s']:>13.4f}  {r['ratio']:>6.2f}  "
              f"{r['fusion_text_inference_s']:>29.4f}")
    print(f"built-in encoder: {args.batch} texts ({tokens:.0f} tokens each) in {encode * 1e3:.2f} ms "
          f"({args.batch / encode:,.0f} texts/s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
