"""Mesh axes and seed numbering: which enclosing manual axes (``pmap``/``shard_map``) number
seeds and which are reduced, and the flat seed position of every ``vmap`` batch element.

Every host call of callax numbers the elements of a batch through the functions here
(:func:`~callax._host.emit` and :func:`~callax._host.send` both use them): change the
numbering here and every host call follows."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .. import _writer as host

__all__ = ["REDUCE_MODES", "device_position", "global_seed", "manual_axes", "on_mesh",
           "seed_origin", "seed_positions", "split_axes", "vary"]


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
