"""What pulls the fused image at the start of bi-level training (issue 23's diagnosis): each upper-loss term's share.

    python experiments/upper_terms.py --out /tmp/study     # about a minute; writes results/upper_terms.{md,json}

At the first outer step of the study's bi-level row (lambda_seg = 1, its options from experiments/study.toml;
seeds 0-2, each with its own initial networks and first batches), on the step's own fit and held-out batches:
the gradient with respect to the fusion net's weights of each weighted fusion-loss term (intensity, Sobel
gradient, SSIM, frequency, spatial gradient) and the hypergradient of the held-out segmentation loss through
one unrolled inner step, as ``fuse4seg train`` computes them. Reported per term: its norm over the norm of the
whole update (the terms partly cancel, so these ratios need not add up to 1), and its cosine with the
segmentation hypergradient (> 0: the term
pulls the image the way segmentation wants it to go; < 0: against it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import study

SEEDS = (0, 1, 2)
ROW = "bilevel"


def first_step_terms(bench: Path, seed: int, work: Path) -> dict[str, Any]:
    """{term: {"norm", "cosine_to_seg"}} and the norms at the row's first outer step for one seed."""
    import torch

    from fuse4seg.bilevel import module_hypergradient
    from fuse4seg.losses import fusion_loss
    from fuse4seg.losses.fusion import resolve_fusion_weights
    from fuse4seg.runkit.batches import step_loader
    from fuse4seg.train.loop import Trainer
    from fuse4seg.train.resolve import build_config
    from fuse4seg.train.step_parts import batch_inputs, tensor_norm
    from fuse4seg.train.steps import bilevel_losses, engine_options

    torch.set_num_threads(1)
    options = study.row_options(study.SPEC["rows"][ROW])
    config = build_config({**options, "benchmark": str(bench), "out": str(work), "seed": seed, "progress": False,
                           "overwrite": True})
    t = Trainer(config)
    fit = next(iter(step_loader(t.train_set, t.fit_pool, config.batch_size, config.seed, 0, t.total, "fit", 0)))
    hold = next(iter(step_loader(t.train_set, t.hold_pool, config.batch_size, config.seed, 0, t.total, "holdout",
                                 0)))
    fusion, pipeline = t.pipeline.fusion, t.pipeline
    params = {k: p for k, p in fusion.named_parameters() if p.requires_grad}
    fit_in = batch_inputs(t, fit)
    fused = pipeline.run_fusion(fusion, fit_in.seen, fit_in.text)
    weights = resolve_fusion_weights(config.fusion_loss_weights)
    _, parts = fusion_loss(fused, pipeline.fusion_sources(fit_in.clean), config.fusion_loss_weights or None)
    grads = {}
    for name, value in parts.items():
        g = torch.autograd.grad(weights[name] * value, list(params.values()), retain_graph=True, allow_unused=True,
                                materialize_grads=True)
        grads[name] = dict(zip(params, g))
    record: dict[str, float] = {}
    lower_loss, upper_loss = bilevel_losses(t, fit, hold, record)
    result = module_hypergradient(fusion, pipeline.seg, lower_loss, upper_loss, config.method, **engine_options(t))
    grads["segmentation (lambda x hypergradient)"] = {k: config.lambda_seg * g for k, g in result.grads.items()}
    total = {k: sum(g[k] for g in grads.values()) for k in params}
    seg = grads["segmentation (lambda x hypergradient)"]

    def cosine(a: dict, b: dict) -> float:
        """Cosine of two gradients (dicts of tensors)."""
        dot = sum(float((a[k] * b[k]).sum()) for k in a)
        return dot / (tensor_norm(a) * tensor_norm(b)) if tensor_norm(a) and tensor_norm(b) else float("nan")

    return {"terms": {name: {"norm": tensor_norm(g), "share": tensor_norm(g) / tensor_norm(total),
                             "cosine_to_seg": cosine(g, seg), "cosine_to_update": cosine(g, total)}
                      for name, g in grads.items()},
            "update_norm": tensor_norm(total), "losses": {k: float(v.detach()) for k, v in parts.items()}}


def markdown(per_seed: dict[int, dict[str, Any]]) -> str:
    """One line per term: share of the update's norm and cosine with the segmentation hypergradient."""
    names = list(next(iter(per_seed.values()))["terms"])
    lines = [("| term (weighted as in training) | norm / update norm | cosine with the segmentation part | "
             "cosine with the update |"), "|---|---|---|---|"]
    for name in names:
        cells = []
        for key in ("share", "cosine_to_seg", "cosine_to_update"):
            v = np.array([r["terms"][name][key] for r in per_seed.values()])
            cells.append(f"{v.mean():+.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():+.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return (f"At the first outer step of the study's `{ROW}` row (mean ± sd over seeds {', '.join(map(str, per_seed))}):"
            "\n\n" + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Measure the seeds and write experiments/results/upper_terms.{md,json}."""
    args, _, out = study.experiment_args(HERE / "study.toml", __doc__.splitlines()[0], argv)
    target = args.results / "upper_terms.json"
    if args.report_only:
        per_seed = {int(k): v for k, v in json.loads(target.read_text(encoding="utf-8")).items()}
    else:
        study.prepare_data(study.SPEC, out, out / "data_log.txt")
        per_seed = {seed: first_step_terms(out / "bench-laplacian", seed, out / "upper-terms" / f"seed-{seed}")
                    for seed in SEEDS}
        target.write_text(json.dumps(per_seed, indent=1) + "\n", encoding="utf-8")
    text = markdown(per_seed)
    (args.results / "upper_terms.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
