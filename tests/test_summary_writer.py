import math
import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import callax
from callax import JITSummaryWriter
from conftest import assert_steps_increase, read_run, run_dirs, sync


def test_eager_add_scalar_and_dict(logdir):
    writer = JITSummaryWriter(os.path.join(logdir, "run"))
    writer.add_scalar("a", 1.5, 0)
    writer.add_scalar("a", jnp.float32(2.5), 3)
    writer.add_dict("train", {"loss": 0.25, "n": jnp.int32(7), "nested": {"x": True}},
                    global_step=3)
    writer.flush()
    run = read_run(writer.log_dir)
    assert run["a"] == [(0, 1.5), (3, 2.5)]
    assert run["train/loss"] == [(3, 0.25)]
    assert run["train/n"] == [(3, 7.0)]
    assert run["train/nested/x"] == [(3, 1.0)]


def test_auto_step_continues_per_tag(logdir):
    writer = JITSummaryWriter(logdir)
    writer.add_scalar("a", 1.0, 10)
    writer.add_scalar("a", 2.0)
    writer.add_scalar("b", 3.0)
    writer.add_scalar("b", 4.0)
    run = read_run(logdir)
    assert run["a"] == [(10, 1.0), (11, 2.0)]
    assert run["b"] == [(0, 3.0), (1, 4.0)]


def test_inside_jit_scan_and_cond(logdir):
    writer = JITSummaryWriter(logdir)

    @jax.jit
    def loop(writer, scale):
        def body(carry, i):
            writer.add_scalar("scan/value", scale * i, i)
            jax.lax.cond(i % 2 == 0, lambda: writer.add_scalar("scan/even", i, i), lambda: None)
            return carry + 1, None

        return jax.lax.scan(body, 0, jnp.arange(5))[0]

    loop(writer, 2.0)
    run = read_run(logdir)
    assert run["scan/value"] == [(i, 2.0 * i) for i in range(5)]
    assert run["scan/even"] == [(i, float(i)) for i in (0, 2, 4)]


def test_vmap_writes_one_run_per_seed(logdir):
    writer = JITSummaryWriter(logdir)

    @jax.jit
    def per_seed(x):
        def body(c, i):
            writer.add_dict("m", {"x": x * 10 + i, "y": -x}, global_step=i)
            return c, None

        jax.lax.scan(body, 0, jnp.arange(4))
        return x

    per_seed_v = jax.vmap(per_seed)
    per_seed_v(jnp.arange(3.0))
    assert run_dirs(logdir) == ["seed_0", "seed_1", "seed_2"]
    for seed in range(3):
        run = read_run(os.path.join(logdir, f"seed_{seed}"))
        assert run["m/x"] == [(i, seed * 10.0 + i) for i in range(4)]
        assert run["m/y"] == [(i, -float(seed)) for i in range(4)]
        assert_steps_increase(run)


def test_nested_vmap_flat_positions(logdir):
    writer = JITSummaryWriter(logdir)
    xs = jnp.arange(6.0).reshape(2, 3)
    jax.vmap(jax.vmap(lambda x: writer.add_scalar("v", x, 1)))(xs)
    assert run_dirs(logdir) == [f"seed_{i}" for i in range(6)]
    for i in range(6):
        assert read_run(os.path.join(logdir, f"seed_{i}"))["v"] == [(1, float(i))]


def test_vmap_one_host_call_per_write(logdir, monkeypatch):
    from callax import _writer as host

    calls = []
    original = host.write
    def counting_write(*args, **kwargs):
        calls.append(args[2].shape)
        original(*args, **kwargs)

    monkeypatch.setattr(host, "write", counting_write)
    writer = JITSummaryWriter(logdir)
    jax.jit(jax.vmap(lambda x: writer.add_dict("p", {"a": x, "b": x})))(jnp.arange(8.0))
    sync()
    assert calls == [(8,)]


def test_writer_built_inside_jit_opens_fresh_run_each_execution(logdir):
    target = os.path.join(logdir, "inside")

    @jax.jit
    def run(x):
        writer = JITSummaryWriter(target)
        writer.add_scalar("x", x, 0)
        writer.flush()
        return x

    for i in range(3):
        run(float(i))
    assert run_dirs(logdir) == ["inside", "inside_1", "inside_2"]
    values = sorted(read_run(os.path.join(logdir, d))["x"][0][1] for d in run_dirs(logdir))
    assert values == [0.0, 1.0, 2.0]


def test_new_writer_same_config_does_not_recompile(logdir):
    @eqx.debug.assert_max_traces(max_traces=1)
    def log(writer, x):
        writer.add_scalar("x", x, 0)
        return x

    log_jit = jax.jit(log)
    for i in range(3):
        log_jit(JITSummaryWriter(os.path.join(logdir, f"r{i}")), float(i))
    for i in range(3):
        assert read_run(os.path.join(logdir, f"r{i}"))["x"] == [(0, float(i))]


@pytest.mark.parametrize(
    "value, error, match",
    [
        (jnp.ones(3), ValueError, "tag 'bad'.*shape \\(3,\\)"),
        ("1.0", TypeError, "'bad'"),
        (1 + 2j, TypeError, "tag 'bad'.*complex"),
    ],
)
def test_bad_value_fails_at_trace_time_naming_the_tag(logdir, value, error, match):
    writer = JITSummaryWriter(logdir)
    with pytest.raises(error, match=match):
        jax.jit(lambda: writer.add_scalar("bad", value, 0)).trace()
    with pytest.raises(error, match=match):
        writer.add_scalar("bad", value, 0)


@pytest.mark.parametrize("tag", ["", "/a", "a/", " a", "a//b", "a\nb", 3])
def test_bad_tag_fails_at_trace_time(logdir, tag):
    writer = JITSummaryWriter(logdir)
    with pytest.raises((ValueError, TypeError), match="tag"):
        jax.jit(lambda x: writer.add_scalar(tag, x, 0)).trace(1.0)


def test_bad_step(logdir):
    writer = JITSummaryWriter(logdir)
    with pytest.raises(TypeError, match="global_step"):
        writer.add_scalar("a", 1.0, jnp.ones(2, jnp.int32))
    with pytest.raises(TypeError, match="global_step"):
        jax.jit(lambda s: writer.add_scalar("a", 1.0, s)).trace(1.5)


def test_close_then_write_again(logdir):
    writer = JITSummaryWriter(logdir)
    writer.add_scalar("a", 1.0, 0)
    writer.close()
    assert read_run(logdir)["a"] == [(0, 1.0)]
    writer.add_scalar("a", 2.0, 1)
    writer.close()
    assert read_run(logdir)["a"] == [(0, 1.0), (1, 2.0)]


def test_nan_and_inf_values_are_written(logdir):
    writer = JITSummaryWriter(logdir)
    writer.add_dict("", {"nan": jnp.nan, "inf": jnp.inf}, global_step=0)
    run = read_run(logdir)
    assert math.isnan(run["nan"][0][1]) and run["inf"][0][1] == math.inf


def test_exception_in_training_loop_loses_no_point(tmp_path):
    """Points handed to the host survive an exception that ends the process."""
    script = textwrap.dedent(
        f"""
        import jax, jax.numpy as jnp
        from callax import JITSummaryWriter
        writer = JITSummaryWriter({str(tmp_path)!r})

        @jax.jit
        def iteration(i):
            writer.add_dict("train", {{"i": i, "sq": i * i}}, global_step=i)
            return i + 1

        i = jnp.int32(0)
        for _ in range(20):
            i = iteration(i)
        raise RuntimeError("training crashed")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode != 0 and "training crashed" in result.stderr
    run = read_run(str(tmp_path))
    assert run["train/i"] == [(i, float(i)) for i in range(20)]
    assert run["train/sq"] == [(i, float(i * i)) for i in range(20)]


def test_killed_process_keeps_points_already_written(tmp_path):
    """After a host batch is written the file is flushed: SIGKILL loses nothing before it."""
    script = textwrap.dedent(
        f"""
        import os, signal, jax, jax.numpy as jnp
        from callax import JITSummaryWriter
        from callax._writer import _queue
        writer = JITSummaryWriter({str(tmp_path)!r})
        for i in range(10):
            writer.add_scalar("x", float(i), i)
        jax.effects_barrier()
        _queue.wait_idle()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == -9
    assert read_run(str(tmp_path))["x"] == [(i, float(i)) for i in range(10)]


def test_writer_log_dir_and_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    writer = JITSummaryWriter()
    assert writer.log_dir.startswith(os.path.join(str(tmp_path), "runs"))
    with pytest.raises(TypeError, match="log_dir"):
        JITSummaryWriter(3)


def test_payload_values_match_numpy(logdir):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(6, 3)).astype(np.float32)
    valid = rng.random((6, 3)) < 0.6
    valid[:, 0] = True
    writer = JITSummaryWriter(logdir)
    jax.jit(lambda v, m: writer.write_rows(("a", "b", "c"), jnp.arange(6) * 5, v, m))(
        values, valid
    )
    run = read_run(logdir)
    for column, tag in enumerate("abc"):
        rows = np.flatnonzero(valid[:, column])
        got = run.get(tag, [])
        assert [s for s, _ in got] == (5 * rows).tolist()
        np.testing.assert_array_equal([v for _, v in got], values[rows, column])
    assert callax.flush_all() is None


def test_host_side_is_thread_safe(logdir):
    """Payloads from several threads (as under pmap/shard_map) each carry seed and step."""
    import threading

    from callax import _writer as host

    handle = host.open_run(logdir)

    def worker(seed):
        # Every third batch is written in the calling thread (as a sync host call does),
        # the others by the writer thread: per seed, the order must hold either way.
        for step in range(50):
            host.write(handle, ("t",), np.array([seed]), np.array([[step]]),
                       np.array([[[seed + step / 100]]], np.float32),
                       np.ones((1, 1, 1), bool), wait=step % 3 == 0)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    host.flush(handle)
    for seed in range(4):
        run = read_run(os.path.join(logdir, f"seed_{seed}"))
        assert [s for s, _ in run["t"]] == list(range(50))
        np.testing.assert_allclose([v for _, v in run["t"]], seed + np.arange(50) / 100,
                                   rtol=1e-6)


def test_background_error_is_reraised_on_flush(logdir, monkeypatch):
    from callax import _writer as host

    writer = JITSummaryWriter(logdir)
    run = host.get_run(int(writer.handle))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(run, "write", broken)
    with pytest.warns(RuntimeWarning, match="failed: disk full"):
        writer.add_scalar("a", 1.0, 0)
        with pytest.raises(callax.WriteError, match=r"disk full; 1 point\(s\) not written"):
            writer.flush()
    monkeypatch.undo()
    writer.add_scalar("a", 2.0, 1)
    writer.flush()
    assert read_run(logdir)["a"] == [(1, 2.0)]


def test_non_increasing_steps_are_dropped_with_one_warning(logdir):
    from callax import _writer as host

    handle = host.open_run(logdir)
    one = np.ones((1, 4, 1), bool)
    # The exact count, the run, the tag and the step that went back, at the first drop.
    with pytest.warns(RuntimeWarning, match=r"dropped 2 point\(s\) .*step 5 of tag 't' "
                      r"\(seed -\) is not above the tag's last step 5\): 2 of 't'"):
        host.write(handle, ("t",), np.array([-1]), np.array([[0, 5, 5, 3]]),
                   np.arange(4, dtype=np.float32).reshape(1, 4, 1), one)
        host.flush(handle)
    host.write(handle, ("t",), np.array([-1]), np.array([[4, 6, -1, -1]]),
               np.arange(4, 8, dtype=np.float32).reshape(1, 4, 1), one)
    # Later drops are counted and reported, exactly, at the next flush.
    with pytest.warns(RuntimeWarning, match=r"dropped 1 point\(s\) whose step did not "
                      r"increase: 1 of 't'"):
        assert read_run(logdir)["t"] == [(0, 0.0), (5, 1.0), (6, 5.0), (7, 6.0), (8, 7.0)]
    assert host.get_run(handle).dropped == {"t": 3}


def test_non_increasing_steps_are_dropped_per_tag(logdir):
    from callax import _writer as host

    handle = host.open_run(logdir)
    valid = np.array([[[True, False], [True, True], [True, True], [False, True]]])
    values = np.arange(8, dtype=np.float32).reshape(1, 4, 2)
    with pytest.warns(RuntimeWarning, match="did not increase"):
        host.write(handle, ("a", "b"), np.array([-1]), np.array([[1, 2, 2, 3]]), values, valid)
        host.flush(handle)
    host.write(handle, ("a", "b"), np.array([-1]), np.array([[3, 3]]),
               np.array([[[8.0, 9.0], [10.0, 11.0]]], np.float32), np.ones((1, 2, 2), bool),
               wait=True)
    host.flush(handle)
    run = read_run(logdir)
    assert run["a"] == [(1, 0.0), (2, 2.0), (3, 8.0)]
    assert run["b"] == [(2, 3.0), (3, 7.0)]  # its step 3 was already written
    assert host.get_run(handle).dropped == {"a": 2, "b": 3}


def test_error_in_a_write_in_the_calling_thread_is_raised_on_flush(logdir, monkeypatch):
    from callax import _writer as host

    handle = host.open_run(logdir)
    monkeypatch.setattr(host.get_run(handle), "write", lambda *args, **kwargs: 1 / 0)
    with pytest.warns(RuntimeWarning, match="division by zero"):
        host.write(handle, ("a",), np.array([-1]), np.array([[0]]),
                   np.ones((1, 1, 1), np.float32), np.ones((1, 1, 1), bool), wait=True)
    # The error is this run's: raised by its flush, with the points it cost.
    with pytest.raises(callax.WriteError, match=r"division by zero; 1 point\(s\) not written"):
        host.flush(handle)


def test_buffer_checks_tags_like_the_writer(logdir):
    writer = JITSummaryWriter(logdir)
    buffer = callax.ScalarBuffer.empty(4, 3)
    with pytest.raises(ValueError, match="duplicate tags"):
        buffer.append(writer, ("a", "a"), 0, jnp.ones(2), jnp.ones(2, bool))
    with pytest.raises(ValueError, match="invalid TensorBoard tag"):
        buffer.append(writer, ("a/",), 0, jnp.ones(1), jnp.ones(1, bool))
