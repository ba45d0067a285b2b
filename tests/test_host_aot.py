"""Ahead-of-time compiled programs (issue 24, point 3): a program compiled with
``jax.jit(f).lower(...).compile()``, or loaded with ``jax.experimental.serialize_executable``,
writes every call's points, called any number of times, in call order."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
from jax.experimental import serialize_executable

import callax
from conftest import read_run

HERE = os.path.dirname(__file__)


def _writing(w):
    def f(x, s):
        w.add_scalar("x", x, global_step=s)

        def body(c, k):
            w.add_scalar("loop", c, global_step=3 * s + k)
            return c + 1.0, None

        return jax.lax.scan(body, x, jnp.arange(3))[0]

    return f


def _want(calls):
    return {"x": [(s, float(s)) for s in calls],
            "loop": [(3 * s + k, float(s + k)) for s in calls for k in range(3)]}


def test_a_compiled_program_writes_at_every_call(logdir):
    w = callax.JITSummaryWriter(logdir)
    compiled = jax.jit(_writing(w)).lower(0.0, 0).compile()
    for s in range(6):
        assert float(compiled(float(s), s)) == s + 3.0
    w.close()
    assert read_run(logdir) == _want(range(6))


def test_compiled_and_jitted_calls_interleave_in_call_order(logdir):
    w = callax.JITSummaryWriter(logdir)
    f = _writing(w)
    compiled = jax.jit(f).lower(0.0, 0).compile()
    jitted = jax.jit(f)
    for s in range(6):
        (compiled if s % 2 else jitted)(float(s), s)
    w.close()
    assert read_run(logdir) == _want(range(6))


def test_a_serialized_executable_writes_at_every_call(logdir):
    w = callax.JITSummaryWriter(logdir)
    compiled = jax.jit(_writing(w)).lower(0.0, 0).compile()
    compiled(0.0, 0)
    loaded = serialize_executable.deserialize_and_load(
        *serialize_executable.serialize(compiled))
    for s in range(1, 5):
        loaded(float(s), s)
    compiled(5.0, 5)
    w.close()
    assert read_run(logdir) == _want(range(6))


def test_a_serialized_executable_loaded_in_another_process(tmp_path):
    # As with JAX's persistent cache, the loading process lowers the same program first
    # (its host functions and run then have the same numbers).
    script = textwrap.dedent(f"""
        import pickle, sys
        import jax, jax.numpy as jnp
        sys.path.insert(0, {HERE!r})
        import callax
        from jax.experimental import serialize_executable
        from test_host_aot import _writing

        w = callax.JITSummaryWriter(sys.argv[1])
        lowered = jax.jit(_writing(w)).lower(0.0, 0)
        if sys.argv[2] == "save":
            with open(sys.argv[3], "wb") as file:
                pickle.dump(serialize_executable.serialize(lowered.compile()), file)
        else:
            with open(sys.argv[3], "rb") as file:
                loaded = serialize_executable.deserialize_and_load(*pickle.load(file))
            for s in range(3):
                loaded(float(s), s)
        w.close()
    """)
    blob = str(tmp_path / "program.pkl")
    for mode, run in (("save", "saved"), ("load", "loaded")):
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / run), mode, blob],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    with open(blob, "rb") as file:
        assert pickle.load(file)  # a real executable was stored
    assert read_run(str(tmp_path / "loaded")) == _want(range(3))


def test_a_second_build_of_the_host_call_keeps_the_one_effect(logdir):
    # Building the host call again (as the fallback tests do) used to make a second effect
    # type, which an unpickled executable then named: the AOT rule, installed for the
    # first, no longer matched and the loaded program's second call failed.
    from callax._host import _primitives

    effect = _primitives._ordered_effect()
    _primitives._make_host_call()
    assert _primitives._ordered_effect() is effect
    test_a_serialized_executable_writes_at_every_call(logdir)
