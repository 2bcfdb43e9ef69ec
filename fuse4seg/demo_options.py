"""The options of ``fuse4seg demo``, declared once: :class:`DemoOptions` (beside :mod:`fuse4seg.demo`), and
:func:`demo`, which runs the demo they describe."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fuse4seg.options import MAX_SEED, MAX_THREADS, CheckedOptions, in_range, option, seed_problem


@dataclass(frozen=True)
class DemoOptions(CheckedOptions):
    """The demo's output folder and the training settings a user may change."""

    out: str = option("runs/demo", "Directory for the demo's benchmark and run.", path=True)
    overwrite: bool = option(False, "Replace an existing --out directory.", recorded=False)
    threads: int = option(1, f"CPU threads for torch, 1 to {MAX_THREADS} (1 is robust on a busy 2-core machine).",
                          recorded=False, check=in_range(1, MAX_THREADS, integer=True))
    seed: int = option(0, f"Training seed (initial weights, data order; 0 to {MAX_SEED}); the benchmark stays the "
                          "same. The README quotes the demo over seeds 0-9.", check=seed_problem)


def demo(options: DemoOptions, echo: Callable[[str], Any] = print) -> dict[str, Any]:
    """Run :func:`fuse4seg.demo.run_demo` as ``options`` say, reporting through ``echo``."""
    from fuse4seg.demo import run_demo

    return run_demo(options.out, overwrite=options.overwrite, echo=echo,
                    train_overrides={"threads": options.threads, "seed": options.seed})
