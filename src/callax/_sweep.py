"""``callax.Sweep``: a hyperparameter sweep run as one compiled program, ``vmap`` over the
configurations and, inside it, over the seeds, logged as one run per configuration and seed.

The sweep is declared once, to the callback that opens the run
(``TensorBoardCallback(..., sweep=sweep)``): its hyperparameters' names and values
(``values[name][C]``, traced or not), how many seeds each configuration has, and which
``vmap`` axis is which (configurations outer by default). Nothing is inferred from the
batch: at each training's start one host call for the whole batch sends the table with
every element's flat batch position (:func:`callax._host.send`), the host checks that the
positions are exactly the ``C x S`` of the declaration, and from then on position ``p`` is
written to ``<run>/<configuration>/seed_<s>`` (see :mod:`callax._writer._sweep`).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, Key

from . import _host, _writer as host
from ._writer._sweep import SweepLayout, check_names

__all__ = ["Sweep", "declare_sweep"]


class Sweep(eqx.Module):
    """A hyperparameter sweep: ``C`` configurations (a value of every hyperparameter each),
    each trained with ``seeds`` seeds, in one ``vmap``-ed program.

    Build it from columns (``Sweep({"learning_rate": [1e-3, 3e-4]}, seeds=4)``: one value
    per configuration in every column) or as a grid (:meth:`grid`). The values may be
    traced arrays. Train it with :meth:`vmap` (which nests the two ``vmap`` axes as
    declared) and give it to the [`callax.TensorBoardCallback`][] of the run: each
    configuration and seed is then the run ``<run>/<name>=<value>,.../seed_<s>``, with its
    configuration's values in its HParams trial ([`callax.HParamsCallback`][]), its JSON
    lines and its W&B config.

    **Attributes:**

    - `names`: the hyperparameters, in the order their directory names list them.
    - `table`: ``float32[C, len(names)]``, configuration ``c``'s values in row ``c``.
    - `seeds`: seeds per configuration.
    - `seeds_outer`: the seeds are the *outer* ``vmap`` axis (default: the configurations
      are, and batch position ``p`` is configuration ``p // seeds``, seed ``p % seeds``).
    """

    table: Float[Array, "configs n"]
    names: tuple[str, ...] = eqx.field(static=True)
    seeds: int = eqx.field(static=True)
    seeds_outer: bool = eqx.field(static=True)

    def __init__(self, values: Mapping[str, ArrayLike | Sequence[float]], seeds: int, *,
                 seeds_outer: bool = False):
        """**Arguments:**

        - `values`: ``{name: values}``, one value per configuration for every name (all of
          one length ``C``).
        - `seeds`: seeds per configuration (the size of the seeds' ``vmap`` axis).
        - `seeds_outer`: whether the seeds are the outer ``vmap`` axis.
        """
        names = tuple(values)
        check_names(names)
        if isinstance(seeds, bool) or not isinstance(seeds, int | np.integer) or seeds < 1:
            raise ValueError(f"seeds must be a positive int, got {seeds!r}")
        columns = [jnp.asarray(values[n], jnp.float32) for n in names]
        lengths = {n: c.shape for n, c in zip(names, columns, strict=True)}
        if any(len(shape) != 1 for shape in lengths.values()) or len(set(lengths.values())) != 1:
            raise ValueError(f"a sweep's values must be 1-D, one value per configuration, of "
                             f"one length; got shapes {lengths}")
        if columns[0].shape[0] < 1:
            raise ValueError("a sweep needs at least one configuration")
        self.table = jnp.stack(columns, axis=1)
        self.names = names
        self.seeds = int(seeds)
        self.seeds_outer = bool(seeds_outer)

    @classmethod
    def grid(cls, values: Mapping[str, Sequence[float] | ArrayLike], seeds: int, *,
             seeds_outer: bool = False) -> Sweep:
        """Every combination of the given values (the first name varies slowest):
        ``Sweep.grid({"learning_rate": [1e-3, 3e-4], "ent_coef": [0, 0.01]}, seeds=4)``
        has 4 configurations."""
        names = tuple(values)
        combos = list(itertools.product(*(list(np.asarray(values[n]).reshape(-1))
                                          for n in names)))
        return cls({n: [c[i] for c in combos] for i, n in enumerate(names)}, seeds,
                   seeds_outer=seeds_outer)

    @property
    def configurations(self) -> int:
        """``C``, the number of configurations."""
        return int(self.table.shape[0])

    @property
    def size(self) -> int:
        """``C * seeds``: the batch of the whole sweep."""
        return self.configurations * self.seeds

    @property
    def values(self) -> dict[str, Float[Array, " configs"]]:
        """``{name: values[C]}``."""
        return {n: self.table[:, i] for i, n in enumerate(self.names)}

    def vmap(self, fn: Callable[[dict[str, Array], Key[Array, ""]], Any]
             ) -> Callable[[Key[Array, " seeds"]], Any]:
        """``fn(config, key)`` over every configuration and seed, nested as declared:
        ``sweep.vmap(fn)(keys)`` with ``keys[seeds]`` returns outputs with leading axes
        ``[C, seeds]`` (``[seeds, C]`` with `seeds_outer`). ``config`` is
        ``{name: value}`` of the element's configuration; seed ``s`` gets ``keys[s]`` in
        every configuration (common random numbers: configurations differ only by their
        values). The key ``fn`` receives varies over both axes (with the same value), so
        every callback that makes a host call from it numbers each (configuration, seed)
        as the sweep does."""
        def element(row, key):
            config = {n: row[i] for i, n in enumerate(self.names)}
            data = jax.random.key_data(key)
            key = jax.random.wrap_key_data(data + (0 * row[0]).astype(data.dtype),
                                           impl=jax.random.key_impl(key))
            return fn(config, key)

        def run(keys):
            if self.seeds_outer:
                return jax.vmap(lambda k: jax.vmap(lambda r: element(r, k))(self.table))(keys)
            return jax.vmap(lambda r: jax.vmap(lambda k: element(r, k))(keys))(self.table)

        return run

    def layout(self) -> SweepLayout:
        """The host's view of a concrete sweep (not under ``jit`` with traced values)."""
        return SweepLayout(self.names, np.asarray(self.table, np.float32), self.seeds,
                           self.seeds_outer)


def _layout(names, seeds, seeds_outer, when, handle, table):
    rows = np.flatnonzero(when)
    if rows.size == 0:
        return None, rows
    return SweepLayout(names, np.asarray(table[rows[0]], np.float32), seeds, seeds_outer), rows


@functools.cache
def _set_on_host(names: tuple[str, ...], seeds: int, seeds_outer: bool):
    """Every process's part of a declaration (with several processes): each device of
    each process sets the layout of its run before its own writes (no check: the
    process that sees every position makes it)."""
    def on_host(seed, when, handle, table, marker) -> None:
        del seed, marker
        layout, rows = _layout(names, seeds, seeds_outer, when, handle, table)
        if layout is not None:
            for h in np.unique(handle[rows]).tolist():
                host.set_sweep(int(h), layout)

    return on_host


@functools.cache
def _declare_on_host(names: tuple[str, ...], seeds: int, seeds_outer: bool):
    def on_host(seed, when, handle, table, marker) -> None:
        del marker
        layout, rows = _layout(names, seeds, seeds_outer, when, handle, table)
        if layout is None:
            return
        positions = np.sort(seed[rows])
        if positions.size != layout.size or not np.array_equal(positions,
                                                              np.arange(layout.size)):
            found = ("no vmap" if positions.size == 1 and positions[0] == host.NO_SEED
                     else f"{positions.size} batch element(s)")
            raise ValueError(
                f"callax: the sweep declares {layout.configurations} configurations x "
                f"{seeds} seeds = {layout.size} batch elements, but its training start was "
                f"called from {found}: vmap over the configurations and the seeds (Sweep.vmap "
                "does), with a reset key that varies over both axes")
        for h in np.unique(handle[rows]).tolist():
            host.set_sweep(int(h), layout)

    return on_host


def declare_sweep(handle: Int[ArrayLike, ""], sweep: Sweep, key: Key[Array, ""] | None = None,
                  hparams: Mapping[str, ArrayLike] | None = None) -> None:
    """Declare run `handle` a sweep at a training's start (from inside the vmapped
    training, before its first write): one host call for the whole batch. `key` (the
    element's reset key) and `hparams` (the element's hyperparameters, if the loop has
    them) only make the call vary over the batch axes, so that every element is counted."""
    marker = jnp.zeros((), jnp.float32)
    if key is not None:
        marker = marker + jax.random.key_data(key).reshape(-1)[0].astype(jnp.float32) * 0
    for value in (hparams or {}).values():
        marker = marker + jnp.sum(jnp.asarray(value, jnp.float32)) * 0
    args = (jnp.asarray(handle, jnp.int32), sweep.table, marker)
    _host.send(_declare_on_host(sweep.names, sweep.seeds, sweep.seeds_outer), *args)
    if jax.process_count() > 1:
        # ``send`` calls the host from one device of one process: the other processes
        # write their own seeds and must know the sweep too.
        _host.each_device(_set_on_host(sweep.names, sweep.seeds, sweep.seeds_outer))(
            jnp.asarray(True), _host.seed_origin(), *args)
