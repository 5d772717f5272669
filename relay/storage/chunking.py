"""Long lists of values cut into statements of at most IN_CHUNK each, for both
backends: SQLite limits the variables of one statement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

IN_CHUNK = 500  # values (or rows) per statement: well under SQLite's variable limit


def chunks(values: Sequence[T]) -> list[Sequence[T]]:
    """`values` in slices of at most IN_CHUNK."""
    return [values[i : i + IN_CHUNK] for i in range(0, len(values), IN_CHUNK)]
