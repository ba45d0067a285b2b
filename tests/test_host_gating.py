"""No point that did not happen (issue 24, point 2): under ``jax.vmap``, a write inside a
``while_loop`` or a ``cond`` whose predicate differs per seed writes, for each seed, only
the iterations and the branch that seed really ran (see ``callax/_host/_gating.py``)."""

from __future__ import annotations

import os
import warnings

import jax
import jax.numpy as jnp
import pytest

import callax
from conftest import read_run, run_dirs


def _runs(logdir: str) -> dict:
    return {d: read_run(os.path.join(logdir, d)) for d in run_dirs(logdir)}


def _vmapped(logdir: str, f, *args) -> dict:
    """``jit(vmap(f))(*args)`` writing to a fresh writer; every run's points read back."""
    w = callax.JITSummaryWriter(logdir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "dropped" warnings: points that repeat a step
        jax.jit(jax.vmap(lambda *a: f(w, *a)))(*args)
        w.close()
    return _runs(logdir)


def test_while_loop_writes_only_the_iterations_each_seed_ran(logdir):
    def f(w, n):
        def body(k):
            w.add_scalar("k", k * 10.0, global_step=k)
            w.add_scalar("auto", k * 10.0)  # global_step=None: one more per real iteration
            return k + 1

        return jax.lax.while_loop(lambda k: k < n, body, 0)

    got = _vmapped(logdir, f, jnp.array([1, 3, 0]))
    assert got == {
        "seed_0": {"k": [(0, 0.0)], "auto": [(0, 0.0)]},
        "seed_1": {"k": [(0, 0.0), (1, 10.0), (2, 20.0)],
                   "auto": [(0, 0.0), (1, 10.0), (2, 20.0)]},
    }  # seed 2 ran no iteration: no run directory at all


def test_cond_writes_only_the_branch_each_seed_took(logdir):
    def f(w, x):
        jax.lax.cond(x > 0, lambda: w.add_scalar("pos", x, global_step=0),
                     lambda: w.add_scalar("neg", x, global_step=0))
        jax.lax.switch(jnp.int32(x) % 3, [
            lambda i=i: w.add_scalar(f"case{i}", x, global_step=0) for i in range(3)])
        return x

    got = _vmapped(logdir, f, jnp.array([1.0, -2.0, 2.0]))
    assert got == {
        "seed_0": {"pos": [(0, 1.0)], "case1": [(0, 1.0)]},
        "seed_1": {"neg": [(0, -2.0)], "case1": [(0, -2.0)]},  # -2 % 3 == 1
        "seed_2": {"pos": [(0, 2.0)], "case2": [(0, 2.0)]},
    }


def test_nested_scan_cond_while_and_jit_inside_a_batched_while(logdir):
    @jax.jit
    def jitted(w, k):
        w.add_scalar("jit", k * 1.0, global_step=k)

    def f(w, n):
        def body(k):
            jax.lax.cond(k % 2 == 0, lambda: w.add_scalar("even", k * 1.0, global_step=k),
                         lambda: None)

            def inner(c, j):
                w.add_scalar("scan", c, global_step=10 * k + j)
                return c + 1.0, None

            jax.lax.scan(inner, k * 1.0, jnp.arange(2))
            jax.lax.while_loop(  # its own predicate: per seed as well
                lambda j: j < k, lambda j: (w.add_scalar("while", j * 1.0,
                                                          global_step=10 * k + j), j + 1)[1], 0)
            jitted(w, k)
            return k + 1

        return jax.lax.while_loop(lambda k: k < n, body, 0)

    got = _vmapped(logdir, f, jnp.array([1, 3]))
    want = {}
    for seed, n in enumerate([1, 3]):
        want[f"seed_{seed}"] = {
            "even": [(k, float(k)) for k in range(n) if k % 2 == 0],
            "scan": [(10 * k + j, float(k + j)) for k in range(n) for j in range(2)],
            "jit": [(k, float(k)) for k in range(n)],
        }
        if n > 1:
            want[f"seed_{seed}"]["while"] = [(10 * k + j, float(j)) for k in range(n)
                                             for j in range(k)]
    assert got == want


def test_nested_vmap_gates_the_axis_whose_predicate_differs(logdir):
    def f(w, n):
        def body(k):
            w.add_scalar("k", k * 1.0, global_step=k)
            return k + 1

        return jax.lax.while_loop(lambda k: k < n, body, 0)

    w = callax.JITSummaryWriter(logdir)
    jax.jit(jax.vmap(jax.vmap(lambda n: f(w, n))))(jnp.array([[1, 2], [3, 0]]))
    w.close()
    assert _runs(logdir) == {
        f"seed_{i}": {"k": [(k, float(k)) for k in range(n)]}
        for i, n in enumerate([1, 2, 3]) if n}


def test_a_write_the_same_for_every_seed_in_a_batched_while(logdir):
    # Not batched (the same for every seed): the run's own write, made once per iteration
    # that some seed ran.
    def f(w, n):
        def body(k):
            w.add_scalar("k", k * 1.0, global_step=k)  # k is the same for every seed
            return k + 1

        k = jax.lax.while_loop(lambda k: k < 4, body, 0)
        jax.lax.while_loop(lambda j: j < n, lambda j: j + 1, 0)
        return k

    def g(w, n):  # a constant value, a predicate that differs per seed
        def body(i):
            w.add_scalar("const", 5.0)  # global_step=None: one more per iteration run
            return i + 1

        return jax.lax.while_loop(lambda i: i < n, body, 0)

    assert _vmapped(logdir, f, jnp.array([1, 2])) == {".": {"k": [(k, float(k))
                                                              for k in range(4)]}}
    got = _vmapped(os.path.join(logdir, "g"), g, jnp.array([1, 3]))
    assert got == {".": {"const": [(0, 5.0), (1, 5.0), (2, 5.0)]}}


def test_what_cannot_be_gated_fails_at_trace_time_naming_the_fix(logdir):
    w = callax.JITSummaryWriter(logdir)

    def f(n):
        def body(k):
            jax.checkpoint(lambda k: w.add_scalar("k", k * 1.0, global_step=k))(k)
            return k + 1

        return jax.lax.while_loop(lambda k: k < n, body, 0)

    with pytest.raises(ValueError, match="when="):  # callax._host._gating.GateError
        jax.jit(jax.vmap(f)).lower(jnp.array([1, 3]))
    # Unbatched (one seed): nothing to gate, it works.
    jax.jit(f)(3)
    w.close()
    assert read_run(logdir) == {"k": [(0, 0.0), (1, 1.0), (2, 2.0)]}


def test_when_gates_a_write_per_seed(logdir):
    # The fix the error names: the write outside the cond, gated with when=.
    def f(w, x):
        w.add_scalar("pos", x, global_step=0, when=x > 0)
        w.add_dict("d", {"neg": x}, global_step=0, when=x < 0)
        return x

    got = _vmapped(logdir, f, jnp.array([1.0, -2.0]))
    assert got == {"seed_0": {"pos": [(0, 1.0)]}, "seed_1": {"d/neg": [(0, -2.0)]}}
    w = callax.JITSummaryWriter(os.path.join(logdir, "eager"))
    w.add_scalar("x", 1.0, global_step=0, when=False)
    w.add_scalar("x", 2.0, global_step=1, when=True)
    w.add_scalar("x", 3.0, global_step=2, when=jnp.asarray(True))
    w.close()
    assert read_run(os.path.join(logdir, "eager")) == {"x": [(1, 2.0), (2, 3.0)]}
