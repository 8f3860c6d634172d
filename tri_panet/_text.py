"""Small text helpers for messages."""

from __future__ import annotations

from collections.abc import Sequence


def listing(items: Sequence[object], limit: int = 3, sep: str = ", ") -> str:
    """The first ``limit`` items joined by ``sep``, then how many more: ``a, b, c and 2 more``
    (messages name a few of many files, not all of them)."""
    shown = sep.join(str(x) for x in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
