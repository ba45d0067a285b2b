"""The device→host call used by every writer (``callax._host.callback``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import callax
from callax import _host
from callax._host import _ffi, _primitives
from conftest import read_run


def _collect():
    seen = []
    return seen, lambda *arrays: seen.append(arrays)


def test_direct_path_is_active():
    # The fast path must be in use with the JAX this project pins; if a JAX upgrade removes
    # an internal it relies on, this test says so (the fallback still works, only slower).
    assert _host.direct_host_call()


def test_operands_arrive_as_numpy_arrays_eager_and_jitted():
    seen, fn = _collect()
    x = jnp.arange(6, dtype=jnp.float32).reshape(2, 3)
    _host.callback(fn, x, jnp.int32(7))
    jax.jit(lambda a: _host.callback(fn, a * 2, jnp.int32(8)))(x)
    jax.effects_barrier()
    assert len(seen) == 2
    for arrays, scale, tag in zip(seen, (1, 2), (7, 8), strict=True):
        assert all(isinstance(a, np.ndarray) for a in arrays)
        np.testing.assert_array_equal(arrays[0], np.arange(6).reshape(2, 3) * scale)
        assert arrays[0].dtype == np.float32 and int(arrays[1]) == tag


def test_fallback_without_jax_internals_keeps_the_contract(monkeypatch):
    # If a JAX release drops an internal the direct path uses, callax falls back to
    # jax.debug.callback; the host function must still get NumPy arrays.
    from jax.interpreters import mlir

    monkeypatch.delattr(mlir, "emit_python_callback")
    fallback, direct = _primitives._make_host_call()
    assert not direct
    seen, fn = _collect()
    jax.jit(lambda a: fallback(fn, a + 1))(jnp.arange(3))
    jax.effects_barrier()
    assert isinstance(seen[0][0], np.ndarray)
    np.testing.assert_array_equal(seen[0][0], [1, 2, 3])


def test_fallback_when_lowering_fails_writes_the_same_points(monkeypatch, tmp_path):
    # A JAX whose internals import but changed signature (emit_python_callback without
    # ``returns_token=`` before jax 0.8.2) fails only when a program is lowered: the probe
    # made at import then picks the public path, and the same points arrive in order.
    from jax.interpreters import mlir

    def old_signature(ctx, callback, token, operands, *args, **kwargs):
        if "returns_token" in kwargs:
            raise TypeError("emit_python_callback() got an unexpected keyword 'returns_token'")
        raise AssertionError("not reached")

    monkeypatch.setattr(mlir, "emit_python_callback", old_signature)
    monkeypatch.setattr(_ffi, "AVAILABLE", False)  # as off CPU: emit_python_callback lowers
    fallback, direct = _primitives._make_host_call()
    assert not direct
    monkeypatch.setattr(_primitives, "callback", fallback)
    writer = callax.JITSummaryWriter(str(tmp_path))

    def body(c, i):
        writer.add_scalar("x", c, i)
        writer.add_scalar("auto", c * 2)
        return c + 1.0, None

    jax.jit(lambda: jax.lax.scan(body, 0.0, jnp.arange(16), unroll=4)[0])()
    jax.jit(jax.vmap(lambda s: jax.lax.scan(body, s, jnp.arange(3))[0]))(jnp.arange(2.0))
    writer.flush()
    run = read_run(str(tmp_path))
    assert run["x"] == [(i, float(i)) for i in range(16)]
    assert run["auto"] == [(i, 2.0 * i) for i in range(16)]
    for seed in range(2):
        assert read_run(str(tmp_path / f"seed_{seed}"))["x"] == [
            (i, float(seed + i)) for i in range(3)]


def test_inside_scan_cond_and_checkpoint_not_removed_as_dead_code():
    seen, fn = _collect()

    def body(carry, x):
        jax.lax.cond(x % 2 == 1, lambda: _host.callback(fn, x), lambda: None)
        return carry + x, None

    jax.jit(lambda xs: jax.lax.scan(jax.checkpoint(body), 0, xs)[0])(jnp.arange(6))
    jax.effects_barrier()
    assert sorted(int(a[0]) for a in seen) == [1, 3, 5]


def test_differentiating_through_a_host_call():
    seen, fn = _collect()

    def loss(w):
        _host.callback(fn, w)
        return jnp.sum(w**2)

    grad = jax.jit(jax.grad(loss))(jnp.arange(3.0))
    jax.effects_barrier()
    np.testing.assert_allclose(grad, [0.0, 2.0, 4.0])
    np.testing.assert_allclose(seen[0][0], [0.0, 1.0, 2.0])


def test_writer_under_several_devices_uses_the_partitioned_lowering(tmp_path):
    # With two CPU devices and a sharded input, the write goes through jax.debug.callback's
    # own lowering (which decides where the call runs); every point still arrives once.
    script = textwrap.dedent(
        f"""
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        import callax
        mesh = jax.make_mesh((2,), ("d",))
        xs = jax.device_put(jnp.arange(8.0), NamedSharding(mesh, P("d")))
        writer = callax.JITSummaryWriter({str(tmp_path)!r})

        @jax.jit
        def train(xs):
            def body(carry, i):
                writer.add_scalar("x/sum", jnp.sum(xs) * i, i)
                return carry, None
            jax.lax.scan(body, 0, jnp.arange(4))
            return jnp.sum(xs)

        train(xs).block_until_ready()
        writer.close()
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)
    run = read_run(str(tmp_path))
    assert run["x/sum"] == [(i, pytest.approx(28.0 * i)) for i in range(4)]


def test_host_call_in_a_busy_program_reaches_every_point(logdir):
    # Many writes from a loop that keeps the runtime busy: nothing lost, nothing reordered.
    writer = callax.JITSummaryWriter(logdir)
    w = jnp.eye(32) * 0.5

    @jax.jit
    def run():
        def body(x, i):
            x = jnp.tanh(x @ w + 0.1)
            writer.add_scalar("busy/value", x[0, 0], i)
            return x, None

        return jax.lax.scan(body, jnp.ones((32, 32)), jnp.arange(50))[0]

    final = run()
    writer.flush()
    x, expected = np.ones((32, 32), np.float32), []
    for _ in range(50):
        x = np.tanh(x @ np.asarray(w) + 0.1)
        expected.append(x[0, 0])
    run_ = read_run(logdir)["busy/value"]
    assert [s for s, _ in run_] == list(range(50))
    np.testing.assert_allclose([v for _, v in run_], expected, rtol=1e-5)
    assert np.isfinite(np.asarray(final)).all()


def test_operands_of_every_common_dtype_arrive_with_their_dtype():
    # The FFI handler maps XLA's element types to NumPy's (bf16 through ml_dtypes).
    seen, fn = _collect()
    arrays = (jnp.arange(3, dtype=jnp.bfloat16), jnp.array([True, False]),
              jnp.arange(4, dtype=jnp.int8), jnp.arange(2, dtype=jnp.uint32),
              jnp.arange(2, dtype=jnp.float16), jnp.zeros((0, 3), jnp.float32),
              jnp.array([1 + 2j], jnp.complex64))
    jax.jit(lambda *a: _host.callback(fn, *a))(*arrays)
    jax.effects_barrier()
    (got,) = seen
    for a, b in zip(arrays, got, strict=True):
        assert isinstance(b, np.ndarray) and b.dtype == a.dtype and b.shape == a.shape
        np.testing.assert_array_equal(b, np.asarray(a))


IMPORT_STARTS_NO_BACKEND = """
import sys
from jax._src import xla_bridge
import callax, callax.callbacks, callax.cli, callax.envs, callax.events, callax.train
import callax.writers
assert not xla_bridge._backends, f"import callax started {list(xla_bridge._backends)}"
import jax, jax.numpy as jnp
# What must come before any backend starts still works after `import callax`:
jax.config.update("jax_num_cpu_devices", 2)
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{sys.argv[1]}", num_processes=1,
                           process_id=0)
writer = callax.JITSummaryWriter(sys.argv[2])

@jax.jit
def step(x):
    writer.add_scalar("loss", x, 7)
    return x + 1

step(jnp.float32(0.5))
writer.close()
assert len(jax.devices()) == 2, jax.devices()
jax.distributed.shutdown()
"""


def test_import_callax_starts_no_backend(tmp_path):
    """``import callax`` (and its subpackages) starts none of JAX's backends: its host-call
    probes and the FFI handler's round trip run at the first host call. So a program may
    import callax first, then call ``jax.distributed.initialize`` and set backend options
    (``jax_num_cpu_devices``), which JAX refuses once a backend started."""
    from conftest import free_port

    done = subprocess.run([sys.executable, "-c", IMPORT_STARTS_NO_BACKEND, str(free_port()),
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_run(str(tmp_path / "run")) == {"loss": [(7, 0.5)]}
