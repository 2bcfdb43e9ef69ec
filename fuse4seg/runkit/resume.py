"""Whether a stored run may be continued: the same options except the resumable ones, the same data by content.

One check for ``train`` (a checkpoint's options against RUN/config.json's, the options given with --resume
against the stored ones) and ``pretrain`` (PRE/config.json's options, PRE/last.pt's package). Each caller
words its own refusal (``refuse``), so the messages name what the user gave and how to fix it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any


def check_same_options(stored: Mapping[str, Any], current: Mapping[str, Any], resumable: Collection[str],
                       refuse: Callable[[str, Any, Any], Exception]) -> None:
    """Raise ``refuse(key, stored value, current value)`` for the first key of ``current`` (in its order) not in
    ``resumable`` whose stored value differs (a key absent from ``stored`` reads None)."""
    for key, value in current.items():
        if key not in resumable and stored.get(key) != value:
            raise refuse(key, stored.get(key), value)


def check_same_benchmark(stored: Mapping[str, Any] | None, sha256: str, refuse: Callable[[], Exception]) -> None:
    """Raise ``refuse()`` unless the stored identity (a checkpoint's "benchmark" entry; None: none recorded) has
    this ``sha256`` (hex) of the package: a package can be moved, or rebuilt in place with other content, so the
    path proves nothing."""
    if stored is None or stored.get("sha256") != sha256:
        raise refuse()
