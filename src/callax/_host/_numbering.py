"""Numbers for things that must travel as small integers (thread-safe, first come first
numbered): :class:`Numbering` never forgets; :class:`WeakNumbering` forgets what was garbage
collected (host functions named in compiled programs, see :mod:`._ffi`)."""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)
U = TypeVar("U")


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


class WeakNumbering(Generic[U]):
    """Like :class:`Numbering` for objects compared by identity (functions), without keeping
    them alive: an item's entry goes when the item is garbage collected, and numbers are
    never handed out twice (a dead item's number names nothing). Items that cannot be
    weakly referenced are kept for good. ``on_forget(number)`` runs when an entry goes."""

    def __init__(self, on_forget: Callable[[int], object] | None = None) -> None:
        self._on_forget = on_forget
        self._lock = threading.RLock()  # re-entered by a collection inside ``number``
        self._numbers: dict[int, int] = {}  # id(item) -> number, while the item lives
        self._items: dict[int, Callable[[], U | None]] = {}  # number -> (weak) reference
        self._next = 0

    def number(self, item: U) -> int:
        found = self._numbers.get(id(item))
        if found is not None and self.get_item(found) is item:
            return found
        with self._lock:
            found = self._numbers.get(id(item))
            if found is not None and self.get_item(found) is item:
                return found
            number, self._next = self._next, self._next + 1
            try:
                ref = weakref.ref(item, functools.partial(self._forget, number, id(item)))
            except TypeError:  # not weakly referenceable: kept
                ref = functools.partial(_same, item)
            self._items[number] = ref
            self._numbers[id(item)] = number
            return number

    def get_item(self, number: int) -> U | None:
        """The live item numbered ``number`` (``None`` if it was collected or never was)."""
        ref = self._items.get(number)
        return None if ref is None else ref()

    def __len__(self) -> int:
        return len(self._items)

    def _forget(self, number: int, ident: int, _ref: object) -> None:
        with self._lock:
            self._items.pop(number, None)
            if self._numbers.get(ident) == number:
                del self._numbers[ident]
        if self._on_forget is not None:
            self._on_forget(number)


def _same(item: U) -> U:
    return item
