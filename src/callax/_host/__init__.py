"""The one package that crosses from device to host (its primitives: :mod:`._primitives`).

Everything a jitted program sends to TensorBoard goes through :func:`emit`: one host call
carrying one packed batch (``steps[K]``, ``values[K, n]``, ``valid[K, n]``) for a tuple of
``n`` tags registered once as a *layout*. :func:`emit` is a
:func:`jax.custom_batching.custom_vmap` function: under ``jax.vmap`` (nested or not) it makes
**one** host call for the whole batch and tags every batch element with its flat position, so
each vmapped seed is written to its own run sub-directory ``seed_<i>``. The payload carries
the run handle, the tag layout, the seed position and the steps, so the host never depends on
call order or on which thread or device called it.

Other callbacks reach the host through :func:`send` (one generic batched host call with the
same seed numbering) and :func:`clock` (host clock reads returning to the device).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import threading
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import custom_batching
from jax.core import Tracer
from jax.experimental import io_callback
from jax.typing import ArrayLike

from .. import _step, _writer as host
from .._writer import _interrupt
from ._numbering import Numbering
from ._primitives import DIRECT_HOST_CALL as DIRECT_HOST_CALL, callback, read_clock, read_stop

__all__ = [
    "begin_training", "callback", "clock", "close", "emit", "flush", "flush_all", "is_traced",
    "layout_tags", "open_run", "register_layout", "seed_origin", "seed_positions", "send",
    "under_trace", "write_eager", "stop_requested", "training_started", "training_ended",
]


def is_traced(x) -> bool:
    return isinstance(x, Tracer)


def _make_under_trace() -> Callable[[], bool]:
    try:
        from jax._src.core import trace_ctx

        trace_ctx.is_top_level()
    except (ImportError, AttributeError):  # pragma: no cover - depends on the JAX version
        # Inside jit (and inside scan/cond bodies) a freshly made array is a tracer.
        return lambda: is_traced(jnp.zeros((), jnp.int32))
    return lambda: not trace_ctx.is_top_level()


under_trace = _make_under_trace()
under_trace.__doc__ = """Whether code is being traced (``jit``, ``vmap``, a ``scan`` body, ...)
rather than run eagerly; ~0.2 µs."""
_under_trace = under_trace


_run_names = itertools.count()


def _shared_name(log_dir: str | Callable[[], str], avoid_existing: bool, per_process: bool,
                 purge_step: int | None = None, writers=None) -> int:
    """Open a run on the host and return its handle, the name decided once for every process.

    With several processes (``jax.distributed``), process 0 names the run (time stamp,
    ``avoid_existing`` suffix) and publishes it in the distributed key-value store; the other
    processes wait for it (the n-th run opened by each process is the same run). With
    ``per_process`` each process then writes ``<run>/process_<p>``.
    """
    count, index = jax.process_count(), jax.process_index()
    if count == 1:
        return host.open_run(log_dir, avoid_existing=avoid_existing, purge_step=purge_step,
                             writers=writers)
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:  # pragma: no cover - processes without a coordinator
        raise RuntimeError("callax: several JAX processes but no jax.distributed client")
    key = f"callax/run/{next(_run_names)}"
    if index == 0:
        handle = host.open_run(log_dir, avoid_existing=avoid_existing, purge_step=purge_step,
                             writers=writers)
        name = host.get_run(handle).log_dir
        client.key_value_set(key, name)
    else:
        name = client.blocking_key_value_get(key, 300_000)
        handle = None
    if per_process:
        directory = os.path.join(name, f"process_{index}")
        if handle is not None:
            run = host.get_run(handle)
            run.log_dir = run.base_dir = directory
        else:
            handle = host.open_run(directory, purge_step=purge_step, writers=writers)
    elif handle is None:
        handle = host.open_run(name, purge_step=purge_step, writers=writers)
    return handle


def open_run(log_dir: str | Callable[[], str], *, avoid_existing: bool = False,
             per_process: bool = False, purge_step: int | None = None,
             writers=None) -> jax.Array:
    """Register a run and return its handle as an ``int32`` scalar.

    Called eagerly, the run is opened now. Called while tracing (inside ``jax.jit``), the run
    is opened by a host callback each time the compiled function executes, so every execution
    writes to a fresh run directory. With several processes the run's name is decided once
    (by process 0) and shared; ``per_process`` gives each process ``<run>/process_<p>``.
    ``purge_step``, ``writers``: see :func:`callax._writer.open_run` (writers are resolved
    here: an unknown name or a missing package fails now, not when the run opens).
    """
    writers = host.resolve_writers(writers)
    if not _under_trace():
        return jnp.asarray(_shared_name(log_dir, avoid_existing, per_process, purge_step,
                                        writers), jnp.int32)

    def _open() -> np.ndarray:
        return np.asarray(_shared_name(log_dir, avoid_existing, per_process, purge_step,
                                       writers), np.int32)

    return io_callback(_open, jax.ShapeDtypeStruct((), jnp.int32), ordered=False)


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


REDUCE_MODES = (None, "mean", "first")
"""How :func:`emit` treats enclosing manual axes (``pmap``/``shard_map``) that are not seed
axes: ``None`` (every manual axis numbers seeds), ``"mean"`` (average over the other axes,
written once) or ``"first"`` (the values of the axes' first device, written once)."""


def manual_axes() -> tuple[tuple[str, int], ...]:
    """The manual mesh axes enclosing the code being traced (``jax.pmap``, ``shard_map``),
    as ``(name, size)`` in mesh order; ``()`` under plain ``jit`` or eagerly."""
    mesh = jax.sharding.get_abstract_mesh()
    manual = set(getattr(mesh, "manual_axes", ()) or ())
    if not manual:
        return ()
    return tuple((name, int(mesh.shape[name])) for name in mesh.axis_names if name in manual)


def vary(tree):
    """Mark every array of ``tree`` as varying over all enclosing manual axes (a no-op
    outside ``pmap``/``shard_map``). Initial callback states get this so that a loop carry
    updated with device-varying data (``shard_map``'s ``check_vma=True``) keeps its type."""
    names = {name for name, _ in manual_axes()}
    if not names:
        return tree

    def leaf(x):
        x = jnp.asarray(x)
        aval = jax.typeof(x)
        kind = getattr(aval, "manual_axis_type", None)  # JAX >= 0.10
        varying = getattr(kind, "varying", ()) if kind is not None else getattr(aval, "vma", ())
        missing = names - set(varying or ())
        if not missing:
            return x
        return jax.lax.pcast(x, tuple(sorted(missing)), to="varying")

    return jax.tree_util.tree_map(leaf, tree)


def on_mesh(tree):
    """Under a mesh with ``Explicit`` axes (``jax.set_mesh``), give every array of ``tree``
    the mesh's replicated sharding (a no-op elsewhere). Scalars made inside ``jit`` carry no
    mesh; as the initial carry of a ``scan`` that ``vmap`` batches over an Explicit-sharded
    axis, JAX 0.10 then fails to place the batch axis on them."""
    mesh = jax.sharding.get_abstract_mesh()
    explicit = jax.sharding.AxisType.Explicit
    if not any(t == explicit for t in (getattr(mesh, "axis_types", ()) or ())):
        return tree
    spec = jax.sharding.PartitionSpec()
    return jax.tree_util.tree_map(lambda x: jax.sharding.reshard(jnp.asarray(x), spec), tree)


def split_axes(axis_names: tuple[str, ...] | None, reduce: str | None
               ) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, int], ...]]:
    """Split the enclosing manual axes into *seed axes* (each device writes its own seeds)
    and *replicated axes* (reduced with ``reduce`` and written once), at trace time.

    ``axis_names=None`` means every manual axis when ``reduce`` is ``None`` and none
    otherwise. Raises if a named axis does not enclose the call, or if devices along a
    replicated axis would write the same (run, seed, tag, step) because ``reduce`` is None.
    """
    if reduce not in REDUCE_MODES:
        raise ValueError(f"reduce must be one of {REDUCE_MODES}, got {reduce!r}")
    axes = manual_axes()
    if axis_names is None:
        seed_names = {name for name, _ in axes} if reduce is None else set()
    else:
        seed_names = set(axis_names)
        unknown = seed_names - {name for name, _ in axes}
        if unknown:
            raise ValueError(
                f"axis_names {sorted(unknown)} do not name a manual axis (pmap/shard_map) "
                f"enclosing this write; enclosing manual axes: {[n for n, _ in axes]}")
    seed_axes = tuple(a for a in axes if a[0] in seed_names)
    replicated = tuple(a for a in axes if a[0] not in seed_names and a[1] > 1)
    if replicated and reduce is None:
        names = [n for n, _ in replicated]
        raise ValueError(
            f"the {math.prod(s for _, s in replicated)} device calls along manual axes "
            f"{names} would write the same (run, seed, tag, step), and all but one would be "
            "dropped: include these axes in axis_names (one seed per device) or pass "
            "reduce='mean' or reduce='first' (one run for replicated training)")
    return seed_axes, replicated


def device_position(axes: tuple[tuple[str, int], ...]) -> tuple[jax.Array, int]:
    """This device call's index over ``axes`` (device-major, the first axis slowest, as the
    flat position of a sharded array's element) and the number of positions."""
    index = jnp.zeros((), jnp.int32)
    for name, size in axes:
        index = index * size + jax.lax.axis_index(name).astype(jnp.int32)
    return index, math.prod(size for _, size in axes)


def global_seed(seed: jax.Array, axes: tuple[tuple[str, int], ...]) -> jax.Array:
    """The global seed index of batch elements at local (vmap) positions ``seed``: device
    position over ``axes`` times the local batch size plus the local position. A scalar
    ``NO_SEED`` (no vmap) becomes the device position; with no axes ``seed`` is unchanged."""
    if not axes:
        return seed
    device, _ = device_position(axes)
    if jnp.ndim(seed) == 0:
        return device
    return device * math.prod(jnp.shape(seed)) + seed


def _reduce(axes, reduce, values, valid, pred):
    """Reduce a batch over the replicated ``axes``; only their first device keeps ``pred``."""
    names = tuple(name for name, _ in axes)
    first = device_position(axes)[0] == 0
    if reduce == "mean":
        count = jax.lax.psum(valid.astype(jnp.float32), names)
        total = jax.lax.psum(jnp.where(valid, values, 0.0), names)
        values = total / jnp.maximum(count, 1.0)
        valid = count > 0
        pred = jax.lax.psum(pred.astype(jnp.int32), names) > 0
    return values, valid, pred & first


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


def _gathered(*arrays):
    """On a mesh with ``Explicit`` axes (``jax.set_mesh``), reshard the operands of a host
    call to replicated: the call runs on one device and gets every element anyway, and
    operands of mixed shardings cannot be packed into one array otherwise."""
    mesh = jax.sharding.get_abstract_mesh()
    explicit = jax.sharding.AxisType.Explicit
    if not any(t == explicit for t in (getattr(mesh, "axis_types", ()) or ())):
        return arrays
    spec = jax.sharding.PartitionSpec()
    return tuple(jax.sharding.reshard(jnp.asarray(a), spec) for a in arrays)


@functools.cache
def _emitter(axis_names: tuple[str, ...] | None, reduce: str | None, per_process: bool):
    """The ``custom_vmap`` function behind :func:`emit` for one static configuration."""

    @custom_batching.custom_vmap
    def _emit(layout, handle, seed, steps, values, valid, pred, sync):
        seed_axes, replicated = split_axes(axis_names, reduce)

        def send(values, valid, pred):
            if replicated:
                values, valid, pred = _reduce(replicated, reduce, values, valid, pred)
            host_fn = _host_writer(seed_axes, per_process)
            args = _gathered(layout, handle, global_seed(seed, seed_axes), steps, values,
                             valid, pred, sync)
            jax.lax.cond(jnp.any(pred | sync),
                         lambda: callback(host_fn, _pack(*args)), lambda: None)

        if replicated:
            # The reduction's collectives run only when some device of the replicated axes
            # sends (one scalar all-reduce per call decides, so all devices agree), not at
            # every buffered row.
            names = tuple(name for name, _ in replicated)
            anyone = jax.lax.psum(jnp.any(pred | sync).astype(jnp.int32), names) > 0
            jax.lax.cond(anyone, send, lambda *_: None, values, valid, pred)
        else:
            send(values, valid, pred)
        return jnp.zeros((), jnp.int32)

    _emit.def_vmap(functools.partial(batching_rule, _emit))
    return _emit


def batching_rule(fn, axis_size, in_batched, layout, handle, seed, *rest):
    """A ``custom_vmap`` rule for host calls shaped ``fn(layout, handle, seed, *rest)``: call
    ``fn`` once for the whole batch, every argument batched, each element's ``seed`` its
    flat (local) position. ``fn``'s unbatched body then turns local positions into global
    seeds with :func:`global_seed`."""
    def batched(x, is_batched):
        return x if is_batched else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))

    if not in_batched[2]:
        seed = seed_positions(axis_size, seed)
    args = (layout, handle, seed, *rest)
    flags = (*in_batched[:2], True, *in_batched[3:])
    fn(*(batched(x, b) for x, b in zip(args, flags, strict=True)))
    return jnp.zeros((axis_size,), jnp.int32), True


def emit(layout, handle, steps, values, valid, pred: ArrayLike = True,
         sync: ArrayLike = False, *, axis_names: tuple[str, ...] | None = None,
         reduce: str | None = None, per_process: bool = False) -> None:
    """Send ``steps[K]``, ``values[K, width]`` (where ``valid[K, width]`` and ``pred``) to the
    host, for the tags of ``layout`` (see :func:`register_layout`; columns past the number of
    tags are ignored). ``steps`` are integers or a :class:`callax.Step` (64-bit words); the
    step :data:`callax._step.AUTO` means "one more than the tag's last step", any other
    negative step makes the host call raise, naming the tags.

    With ``sync``, the same host call then waits until the run's files hold everything handed
    over (a separate flush callback could be reordered before the write by XLA).

    Under ``jax.vmap``, ``jax.pmap`` and ``shard_map`` each batch element is written to
    ``seed_<i>``, ``i`` its global index (see :func:`split_axes`, :func:`global_seed`);
    ``reduce`` writes replicated training once. With several processes, a call with no seed
    axis is written by process 0 only unless ``per_process``.
    """
    _emitter(None if axis_names is None else tuple(axis_names), reduce, bool(per_process))(
        jnp.asarray(layout, jnp.int32),
        jnp.asarray(handle, jnp.int32),
        seed_origin(),
        _step.as_words(steps),
        jax.lax.stop_gradient(jnp.asarray(values, jnp.float32)),
        jnp.asarray(valid, jnp.bool_),
        jnp.asarray(pred, jnp.bool_),
        jnp.asarray(sync, jnp.bool_),
    )


def write_eager(tags: tuple[str, ...], handle: int, steps: np.ndarray, values: np.ndarray,
                valid: np.ndarray, *, per_process: bool = False) -> None:
    """What :func:`emit` does for a call made outside any trace, without JAX: ``steps[K]``
    (``int64``, :data:`callax._step.AUTO` for "the next step"), ``values[K, n]`` and
    ``valid[K, n]`` for ``tags`` go straight to the writer thread (no program is compiled
    or run). Host calls of programs dispatched earlier run first (``jax.effects_barrier``,
    ~1 µs when none is pending), so eager and jitted writes stay in program order. With
    several processes only process 0 writes, unless ``per_process``."""
    if not _forked:
        jax.effects_barrier()
        if not per_process and jax.process_count() > 1 and jax.process_index() != 0:
            return
    steps = np.where(steps == _step.AUTO, host.AUTO_STEP, steps)
    if len(steps) == 1 and valid.all():  # add_scalar/add_dict: joins the rows queued before
        host.write_row(handle, tags, int(steps[0]), values[0])
    else:
        host.write(handle, tags, _NO_SEED_ROW, steps[None], values[None], valid[None])


_NO_SEED_ROW = np.array([host.NO_SEED])
_forked = False


def _after_fork_in_child() -> None:
    # JAX's runtime threads do not survive a fork: a forked worker's eager writes must not
    # wait for them (``effects_barrier`` would hang). Such a child writes as one process.
    global _forked
    _forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _each_handle(action: Callable[[int], None], handle: object) -> None:
    """``action(h)`` for every distinct run handle ``h`` in the array ``handle``."""
    for h in np.unique(np.asarray(handle)).tolist():
        action(h)


# --------------------------------------------------------------------------------------------
# A training begins: one run per training.

_begin_lock = threading.Lock()
_begin_calls: dict[tuple[int, int], int] = {}
_begun: dict[int, int] = {}


def _rollover_name(run) -> str:
    """The directory of a run's next training: the next free ``<base>_<n>``, decided by
    process 0 and shared through the distributed key-value store with several processes."""
    if jax.process_count() == 1:
        return host.unique_dir(run.base_dir, True)
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:  # pragma: no cover - processes without a coordinator
        raise RuntimeError("callax: several JAX processes but no jax.distributed client")
    key = f"callax/training/{run.base_dir}/{run.trainings}"
    if jax.process_index() == 0:
        name = host.unique_dir(run.base_dir, True)
        client.key_value_set(key, name)
        return name
    return client.blocking_key_value_get(key, 300_000)


def _begin_on_host(handle: int, device: int) -> None:
    # The k-th call from a device starts training k of the run; the first call of a training
    # (from whichever device calls first) moves the run on, the others find it done. Every
    # device's writes after its own call are queued after the move.
    with _begin_lock:
        count = _begin_calls[(handle, device)] = _begin_calls.get((handle, device), 0) + 1
        if count <= _begun.get(handle, 0):
            return
        _begun[handle] = count
    host.begin_training(handle, _rollover_name)


def _begin_rows(seed, when, handle, device) -> None:
    del seed
    rows = np.asarray(when)
    for h, d in {(int(h), int(d)) for h, d in zip(np.asarray(handle)[rows],
                                                   np.asarray(device)[rows], strict=True)}:
        _begin_on_host(h, d)


def begin_training(handle) -> None:
    """A training begins writing to run ``handle`` (a callback's ``reset``), eagerly or
    inside ``jit``/``vmap``/``pmap``/``shard_map``: if the run already holds points of an
    earlier training (a compiled training function executed again, a callback reused), its
    writes go on in a new directory ``<run>_<n>``, as a callback built inside ``jit`` does.
    In program order with the writes, under every device of a mesh (each device's writes
    after its call go to the new directory)."""
    if not is_traced(handle) and not under_trace():
        jax.effects_barrier()
        for h in np.unique(np.asarray(handle)).tolist():
            _begin_on_host(int(h), 0)
        return
    axes = manual_axes()
    device = device_position(axes)[0] if axes else jnp.zeros((), jnp.int32)
    if axes:
        # Every device calls for itself (its own writes must follow its own call).
        _each_device(_begin_rows)(jnp.asarray(True), seed_origin(),
                                  jnp.asarray(handle, jnp.int32), device)
    else:
        send(_begin_rows, jnp.asarray(handle, jnp.int32), device)


@functools.cache
def _each_device(host_fn: Callable[..., None]) -> Callable[..., jax.Array]:
    """Like :func:`send`, but every device of the enclosing manual axes calls ``host_fn``
    with its own rows (no gathering); with several processes, every process."""
    def on_host(when, seed, *arrays) -> None:
        seed, when, arrays = _flat_rows(seed, when, arrays)
        host_fn(seed, when, *arrays)

    @custom_batching.custom_vmap
    def call(when, seed, *arrays):
        jax.lax.cond(jnp.any(when), lambda: callback(on_host, when, seed, *arrays),
                     lambda: None)
        return jnp.zeros((), jnp.int32)

    @call.def_vmap
    def call_vmap(axis_size, in_batched, when, seed, *arrays):
        args = (when, seed, *arrays)
        call(*(x if b else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))
               for x, b in zip(args, in_batched, strict=True)))
        return jnp.zeros((axis_size,), jnp.int32), True

    return call


def _on_handles(action: Callable[[int], None]) -> Callable[..., None]:
    """A :func:`send` host function applying ``action`` to every run handle it receives."""
    def run(seed, when, handle) -> None:
        del seed
        _each_handle(action, np.asarray(handle)[np.asarray(when)])

    return run


def flush(handle) -> None:
    """Write everything handed over so far for this run and flush its files.

    Eagerly, this first waits for every pending host callback (``jax.effects_barrier``).
    Inside a traced function it is a host call of its own, in program order after the
    writes before it.
    """
    if is_traced(handle):
        send(_on_handles(functools.partial(host.flush, report=False)), handle)
    else:
        jax.effects_barrier()
        _each_handle(host.flush, handle)


def close(handle) -> None:
    """Flush and close the run's event files (same ordering rules as :func:`flush`)."""
    if is_traced(handle):
        send(_on_handles(functools.partial(host.close, report=False)), handle)
    else:
        jax.effects_barrier()
        _each_handle(host.close, handle)


def flush_all() -> None:
    """Wait for every pending host callback, then write and flush every run's event files.

    Call it eagerly (not inside a jitted function). It also runs at interpreter exit.
    """
    jax.effects_barrier()
    host.flush_all()


# --------------------------------------------------------------------------------------------
# The seed numbering, and generic batched host calls built on it.
#
# Every host call of callax numbers the elements of a ``vmap`` batch the same way, through
# the two functions below (``emit`` and ``send`` both use them): change the numbering here
# and every host call follows.


def seed_origin() -> jax.Array:
    """The seed position of a call made outside any batch (``NO_SEED``: the run itself)."""
    return jnp.asarray(host.NO_SEED, jnp.int32)


def seed_positions(axis_size: int, seed: ArrayLike) -> jax.Array:
    """Seed positions ``[axis_size, *shape(seed)]`` for a ``vmap`` of size ``axis_size``
    around calls whose (unbatched) seed positions are ``seed``: the flat row-major position
    of each element in the nested batch (outer axes vary slowest).

    ``seed`` is :func:`seed_origin` at the innermost ``vmap`` (a scalar), and the positions an
    inner ``vmap`` already assigned at every further level.
    """
    inner = math.prod(jnp.shape(seed))
    positions = jnp.arange(axis_size, dtype=jnp.int32).reshape(
        (axis_size,) + (1,) * jnp.ndim(seed)
    )
    return positions * inner + (0 if jnp.ndim(seed) == 0 else seed)


def _flat_rows(seed: np.ndarray, when: np.ndarray, arrays: tuple[np.ndarray, ...]):
    batch = np.ndim(seed)
    rows = lambda a: np.reshape(a, (-1, *np.shape(a)[batch:]))  # noqa: E731
    return rows(seed), rows(when), tuple(rows(a) for a in arrays)


def _gather_manual(when, seed, arrays):
    """Inside ``pmap``/``shard_map``: number seeds globally over every enclosing manual axis
    (as :func:`emit` does), gather every device's rows to all devices (one leading axis,
    device-major) and let only the first device call the host, so ``host_fn`` sees the
    whole batch in one call. Outside manual axes nothing changes. Returns ``when, seed,
    arrays`` and whether this device makes the call."""
    axes = manual_axes()
    if not axes:
        return when, seed, arrays, jnp.bool_(True)
    names = tuple(name for name, _ in axes)
    seed = global_seed(seed, axes)

    def gather(x):
        return jax.lax.all_gather(vary(x), names)

    first = device_position(axes)[0] == 0
    return gather(when), gather(seed), tuple(gather(a) for a in arrays), first


def _sender(host_fn: Callable[..., None]) -> Callable[..., jax.Array]:
    def on_host(when, seed, *arrays) -> None:
        seed, when, arrays = _flat_rows(seed, when, arrays)
        host_fn(seed, when, *arrays)

    def on_process_0(when, seed, *arrays) -> None:
        if jax.process_index() == 0:
            on_host(when, seed, *arrays)

    @custom_batching.custom_vmap
    def call(when, seed, *arrays):
        # Under manual axes exactly one device of the whole mesh calls (the rows of all
        # devices gathered). Otherwise the call is replicated or gathered data, or the
        # program of one process: with several processes only process 0 calls host_fn
        # (decided on the host, so that every process compiles the same program).
        fn = on_host if manual_axes() else on_process_0
        when, seed, arrays, first = _gather_manual(when, seed, arrays)
        when, seed, *arrays = _gathered(when, seed, *arrays)
        jax.lax.cond(jnp.any(when) & first, lambda: callback(fn, when, seed, *arrays),
                     lambda: None)
        return jnp.zeros((), jnp.int32)

    @call.def_vmap
    def call_vmap(axis_size, in_batched, when, seed, *arrays):
        # One host call for the whole batch, each element tagged with its seed position.
        if not in_batched[1]:
            seed = seed_positions(axis_size, seed)
        args = (when, seed, *arrays)
        flags = (in_batched[0], True, *in_batched[2:])
        call(*(x if b else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))
               for x, b in zip(args, flags, strict=True)))
        return jnp.zeros((axis_size,), jnp.int32), True

    return call


def send(host_fn: Callable[..., None], *arrays, when: ArrayLike = True) -> None:
    """Call ``host_fn(seed, when, *arrays)`` on the host with the arrays' values, eagerly or
    from inside ``jit``/``scan``/``cond``/``while_loop``, and under ``jax.vmap`` (nested or
    not) **once for the whole batch**.

    ``host_fn`` receives NumPy arrays with one leading *row* axis: one row per batch
    element (a single row outside ``vmap``). ``seed[rows]`` (``int32``) is each row's seed
    position, numbered as :func:`emit` numbers them (``NO_SEED`` outside any mapped axis;
    under ``pmap``/``shard_map`` the global index over every enclosing manual axis, the rows
    of all devices gathered into the one call made by the first device; with several
    processes and no manual axis, only process 0 calls ``host_fn``);
    ``when[rows]`` says which rows asked for the call; ``arrays`` are the given arrays, each
    with its row axis in front. The call is made when ``when`` holds for at least one row,
    so ``host_fn`` should usually ignore the other rows. A call under ``vmap`` is batched
    only if at least one argument depends on the mapped axis (pass something that does,
    e.g. data derived from a per-seed PRNG key, to count the seeds).

    Unordered, like ``jax.debug.callback``; the arguments carry whatever the host needs to
    be independent of call order. The cost is that of one host call per execution
    (~10 µs plus ~20 µs per array): pack values into few arrays, and never call it per env
    step.

    **Arguments:**

    - `host_fn`: a Python function; its return value is ignored.
    - `arrays`: array-likes (converted with ``jnp.asarray``).
    - `when`: a boolean scalar (per batch element): whether to make the call.
    """
    _sender(host_fn)(jnp.asarray(when, jnp.bool_), seed_origin(),
                     *(jnp.asarray(a) for a in arrays))


def clock(token) -> jax.Array:
    """Read the host clock (``time.perf_counter``) once the float32 scalar ``token`` has
    been computed; returns ``int32[2]`` (seconds, nanoseconds).

    Under ``vmap`` it reads the clock once for the whole batch (the result is unbatched).
    """
    return read_clock(jnp.asarray(token, jnp.float32))


# --------------------------------------------------------------------------------------------
# Ctrl-C: the stop flag, read once per iteration by a training (see callax._writer._interrupt).


def stop_requested(token) -> jax.Array:
    """Whether Ctrl-C asked the running training to stop: a ``bool`` scalar read from the
    host once ``token`` (e.g. the iteration counter) is computed. Under ``vmap`` one read for
    the batch; under ``pmap``/``shard_map`` every device reads and all agree (the reads are
    OR-ed over the manual axes), so every device stops at the same iteration."""
    flag = read_stop(jnp.asarray(token, jnp.int32))
    axes = manual_axes()
    if axes:
        names = tuple(name for name, _ in axes)
        flag = jax.lax.pmax(vary(flag).astype(jnp.int32), names) > 0
    return flag


def _mark(started: bool) -> Callable[..., None]:
    def on_host(seed, when, *arrays) -> None:
        del seed, arrays
        if np.asarray(when).any():
            (_interrupt.training_started if started else _interrupt.training_ended)()

    return on_host


_MARK_START, _MARK_END = _mark(True), _mark(False)


def training_started(token: ArrayLike = 0) -> None:
    """Tell the host a training that reads :func:`stop_requested` begins (eagerly or from
    inside ``jit``; every device and process that runs it): the first Ctrl-C will stop it
    instead of ending the process. Clears an earlier stop request."""
    if not under_trace() and not is_traced(token):
        _interrupt.training_started()
        return
    _each_device(_MARK_START)(jnp.asarray(True), seed_origin(), jnp.asarray(token, jnp.int32))


def training_ended(token: ArrayLike = 0) -> None:
    """Tell the host that the training of :func:`training_started` ended."""
    if not under_trace() and not is_traced(token):
        _interrupt.training_ended()
        return
    _each_device(_MARK_END)(jnp.asarray(True), seed_origin(), jnp.asarray(token, jnp.int32))
