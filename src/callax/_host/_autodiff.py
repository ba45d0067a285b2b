"""Writes under differentiation: every host call of a differentiated program runs once, in the
forward pass, with the forward value.

Two things in JAX's partial evaluation (what ``grad``, ``value_and_grad``, ``linearize``
and ``jax.checkpoint`` run on a program) would lose or repeat callax's host calls:

- **Loop bodies.** Partial evaluation of a ``scan``/``fori_loop`` body splits it again to
  hoist loop-invariant work, and keeps an effectful equation whose outputs nothing uses only
  if its effect is listed in ``jax._src.effects.partial_eval_kept_effects``: without it every
  write in a differentiated loop body vanished silently. :func:`keep_in_partial_eval`
  registers callax's effect there (``jax.debug.callback``'s effects are registered too).
- **``while_loop``.** Where some of a ``while_loop``'s inputs are known (the forward values)
  and some not (tangents), JAX runs the known part of the loop and stages a *copy of the
  whole loop* that recomputes the known part. That copy would repeat the writes (a second
  set of points when the linearized function is called) and, kept for its effect alone,
  makes ``grad`` fail ("Reverse-mode differentiation does not work for lax.while_loop")
  where the loop's carry is not differentiated at all. :func:`drop_writes_from_while_copies`
  gives that copy a body without callax's host calls: the known loop has made them already.

- **Loop-invariant hoisting.** After splitting a ``scan`` body, JAX partially evaluates
  the known body once more, with the loop's constants known and its carry and inputs
  unknown, and runs what is known *once, before the loop* (``_scan_known_hoisting``, and
  the same split inline in the ``scan`` rule ``jax.checkpoint`` uses). A write whose
  operands do not depend on the carry (``add_scalar("lr", lr)`` in a scan body) then ran
  once instead of at every iteration (``jax.debug.callback`` does so too), and a
  ``while_loop`` in such a body lost its writes: the copy that held them was the one
  stripped. :func:`keep_writes_in_loops` turns hoisting off for loop bodies holding
  callax's host calls (their residuals are then stacked per iteration, as JAX does for
  every residual that depends on the carry).

Host calls never have tangents (their JVP calls the host with the primal values and returns
nothing), so under differentiation their operands are known: the known part of a loop
holds every write. The ``while_loop`` copy is stripped only where it does (all the loop's
host calls are in its known part); elsewhere the copy keeps them.
"""

from __future__ import annotations

import functools
import operator
import threading
from collections.abc import Callable

import jax
from jax.extend.core import Primitive

__all__ = ["drop_writes_from_while_copies", "keep_in_partial_eval", "keep_writes_in_loops"]


def keep_in_partial_eval(effect_type: type) -> None:
    """Keep equations of ``effect_type`` through partial evaluation (loop bodies under AD)."""
    from jax._src import effects

    effects.partial_eval_kept_effects.add_type(effect_type)


def _has(effect_type: type, effects) -> bool:
    return any(isinstance(e, effect_type) for e in effects)


def _strip(jaxpr, primitive: Primitive, effect_type: type):
    """``jaxpr`` (a ``Jaxpr`` or ``ClosedJaxpr``) without the equations of ``primitive``, in
    its body and in every sub-jaxpr (``cond`` branches, nested loops, ``jit``, ...), and
    without ``effect_type`` in the effects of what held them."""
    from jax._src import core

    if isinstance(jaxpr, core.ClosedJaxpr):
        return jaxpr.replace(jaxpr=_strip(jaxpr.jaxpr, primitive, effect_type))
    if not _has(effect_type, jaxpr.effects):
        return jaxpr
    keep = lambda effs: {e for e in effs if not isinstance(e, effect_type)}  # noqa: E731
    eqns = []
    for eqn in jaxpr.eqns:
        if eqn.primitive is primitive:
            continue  # no outputs: nothing refers to it
        if _has(effect_type, eqn.effects):
            params = {k: _strip_param(v, primitive, effect_type) for k, v in eqn.params.items()}
            eqn = eqn.replace(params=params, effects=keep(eqn.effects))
        eqns.append(eqn)
    return jaxpr.replace(eqns=eqns, effects=keep(jaxpr.effects))


def _strip_param(value, primitive: Primitive, effect_type: type):
    from jax._src import core

    if isinstance(value, (core.Jaxpr, core.ClosedJaxpr)):
        return _strip(value, primitive, effect_type)
    if isinstance(value, tuple) and any(isinstance(v, (core.Jaxpr, core.ClosedJaxpr))
                                        for v in value):
        return tuple(_strip_param(v, primitive, effect_type) for v in value)
    return value


def _count(jaxpr, primitive: Primitive) -> int:
    """How many equations of ``primitive`` ``jaxpr`` holds, in sub-jaxprs included."""
    from jax._src import core

    if isinstance(jaxpr, core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive is primitive
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple) else (value,):
                if isinstance(sub, (core.Jaxpr, core.ClosedJaxpr)):
                    count += _count(sub, primitive)
    return count


def _known_while_runs(tracers, primitive: Primitive, cond_nconsts: int, cond_jaxpr,
                      body_nconsts: int, body_jaxpr) -> bool:
    """Whether JAX's partial evaluation of this ``while_loop`` runs a known loop that makes
    every host call of the body *and* stages a copy of the whole loop: some inputs known
    and some not, and the predicate known once the carries that depend on unknown inputs
    are (a fixpoint over the body)."""
    from jax._src.interpreters import partial_eval as pe

    unknowns = [not t.pval.is_known() for t in tracers]
    if all(unknowns) or not any(unknowns):
        return False
    cond_uk = unknowns[:cond_nconsts]
    body_uk = unknowns[cond_nconsts:cond_nconsts + body_nconsts]
    carry_uk = unknowns[cond_nconsts + body_nconsts:]
    for _ in range(len(carry_uk) + 1):
        known, _, out_uk, _ = pe.partial_eval_jaxpr_nounits(body_jaxpr, body_uk + carry_uk,
                                                            instantiate=carry_uk)
        if out_uk == carry_uk:
            break
        carry_uk = list(map(operator.or_, carry_uk, out_uk))
    predicate_uk = pe.partial_eval_jaxpr_nounits(cond_jaxpr, cond_uk + carry_uk,
                                                 instantiate=False)[2]
    return not predicate_uk[0] and _count(known, primitive) == _count(body_jaxpr, primitive)


class _CopyWithoutWrites:
    """A ``JaxprTrace`` whose ``default_process_primitive`` stages the ``while_loop`` copy
    without host calls; everything else is the trace's own."""

    def __init__(self, trace, strip: Callable):
        self._trace, self._strip = trace, strip

    def __getattr__(self, name):
        return getattr(self._trace, name)

    def default_process_primitive(self, primitive, tracers, params):
        params = dict(params, body_jaxpr=self._strip(params["body_jaxpr"]),
                      cond_jaxpr=self._strip(params["cond_jaxpr"]))
        return self._trace.default_process_primitive(primitive, tracers, params)


def drop_writes_from_while_copies(primitive: Primitive, effect_type: type) -> None:
    """Wrap JAX's partial-evaluation rules of ``while_p`` so that the copy of a loop that
    recomputes its known part holds no ``primitive`` calls (see the module docstring)."""
    from jax._src.interpreters import partial_eval as pe
    from jax._src.lax.control_flow import loops

    while_p = loops.while_p
    strip = functools.partial(_strip, primitive=primitive, effect_type=effect_type)
    jax_rule = pe.custom_partial_eval_rules[while_p]
    jax_custom_rule = pe.partial_eval_jaxpr_custom_rules[while_p]

    def rule(trace, *tracers, **params):
        writes = _has(effect_type, params["body_jaxpr"].effects) or _has(
            effect_type, params["cond_jaxpr"].effects)
        if writes and _known_while_runs(tracers, primitive, **params):
            trace = _CopyWithoutWrites(trace, strip)
        return jax_rule(trace, *tracers, **params)

    def custom_rule(saveable, unks_in, inst_in, eqn):
        known, staged, *rest = jax_custom_rule(saveable, unks_in, inst_in, eqn)
        if (known is not None and staged is not None and _has(effect_type, staged.effects)
                and _count(known.params["body_jaxpr"], primitive)
                == _count(staged.params["body_jaxpr"], primitive)):
            params = dict(staged.params, body_jaxpr=strip(staged.params["body_jaxpr"]),
                          cond_jaxpr=strip(staged.params["cond_jaxpr"]))
            effects = {e for e in staged.effects if not isinstance(e, effect_type)}
            staged = staged.replace(params=params, effects=effects)
        return (known, staged, *rest)

    pe.custom_partial_eval_rules[while_p] = rule
    pe.partial_eval_jaxpr_custom_rules[while_p] = custom_rule  # pyright: ignore[reportArgumentType]


def _nothing_hoisted(jaxpr, unknowns):
    """What ``partial_eval_jaxpr_nounits(jaxpr, unknowns, ...)`` answers when nothing of the
    loop body ``jaxpr`` is loop-invariant: a known part that passes the known inputs (the
    loop's constants, a prefix) on as residuals, and the whole body as the unknown part,
    every output unknown. ``None`` where the known inputs are not a prefix."""
    n_known = len(unknowns) - sum(unknowns)
    if any(unknowns[:n_known]):
        return None
    avals = list(jaxpr.in_avals[:n_known])
    forward = jax.make_jaxpr(lambda *xs: list(xs))(
        *(jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=a.weak_type) for a in avals))
    # JAX traces the known part's caller with this jaxpr's debug info (the body's inputs)
    forward = forward.replace(jaxpr=forward.jaxpr.replace(debug_info=jaxpr.jaxpr.debug_info))
    return forward, jaxpr, [True] * len(jaxpr.out_avals), avals


_IN_SCAN_RULE = threading.local()  # depth of callax-holding scans in ``jax.checkpoint``'s rule


def keep_writes_in_loops(effect_type: type) -> None:
    """No loop-invariant hoisting out of ``scan`` bodies that hold ``effect_type`` (see the
    module docstring): ``_scan_known_hoisting`` (``grad``, ``linearize``) hoists nothing for
    them, and inside the ``scan`` rule of ``jax.checkpoint``'s partial evaluation the split
    that finds loop-invariant values sees every input of such a body as loop-dependent."""
    from jax._src.interpreters import partial_eval as pe
    from jax._src.lax.control_flow import loops

    jax_hoisting = loops._scan_known_hoisting  # AttributeError: not this JAX

    def hoisting(jaxpr_known, known_consts, num_res):
        if _has(effect_type, jaxpr_known.effects):
            return jaxpr_known, list(known_consts), [False] * num_res, []
        return jax_hoisting(jaxpr_known, known_consts, num_res)

    jax_custom_rule = pe.partial_eval_jaxpr_custom_rules[loops.scan_p]

    def custom_rule(saveable, unks_in, inst_in, eqn):
        if not _has(effect_type, eqn.params["jaxpr"].effects):
            return jax_custom_rule(saveable, unks_in, inst_in, eqn)
        depth = getattr(_IN_SCAN_RULE, "depth", 0)
        _IN_SCAN_RULE.depth = depth + 1
        try:
            return jax_custom_rule(saveable, unks_in, inst_in, eqn)
        finally:
            _IN_SCAN_RULE.depth = depth

    jax_nounits = pe.partial_eval_jaxpr_nounits

    @functools.wraps(jax_nounits)
    def nounits(jaxpr, unknowns, *args, **kwargs):
        if getattr(_IN_SCAN_RULE, "depth", 0) and _has(effect_type, jaxpr.effects):
            split = _nothing_hoisted(jaxpr, unknowns)
            if split is not None:
                return split
        return jax_nounits(jaxpr, unknowns, *args, **kwargs)

    loops._scan_known_hoisting = hoisting
    pe.partial_eval_jaxpr_custom_rules[loops.scan_p] = custom_rule
    pe.partial_eval_jaxpr_nounits = nounits
