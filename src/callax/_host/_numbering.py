"""Numbers for things that must travel as small integers (thread-safe, first come first
numbered, never forgotten)."""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


class Numbering(Generic[T]):
    """``number(item)``: the same item, the same number (0, 1, 2, ... in order of first
    use); ``self[n]``: the item numbered ``n``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._numbers: dict[T, int] = {}
        self._items: list[T] = []

    def number(self, item: T) -> int:
        found = self._numbers.get(item)
        if found is None:
            with self._lock:
                found = self._numbers.get(item)
                if found is None:
                    found = self._numbers[item] = len(self._items)
                    self._items.append(item)
        return found

    def get(self, item: T) -> int | None:
        """The number of ``item`` if it has one."""
        return self._numbers.get(item)

    def __getitem__(self, number: int) -> T:
        return self._items[number]
