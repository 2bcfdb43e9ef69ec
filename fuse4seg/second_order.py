"""Whether the backward passes recorded now will be differentiated again (second-order autodiff).

``fuse4seg.bilevel`` computes its hypergradients under :func:`second_order_passes`; layers that can skip work
torch would do there read :func:`in_second_order_passes` when they run (``fuse4seg.models.convolution``), and
run as torch's own layers otherwise, so ordinary training never takes their path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_ACTIVE: ContextVar[bool] = ContextVar("fuse4seg_second_order", default=False)


@contextmanager
def second_order_passes() -> Iterator[None]:
    """Within this block, forward passes may have their backward differentiated (create_graph=True)."""
    token = _ACTIVE.set(True)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def in_second_order_passes() -> bool:
    """True inside :func:`second_order_passes`."""
    return _ACTIVE.get()
