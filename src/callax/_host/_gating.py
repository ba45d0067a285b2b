"""Writes under a batched predicate: under ``jax.vmap``, a write inside a ``while_loop`` or a
``cond`` whose predicate differs per seed writes, for each seed, only the iterations and the
branch that seed really ran.

``vmap`` turns such a loop into one that runs while *any* seed's predicate holds (a finished
seed's carry is kept by a select), and such a ``cond`` into a ``select`` that runs *every*
branch. A write inside would then write points that never happened: a finished seed's last
carry again at every further iteration, the untaken branch's values. JAX gives a batching
rule no way to know that it sits in such a body, so callax tells it, at trace time:

- the batching rules of ``while_p`` and ``cond_p`` (wrapped by :func:`install`, only for
  loops and conds holding callax's host calls) give the body a *gate* first: for a loop,
  the predicate recomputed on the carry the iteration starts from; for branch ``i`` of a
  ``cond``, ``index == i``; ANDed with the gate of an enclosing loop or branch (a ``scan``
  inside passes its enclosing gate on, as a nested loop or ``cond`` does);
- the gate is a marker primitive whose batching rule records the batched gate for the
  trace the body is being batched into; callax's ``custom_vmap`` rules (:func:`apply`)
  then AND every row's ``pred``/``when`` with it. Where the gate is not batched (the
  predicate is the same for every seed) nothing changes.

A ``jax.jit`` function called in such a body is inlined there, gated. What cannot be
gated fails at trace time with :class:`GateError`, naming the fix (a write in a
``jax.checkpoint`` or custom-derivative function nested in such a body; a write whose
values are the same for every seed inside a ``cond`` with a batched predicate): write
outside the loop or ``cond``, with ``when=`` the predicate.
"""

from __future__ import annotations

import threading
import weakref
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["apply", "install", "GateError"]


class GateError(ValueError):
    """A write under ``vmap`` in a loop or ``cond`` whose predicate is batched, where callax
    cannot tell which seeds ran it."""


FIX = ("write outside the loop or cond with the predicate as when= (e.g. "
       "writer.add_scalar(tag, value, step, when=pred)), or gate the values with valid= "
       "in write_rows")


class _Gate(NamedTuple):
    value: jax.Array | None  # bool[axis_size] (batch axis first), None: not batched
    cond: bool  # inside a cond whose index is batched (there or further out)


class _Region:
    """An active gated body (a stack per thread): whether its gate is batched, and the
    traces whose gates it recorded (forgotten when it ends: a gate holds a tracer, which
    holds its trace, so the weak keys alone would never let go)."""

    __slots__ = ("batched", "traces", "what")

    def __init__(self, what: str):
        self.batched, self.what = False, what
        self.traces: list = []


_local = threading.local()


def _gates() -> weakref.WeakKeyDictionary:
    gates = getattr(_local, "gates", None)
    if gates is None:
        gates = _local.gates = weakref.WeakKeyDictionary()
    return gates


def _regions() -> list[_Region]:
    regions = getattr(_local, "regions", None)
    if regions is None:
        regions = _local.regions = []
    return regions


def _trace():
    from jax._src import core

    return core.trace_ctx.trace


def current() -> _Gate | None:
    """The gate recorded for the trace being built now (inside a gated body), if any."""
    try:
        return _gates().get(_trace())
    except TypeError:  # a trace that takes no weak reference: never gated
        return None


def apply(when: jax.Array, axis_size: int, what: str) -> jax.Array:
    """``when`` (batched, batch axis first) ANDed with the gate of the body being batched;
    raises :class:`GateError` inside a gated body callax cannot reach (see module doc)."""
    gate = current()
    if gate is None:
        outer = [r for r in _regions() if r.batched]
        if outer:
            raise GateError(
                f"callax: {what} under jax.vmap inside a {outer[-1].what} whose predicate "
                "differs per seed, nested in a function callax cannot gate "
                "(jax.checkpoint, a custom derivative, shard_map...): it would write seeds "
                f"that did not run it. Move it out of that function, or {FIX}")
        return when
    if gate.value is None or jnp.shape(gate.value)[0] != axis_size:
        return when
    # The gate's unbatched shape is a prefix of when's (an inner vmap's batch axes).
    g = gate.value.reshape(jnp.shape(gate.value) + (1,) * (jnp.ndim(when) - jnp.ndim(gate.value)))
    return when & g


def check_unbatched(what: str) -> None:
    """An unbatched write (values the same for every seed) inside a gated body: fine in a
    loop (it runs while any seed does), an error inside a ``cond`` with a batched index."""
    gate = current()
    if gate is not None and gate.value is not None and gate.cond:
        raise GateError(
            f"callax: {what} under jax.vmap inside a lax.cond whose predicate differs per "
            "seed, with values that are the same for every seed: vmap runs every branch "
            f"for every seed, so it would be written whichever branch ran. {FIX}")


# ---- the marker and the wrapped batching rules ----------------------------------------------


def _marker():
    from jax.extend.core import Primitive
    from jax.interpreters import batching, mlir

    gate_p = Primitive("callax_gate")
    gate_p.multiple_results = True
    gate_p.def_impl(lambda gate, *, cond: [])
    gate_p.def_abstract_eval(lambda gate, *, cond: [])
    mlir.register_lowering(gate_p, lambda ctx, gate, *, cond: [])

    def batch(axis_data, vals, dims, *, cond):
        (value,), (dim,) = vals, dims
        if dim is not None:
            value = jnp.moveaxis(value, dim, 0)
        regions, trace = _regions(), _trace()
        if regions:
            regions[-1].batched = dim is not None
            regions[-1].traces.append(trace)
        _gates()[trace] = _Gate(None if dim is None else value, cond)
        return [], []

    batching.fancy_primitive_batchers[gate_p] = batch
    return gate_p


def _trace_gated(fn, in_avals):
    from jax._src import api_util, core, linear_util as lu
    from jax._src.interpreters import partial_eval as pe

    debug = api_util.debug_info("callax gate", fn, tuple(in_avals), {})
    jaxpr, _, consts = pe.trace_to_jaxpr_dynamic(lu.wrap_init(fn, debug_info=debug),
                                                 list(in_avals))
    return core.ClosedJaxpr(jaxpr, consts)


def _outer(axis_size: int) -> tuple[jax.Array, int | None, bool]:
    """The enclosing gate as an extra operand: ``(value, batch dim, inside a cond)``."""
    gate = current()
    if gate is None or gate.value is None or jnp.shape(gate.value)[0] != axis_size:
        return jnp.asarray(True), None, bool(gate and gate.cond)
    return gate.value, 0, gate.cond


def _region(what: str, rule, *args, **params):
    """``rule(*args, **params)`` as a gated body (see :class:`_Region`)."""
    regions = _regions()
    regions.append(_Region(what))
    try:
        return rule(*args, **params)
    finally:
        gates = _gates()
        for trace in regions.pop().traces:
            gates.pop(trace, None)


_BOOL = None  # core.ShapedArray((), bool), made at install


class _Rules:
    """The wrapped batching rules: JAX's own unless a body holds ``effect_type``."""

    def __init__(self, effect_type: type, gate_p, jax_rules: dict):
        self.effect_type, self.gate_p, self.jax = effect_type, gate_p, jax_rules

    def has(self, jaxpr) -> bool:
        return any(isinstance(e, self.effect_type) for e in jaxpr.effects)

    def gated_first(self, jaxpr, in_cond: bool):
        """``jaxpr`` taking a gate first, marked before the body runs."""
        from jax._src import core

        def fn(gate, *a):
            self.gate_p.bind(gate, cond=in_cond)
            return core.eval_jaxpr(jaxpr.jaxpr, jaxpr.consts, *a)

        return _trace_gated(fn, [_BOOL, *jaxpr.in_avals])

    def while_(self, axis_data, args, dims, *, cond_nconsts, cond_jaxpr, body_nconsts,
               body_jaxpr):
        from jax._src import core

        params = dict(cond_nconsts=cond_nconsts, cond_jaxpr=cond_jaxpr,
                      body_nconsts=body_nconsts, body_jaxpr=body_jaxpr)
        if not self.has(body_jaxpr):
            return self.jax["while"](axis_data, args, dims, **params)
        g, g_dim, in_cond = _outer(axis_data.size)
        cn = cond_nconsts

        def fn(*a):  # (*cond consts, gate, *body consts, *carry)
            carry = a[cn + 1 + body_nconsts:]
            (pred,) = core.eval_jaxpr(cond_jaxpr.jaxpr, cond_jaxpr.consts, *a[:cn], *carry)
            self.gate_p.bind(pred & a[cn], cond=in_cond)
            return core.eval_jaxpr(body_jaxpr.jaxpr, body_jaxpr.consts, *a[cn + 1:])

        body = _trace_gated(fn, [*cond_jaxpr.in_avals[:cn], _BOOL, *body_jaxpr.in_avals])
        params.update(body_nconsts=cn + 1 + body_nconsts, body_jaxpr=body)
        return _region("lax.while_loop", self.jax["while"], axis_data,
                       [*args[:cn], *args[:cn], g, *args[cn:]],
                       [*dims[:cn], *dims[:cn], g_dim, *dims[cn:]], **params)

    def cond(self, axis_data, args, dims, *, branches, **params):
        from jax._src import core

        index, *ops = args
        index_dim, *op_dims = dims
        g, g_dim, in_cond = _outer(axis_data.size)
        if not any(self.has(b) for b in branches) or (index_dim is None and g_dim is None):
            return self.jax["cond"](axis_data, args, dims, branches=branches, **params)
        in_cond = in_cond or index_dim is not None

        def gated(i, branch):
            def fn(idx, gate, *a):
                self.gate_p.bind(gate & (idx == i), cond=in_cond)
                return core.eval_jaxpr(branch.jaxpr, branch.consts, *a)

            index_aval = core.ShapedArray((), jnp.int32)  # the unbatched index
            return _trace_gated(fn, [index_aval, _BOOL, *branch.in_avals])

        new = tuple(gated(i, b) for i, b in enumerate(branches))
        return _region("lax.cond", self.jax["cond"], axis_data, [index, index, g, *ops],
                       [index_dim, index_dim, g_dim, *op_dims], branches=new, **params)

    def scan(self, axis_data, args, dims, *, jaxpr, num_consts, **params):
        g, g_dim, in_cond = _outer(axis_data.size)
        if g_dim is None or not self.has(jaxpr):
            return self.jax["scan"](axis_data, args, dims, jaxpr=jaxpr,
                                    num_consts=num_consts, **params)
        if "linear" in params:
            params = dict(params, linear=(False, *params["linear"]))
        return _region("lax.scan", self.jax["scan"], axis_data, [g, *args], [g_dim, *dims],
                       jaxpr=self.gated_first(jaxpr, in_cond), num_consts=num_consts + 1,
                       **params)

    def jit(self, axis_data, args, dims, *, jaxpr, **params):
        """A jitted function called in a gated body: inlined there, gated (its boundary
        inside the enclosing program changes nothing but the gate reaching its writes)."""
        from jax._src import core
        from jax._src.interpreters import batching

        g, g_dim, in_cond = _outer(axis_data.size)
        if g_dim is None or not self.has(jaxpr):
            return self.jax["jit"](axis_data, args, dims, jaxpr=jaxpr, **params)
        in_batched = [True, *(d is not None for d in dims)]
        batched, out_batched = _region("jax.jit", batching.batch_jaxpr,
                                       self.gated_first(jaxpr, in_cond), axis_data,
                                       in_batched, instantiate=False)
        vals = [g, *(x if d is None else jnp.moveaxis(x, d, 0) for x, d in zip(args, dims))]
        outs = core.eval_jaxpr(batched.jaxpr, batched.consts, *vals)
        return outs, [0 if b else None for b in out_batched]

    def custom_vmap(self, axis_data, vals, dims, **params):
        if all(d is None for d in dims) and self.has(params["call"]):
            check_unbatched("a write")
        return self.jax["custom_vmap"](axis_data, vals, dims, **params)


def install(effect_type: type) -> None:
    """Wrap the batching rules of ``while_p``, ``cond_p``, ``scan_p``, ``jit_p`` and
    ``custom_vmap_p`` (see module doc) for bodies holding ``effect_type``; bodies without it
    keep JAX's rules unchanged."""
    global _BOOL
    from jax._src import core, custom_batching, pjit
    from jax._src.lax.control_flow import conditionals, loops
    from jax.interpreters import batching

    _BOOL = core.ShapedArray((), jnp.bool_)
    primitives = {"while": loops.while_p, "cond": conditionals.cond_p, "scan": loops.scan_p,
                  "jit": getattr(pjit, "jit_p", None) or pjit.pjit_p,  # pyright: ignore[reportAttributeAccessIssue]
                  "custom_vmap": custom_batching.custom_vmap_p}
    table = batching.fancy_primitive_batchers
    jax_rules = {name: table[p] for name, p in primitives.items()}  # KeyError: not this JAX
    rules = _Rules(effect_type, _marker(), jax_rules)
    table.update({p: getattr(rules, name if name != "while" else "while_")
                  for name, p in primitives.items()})
