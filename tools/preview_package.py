"""Draw a PNG of a BraTS-Fuse package's slices (t1 | t1ce | t2 | flair | fused | label) to look at it.

    python tools/preview_package.py brats_fuse --split train --rows 6 --out preview.png

Rows are spread evenly over the split; each shows the four normalised sources, the stored fused
image and the label map drawn over the fused image (NCR red, ED green, ET yellow).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from PIL import Image

from fuse4seg.data import BraTSFuse
from fuse4seg.errors import Fuse4SegError, cli_message
from fuse4seg.io import atomic_path
from fuse4seg.runkit.visual import gray_to_rgb, label_to_rgb, panel_grid


def preview_rows(dataset: BraTSFuse, rows: int, gap: int = 2) -> list[np.ndarray]:
    """(H, 6W + gaps, 3) uint8 rows for ``rows`` items spread evenly over ``dataset``."""
    picks = np.unique(np.linspace(0, len(dataset) - 1, num=min(rows, len(dataset))).round().astype(int))
    out = []
    for index in picks:
        item = dataset[int(index)]
        fused = item["fused"][0].numpy()
        tiles = [gray_to_rgb(s) for s in item["source"].numpy()]
        tiles += [gray_to_rgb(fused), label_to_rgb(item["label"].numpy(), fused)]
        spacer = np.full((tiles[0].shape[0], gap, 3), 255, dtype=np.uint8)
        out.append(np.concatenate([p for t in tiles for p in (t, spacer)][:-1], axis=1))
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse options, draw the preview, write it atomically; one-line error and exit 1 on bad input."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", help="BraTS-Fuse package directory (or its brats_fuse.h5)")
    parser.add_argument("--split", default="train", choices=("train", "val", "test"))
    parser.add_argument("--rows", type=int, default=6, help="number of slices to draw (default 6)")
    parser.add_argument("--out", default="preview.png", help="PNG file to write")
    args = parser.parse_args(argv)
    try:
        if args.rows < 1:
            raise Fuse4SegError(f"must be at least 1, got {args.rows}", option="rows")
        dataset = BraTSFuse(args.package, args.split)
        if len(dataset) == 0:
            raise Fuse4SegError(f"{args.package}: split {args.split!r} holds no slices")
        grid = panel_grid(preview_rows(dataset, args.rows))
        with atomic_path(args.out) as tmp:
            Image.fromarray(grid).save(tmp, format="PNG")
    except Fuse4SegError as exc:
        print(f"error: {cli_message(exc)}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({grid.shape[1]} x {grid.shape[0]} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
