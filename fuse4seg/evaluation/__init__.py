"""Scoring a trained run: on the package's slices (an evaluator per run variant), on whole BraTS volumes under a
leaderboard convention, and against MR degradations (robustness)."""
