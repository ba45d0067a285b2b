"""A hyperparameter sweep as the host sees it (no JAX here): which configuration and which
seed each batch position is, and the names of the configurations' run directories.

A sweep batch is ``configurations x seeds`` elements, numbered by callax's flat batch
position (the outer ``vmap`` axis varies slowest, devices before local positions). The
sweep declares which axis holds the configurations: by default the outer one, so position
``p`` is configuration ``p // seeds``, seed ``p % seeds``; with ``seeds_outer`` it is
configuration ``p % configurations``, seed ``p // configurations``.

A configuration's directory is named by its values, ``learning_rate=3e-4,clip_range=0.2``
(each number in its shortest exact float32 form), so TensorBoard's run list, cut after a
few dozen characters, starts with what differs between configurations.
"""

from __future__ import annotations

import dataclasses
import re
import threading

import numpy as np

__all__ = ["SweepLayout", "format_value", "layout_of", "parse_config_name", "set_layout"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def format_value(value: float | np.floating) -> str:
    """The shortest text that reads back as the same float32: ``3e-4``, ``0.2``, ``0``."""
    number = np.float32(value)
    if not np.isfinite(number):
        raise ValueError(f"a sweep's values must be finite, got {value!r}")
    if number == np.round(number) and abs(number) < 1e6:
        return str(int(number))
    positional = np.format_float_positional(number, unique=True, trim="-")
    scientific = np.format_float_scientific(number, unique=True, trim="-", exp_digits=1)
    return scientific if len(scientific) < len(positional) else positional


def check_names(names: tuple[str, ...]) -> None:
    """Hyperparameter names of a sweep: identifiers (``learning_rate``), distinct."""
    if not names:
        raise ValueError("a sweep needs at least one hyperparameter")
    for name in names:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"a sweep's hyperparameter names must be identifiers (letters, "
                             f"digits, '_', '.', '-'), got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"a sweep's hyperparameter names must be distinct, got {names}")


def parse_config_name(name: str) -> dict[str, float] | None:
    """The values of a configuration directory's name (``None`` if `name` is not one)."""
    values = {}
    for part in name.split(","):
        key, sep, text = part.partition("=")
        if not sep or not _NAME.fullmatch(key) or key in values:
            return None
        try:
            values[key] = float(text)
        except ValueError:
            return None
    return values


@dataclasses.dataclass(frozen=True)
class SweepLayout:
    """Configurations ``table[C, n]`` of hyperparameters ``names[n]``, ``seeds`` seeds each,
    the seeds on the inner batch axis unless ``seeds_outer``."""

    names: tuple[str, ...]
    table: np.ndarray
    seeds: int
    seeds_outer: bool = False

    def __post_init__(self):
        check_names(self.names)
        if self.table.ndim != 2 or self.table.shape[1] != len(self.names):
            raise ValueError(f"a sweep's table must be [configurations, {len(self.names)}], "
                             f"got shape {self.table.shape}")
        if self.seeds < 1:
            raise ValueError(f"a sweep needs at least one seed per configuration, got "
                             f"{self.seeds}")
        for row in self.table:
            for value in row:
                format_value(value)

    def same_as(self, other: SweepLayout) -> bool:
        return (self.names == other.names and self.seeds == other.seeds
                and self.seeds_outer == other.seeds_outer
                and np.array_equal(self.table, other.table))

    @property
    def configurations(self) -> int:
        return int(self.table.shape[0])

    @property
    def size(self) -> int:
        """Batch elements of the sweep: configurations times seeds."""
        return self.configurations * self.seeds

    def locate(self, position: int) -> tuple[int, int]:
        """``(configuration, seed)`` of flat batch position `position`."""
        if not 0 <= position < self.size:
            raise ValueError(f"batch position {position} is outside the sweep of "
                             f"{self.configurations} configurations x {self.seeds} seeds")
        if self.seeds_outer:
            return position % self.configurations, position // self.configurations
        return divmod(position, self.seeds)

    def config(self, index: int) -> dict[str, float]:
        """Configuration `index` as ``{name: value}``: each float32 value as the Python
        float of its shortest text (``3e-4`` is ``0.0003``, as its directory says)."""
        return {name: float(format_value(v))
                for name, v in zip(self.names, self.table[index], strict=True)}

    def name(self, index: int) -> str:
        """The directory name of configuration `index`: ``name=value,...``."""
        return ",".join(f"{n}={format_value(v)}"
                        for n, v in zip(self.names, self.table[index], strict=True))


_layouts: dict[int, SweepLayout] = {}
_lock = threading.Lock()


def set_layout(handle: int, layout: SweepLayout) -> None:
    """Record run `handle`'s sweep for the host calls that follow (in program order)."""
    with _lock:
        _layouts[int(handle)] = layout


def layout_of(handle: int) -> SweepLayout | None:
    """The sweep declared for run `handle`, if any."""
    with _lock:
        return _layouts.get(int(handle))
