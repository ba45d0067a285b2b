"""Writes under differentiation (issue 24, point 1): a write inside a loop body of a
differentiated function arrives exactly once, with the forward value, in program order.

The random programs of tests/test_order.py cover every transformation in every nesting;
these are the issue's own case and the ``while_loop`` cases where JAX's partial evaluation
stages a copy of the loop (see ``callax/_host/_autodiff.py``).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import callax
from conftest import JAX_VERSION, read_run

P = np.arange(3.0, dtype=np.float32)


def _forward(n: int = 4) -> list[tuple[int, float]]:
    """The points of ``c_k = c_{k-1} + sum(sin(P * k))`` at steps 0..n-1."""
    c, out = 0.0, []
    for k in range(n):
        c += float(np.sin(P * k).sum(dtype=np.float32))
        out.append((k, c))
    return out


def _assert_points(got, want):
    assert [s for s, _ in got] == [s for s, _ in want], got
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-5)


def _scan_loss(w):
    def loss(p):
        def body(c, k):
            c = c + jnp.sin(p * k).sum()
            w.add_scalar("c", c, global_step=k)
            w.add_scalar("auto", c)  # a repeated write would add points here
            return c, None

        return jax.lax.scan(body, 0.0, jnp.arange(4))[0]

    return loss


def _fori_loss(w):
    def loss(p):
        def body(k, c):
            c = c + jnp.sin(p * k).sum()
            w.add_scalar("c", c, global_step=k)
            w.add_scalar("auto", c)
            return c

        return jax.lax.fori_loop(0, 4, body, 0.0)

    return loss


def _while_loss(w):
    def loss(p):
        def body(ck):
            c, k = ck
            c = c + jnp.sin(p * k).sum()
            w.add_scalar("c", c, global_step=k)
            w.add_scalar("auto", c)
            return c, k + 1

        return jax.lax.while_loop(lambda ck: ck[1] < 4, body, (0.0, 0))[0]

    return loss


def _custom_vjp(loss):
    f = jax.custom_vjp(loss)
    f.defvjp(lambda p: (loss(p), p), lambda p, g: (g * jnp.cos(p),))
    return f


def _custom_jvp(loss):
    f = jax.custom_jvp(loss)
    f.defjvp(lambda ps, ts: (loss(ps[0]), jnp.sum(ts[0] * jnp.cos(ps[0]))))
    return f


TRANSFORMS = {
    "grad": jax.grad,
    "value_and_grad": jax.value_and_grad,
    "checkpoint": lambda f: jax.grad(jax.checkpoint(f)),
    "checkpoint_nothing_saveable": lambda f: jax.grad(jax.checkpoint(
        f, policy=jax.checkpoint_policies.nothing_saveable)),
    "custom_vjp": lambda f: jax.grad(_custom_vjp(f)),
    "custom_jvp": lambda f: jax.grad(_custom_jvp(f)),
    "hessian": jax.hessian,
    "linearize_and_apply": lambda f: lambda p: jax.linearize(f, p)[1](p),
    "vjp_applied_twice": lambda f: lambda p: (lambda out: out[1](1.0)[0] + out[1](2.0)[0])(
        jax.vjp(f, p)),
}


@pytest.mark.parametrize("how", sorted(TRANSFORMS))
@pytest.mark.parametrize("loop", ["scan", "fori"])
def test_writes_in_a_differentiated_loop_arrive_once(logdir, how, loop):
    w = callax.JITSummaryWriter(logdir)
    loss = {"scan": _scan_loss, "fori": _fori_loss}[loop](w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a repeated point would be dropped with a warning
        jax.jit(TRANSFORMS[how](loss))(jnp.asarray(P))
        w.close()
    run = read_run(logdir)
    _assert_points(run["c"], _forward())
    _assert_points(run["auto"], _forward())


def test_issue_grad_of_a_scan_writes_its_four_points(logdir):
    w = callax.JITSummaryWriter(logdir)

    def loss(p):
        def body(c, k):
            c = c + jnp.sin(p * k).sum()
            w.add_scalar("c", c, global_step=k)
            return c, None

        return jax.lax.scan(body, 0.0, jnp.arange(4))[0]

    jax.jit(jax.grad(loss))(jnp.arange(3.0))
    w.close()
    _assert_points(read_run(logdir)["c"], _forward())


@pytest.mark.parametrize("how", ["linearize_and_apply", "custom_vjp", "custom_jvp"])
def test_writes_in_a_while_loop_under_forward_mode_arrive_once(logdir, how):
    # linearize stages a copy of the whole while_loop that recomputes the forward part:
    # applying the linear function must not write the points again.
    w = callax.JITSummaryWriter(logdir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jax.jit(TRANSFORMS[how](_while_loss(w)))(jnp.asarray(P))
        w.close()
    run = read_run(logdir)
    _assert_points(run["c"], _forward())
    _assert_points(run["auto"], _forward())


def test_grad_through_a_while_loop_that_only_writes(logdir):
    # The carry is not differentiated, the written value is: grad works (it did before the
    # loop's writes were kept through partial evaluation) and writes each point once.
    w = callax.JITSummaryWriter(logdir)

    def loss(p):
        def body(k):
            w.add_scalar("s", jnp.sin(p).sum() * k, global_step=k)
            return k + 1

        jax.lax.while_loop(lambda k: k < 4, body, 0)
        return jnp.sin(p).sum()

    g = jax.jit(jax.grad(loss))(jnp.asarray(P))
    w.close()
    np.testing.assert_allclose(g, np.cos(P), rtol=1e-6)
    s = float(np.sin(P).sum(dtype=np.float32))
    _assert_points(read_run(logdir)["s"], [(k, s * k) for k in range(4)])


def test_nested_loops_and_cond_under_linearize_write_once(logdir):
    w = callax.JITSummaryWriter(logdir)

    def f(p):
        def body(ck):
            c, k = ck

            def inner(c2, j):
                c2 = c2 + jnp.sin(p * j).sum()
                jax.lax.cond(j > 0, lambda: w.add_scalar("c", c2 + 100.0 * k),
                             lambda: None)
                return c2, None

            return jax.lax.scan(inner, c, jnp.arange(2.0))[0], k + 1

        return jax.lax.while_loop(lambda ck: ck[1] < 3, body, (0.0, 0.0))[0]

    jax.jit(lambda p: jax.linearize(f, p)[1](p))(jnp.asarray(P))
    w.close()
    s = float(np.sin(P).sum(dtype=np.float32))
    _assert_points(read_run(logdir)["c"], [(k, s * (k + 1) + 100.0 * k) for k in range(3)])


def test_grad_of_a_write_outside_loops_writes_once(logdir):
    w = callax.JITSummaryWriter(logdir)

    def loss(p):
        w.add_scalar("auto", jnp.sin(p).sum())
        return jnp.sin(p).sum()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jax.jit(jax.grad(loss))(jnp.asarray(P))
        jax.jit(jax.grad(loss))(jnp.asarray(P) + 1)
        w.close()
    run = read_run(logdir)
    s0, s1 = float(np.sin(P).sum()), float(np.sin(P + 1).sum())
    assert [s for s, _ in run["auto"]] == [0, 1]
    np.testing.assert_allclose([v for _, v in run["auto"]], [s0, s1], rtol=1e-6)


def test_vmapped_grad_of_a_scan_writes_every_seed_once(logdir):
    w = callax.JITSummaryWriter(logdir)
    ps = jnp.stack([jnp.asarray(P), jnp.asarray(P) + 1])
    jax.jit(jax.vmap(jax.grad(_scan_loss(w))))(ps)
    w.close()
    _assert_points(read_run(f"{logdir}/seed_0")["c"], _forward())
    assert [s for s, _ in read_run(f"{logdir}/seed_1")["c"]] == [0, 1, 2, 3]


def _invariant_loss(w):
    # Writes whose operands do not depend on the carry: JAX's partial evaluation hoists
    # loop-invariant work out of a scan body (run once, before the loop).
    def loss(p):
        def body(c, k):
            if w is not None:
                w.add_scalar("invariant", jnp.sum(p))
                w.add_scalar("k", p[0] + 2.0 * k.astype(jnp.float32), global_step=k)
            return c + jnp.sin(p * k).sum(), None

        return jax.lax.scan(body, 0.0, jnp.arange(4))[0]

    return loss


@pytest.mark.parametrize("how", sorted(TRANSFORMS))
def test_loop_invariant_writes_arrive_at_every_iteration(logdir, how):
    w = callax.JITSummaryWriter(logdir)
    got = jax.jit(TRANSFORMS[how](_invariant_loss(w)))(jnp.asarray(P))
    plain = jax.jit(TRANSFORMS[how](_invariant_loss(None)))(jnp.asarray(P))
    w.close()
    run = read_run(logdir)
    assert run["invariant"] == [(k, 3.0) for k in range(4)], run
    assert run["k"] == [(k, 2.0 * k) for k in range(4)], run
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), got, plain)


def _while_in_scan_loss(w):
    # The issue-24 generator's shrunk case: a while_loop counting a carry that is not
    # differentiated, inside a scan, its write depending on the differentiated input.
    def loss(x):
        def inner(c):
            def body(s):
                count, i = s
                w.add_scalar("a", x + 4.0 * count.astype(jnp.float32), global_step=count)
                return count + 1, i + 1

            return jax.lax.while_loop(lambda s: s[1] < 2, body, (c, 0))[0]

        c = jax.lax.scan(lambda c, i: (inner(c), None), jnp.int32(1), jnp.arange(3))[0]
        return c.astype(jnp.float32) * x + jnp.sin(x)

    return loss


@pytest.mark.parametrize("how", ["grad", "checkpoint", "linearize_and_apply", pytest.param(
    "hessian", marks=pytest.mark.skipif(
        JAX_VERSION < (0, 10, 0), reason="JAX 0.8.2's while_loop JVP fails on this program "
        "with or without writes (jax.debug.callback too: a cond jaxpr without arg names)"))])
def test_a_while_loop_in_a_differentiated_scan_writes_once(logdir, how):
    w = callax.JITSummaryWriter(logdir)
    got = jax.jit(TRANSFORMS[how](_while_in_scan_loss(w)))(jnp.float32(0.0))
    w.close()
    assert read_run(logdir)["a"] == [(c, 4.0 * c) for c in range(1, 7)]
    # loss = 7 x + sin x (the count ends at 1 + 3 * 2): its derivative at 0 is 8
    want = {"grad": 8.0, "checkpoint": 8.0, "linearize_and_apply": 0.0, "hessian": 0.0}[how]
    np.testing.assert_allclose(got, want, atol=1e-6)
