"""Step 0 of bi-level training recomputed by plain autograd, without fuse4seg.bilevel (tests only)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.func import functional_call


def independent_step(bench: Path, config, lr_lower: float, step: int = 0, phi: dict | None = None,
                     theta: dict | None = None) -> tuple[dict, dict, dict, dict]:
    """(phi0, dL_fuse/dphi, dL_seg_hold/dphi, theta1) of step ``step`` (its batches) from the run's initial weights
    or the given ``phi`` / ``theta``: theta1 = theta0 - lr_lower dL_fit/dtheta
    (graph kept), L_fuse = L_fuse(F(x_fit), x_fit), L_seg_hold = L_seg(S_theta1(F(x_hold)), y_hold); the
    bi-level update direction is dL_fuse/dphi + lambda dL_seg_hold/dphi. Fusion inputs: t1ce, flair.
    """
    from fuse4seg.data import BraTSFuse
    from fuse4seg.losses import fusion_loss, segmentation_loss
    from fuse4seg.runkit.batches import batch_indices, split_by_case
    from fuse4seg.train.networks import build_pipeline

    data = BraTSFuse(bench, "train")
    case_ids = [data[i]["case_id"] for i in range(len(data))]
    fit_pool, hold_pool = split_by_case(case_ids, config.val_fraction, config.seed)

    def batch(pool: list[int], stream: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Fusion sources (t1ce, flair) and labels of the step's batch from ``pool``."""
        items = [data[pool[j]] for j in batch_indices(len(pool), config.batch_size, config.seed, step, stream)]
        return torch.stack([it["source"][[1, 3]] for it in items]), torch.stack([it["label"] for it in items])

    (x_fit, y_fit), (x_hold, y_hold) = batch(fit_pool, "fit"), batch(hold_pool, "holdout")
    pipeline = build_pipeline(config)
    phi = {k: v.detach().clone().requires_grad_() for k, v in (phi or dict(pipeline.fusion.named_parameters())).items()}
    theta = {k: v.detach().clone().requires_grad_()
             for k, v in (theta or dict(pipeline.seg.named_parameters())).items()}
    f, s = pipeline.fusion, pipeline.seg
    inner = segmentation_loss(functional_call(s, theta, (functional_call(f, phi, (x_fit,)),)), y_fit)
    g_theta = torch.autograd.grad(inner, list(theta.values()), create_graph=True)
    theta1 = {k: v - lr_lower * g for (k, v), g in zip(theta.items(), g_theta)}
    l_fuse = fusion_loss(functional_call(f, phi, (x_fit,)), x_fit)[0]
    l_seg = segmentation_loss(functional_call(s, theta1, (functional_call(f, phi, (x_hold,)),)), y_hold)
    g_fuse = dict(zip(phi, torch.autograd.grad(l_fuse, list(phi.values()))))
    g_seg = dict(zip(phi, torch.autograd.grad(l_seg, list(phi.values()))))
    return ({k: v.detach() for k, v in phi.items()}, g_fuse, g_seg, {k: v.detach() for k, v in theta1.items()})
