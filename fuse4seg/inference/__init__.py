"""Applying a trained run: ``fuse`` (one BraTS case -> fused image and labels, a predictor per run variant) and
``build-benchmark --fusion-checkpoint`` (a package fused by a run's network)."""
