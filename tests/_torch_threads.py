"""Shared autouse fixture for torch-heavy test modules: one intra-op thread per test.

Import it into a test module (``from _torch_threads import one_torch_thread  # noqa: F401``):
pytest registers fixtures found in a module's globals, and ``autouse`` applies it to every test there.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread per test: `pytest -n 2` already uses both cores, and oversubscribed
    OpenMP threads make tiny convolutions up to 100x slower on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
