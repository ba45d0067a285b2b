"""Layouts (a tuple of tags as a small integer) and the packed payload of a write: one
``int32`` array per batch element, unpacked and handed to the writer on the host."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .. import _step, _writer as host
from ._numbering import Numbering

__all__ = ["known_layout", "layout_tags", "register_layout"]


_layouts: Numbering[tuple[str, ...]] = Numbering()


def register_layout(tags: tuple[str, ...]) -> int:
    """A small integer standing for a tuple of tags, so that the tags of a packed payload can
    travel as data (a buffer filled in one traced function and flushed from another)."""
    return _layouts.number(tags)


def layout_tags(layout: int) -> tuple[str, ...]:
    """The tags of a registered layout."""
    return _layouts[layout]


def known_layout(tags: tuple) -> int | None:
    """The layout of ``tags`` if it is registered already (``None`` otherwise)."""
    try:
        return _layouts.get(tags)
    except TypeError:  # unhashable: not a layout (the checks will say why)
        return None


_HEADER = 7  # layout, handle, seed, pred, sync, K, width


def _pack(layout, handle, seed, steps, values, valid, pred, sync) -> jax.Array:
    """One int32 array per batch element (a host call costs per operand): a header, the
    steps as two 32-bit words each (``hi, lo``: 64-bit steps without x64, see
    :mod:`callax._step`), the validity mask and the float32 values bit-cast to int32."""
    batch = jnp.shape(seed)
    k, width = jnp.shape(values)[-2:]

    def column(x):
        return jnp.broadcast_to(jnp.asarray(x, jnp.int32), batch)[..., None]

    header = [column(layout), column(handle), column(seed), column(pred), column(sync),
              column(k), column(width)]
    body = [
        jax.lax.bitcast_convert_type(jnp.broadcast_to(steps, (*batch, k, 2)), jnp.int32)
        .reshape(*batch, 2 * k),
        jnp.broadcast_to(valid, (*batch, k, width)).reshape(*batch, k * width).astype(jnp.int32),
        jax.lax.bitcast_convert_type(
            jnp.broadcast_to(values, (*batch, k, width)).astype(jnp.float32), jnp.int32
        ).reshape(*batch, k * width),
    ]
    return jnp.concatenate(header + body, axis=-1)


def _host_write(packed) -> None:
    packed = np.asarray(packed)
    rows = packed.reshape(-1, packed.shape[-1])
    layout, handle, seed, pred, sync, k, width = rows[:, :_HEADER].T
    k, width = int(k[0]), int(width[0])
    steps = _step.words_to_int64(rows[:, _HEADER:_HEADER + 2 * k].reshape(-1, k, 2))
    start = _HEADER + 2 * k
    valid = rows[:, start:start + k * width].reshape(-1, k, width) != 0
    values = rows[:, start + k * width:].view(np.float32).reshape(-1, k, width)
    valid &= (pred != 0)[:, None, None]
    steps, valid, error = _check_steps(steps, valid, handle, layout)
    # A sync call writes in this thread: it waits for the files anyway, and handing the batch
    # to the writer thread first costs two thread switches (~0.25 ms on a busy core).
    wait = bool(sync.any())
    for h, lay in {(int(h), int(t)) for h, t in zip(handle, layout, strict=True)}:
        mine = (handle == h) & (layout == lay) & (pred != 0)
        if mine.any():
            tags = layout_tags(lay)
            n = len(tags)
            host.write(h, tags, seed[mine], steps[mine], values[mine][..., :n],
                       valid[mine][..., :n], wait=wait)
    if wait:
        for h in np.unique(handle).tolist():
            host.flush(h, report=False)  # write errors: raised by the run's eager flush
    if error is not None:
        raise error


def _check_steps(steps, valid, handle, layout):
    """Map the AUTO word pattern to the host's ``AUTO_STEP``; a negative step anywhere else
    is an error naming its tags. Its rows are dropped (the others are written), and the
    error is raised by the host call itself, so the jitted function that made it fails."""
    auto = steps == _step.AUTO
    negative = (steps < 0) & ~auto & valid.any(axis=-1)
    error = None
    if negative.any():
        b, row = (int(i[0]) for i in np.nonzero(negative))
        tags = [t for t, ok in zip(layout_tags(int(layout[b])), valid[b, row], strict=False)
                if ok]
        error = ValueError(
            f"callax: negative global step {int(steps[b, row])} for tag(s) "
            f"{', '.join(map(repr, tags))} of run {host.get_run(int(handle[b])).log_dir!r}; "
            "steps must be >= 0 (pass global_step=None to continue from the last step)"
        )
        valid = valid & ~negative[..., None]
    return np.where(auto, host.AUTO_STEP, steps), valid, error


def _host_write_process_0(packed) -> None:
    """:func:`_host_write` on process 0 only (a no-op in the other processes)."""
    if jax.process_index() == 0:
        _host_write(packed)


def _host_writer(seed_axes, per_process: bool) -> Callable[..., None]:
    """The host function of a write: without seed axes a call holds replicated or gathered
    data (every process computes the same) or process-local data (``per_process``, written
    under ``process_<p>``); by default only process 0 writes it.

    Decided on the host, not in the traced program: a program partitioned over the devices
    of several processes must be the same program in every process (a predicate that
    differs per process leaves the others waiting in a collective: measured to deadlock
    sharded ``jit`` over 2 processes).
    """
    if seed_axes or per_process:
        return _host_write
    return _host_write_process_0
