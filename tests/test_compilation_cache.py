"""Programs with callax callbacks come back from JAX's persistent compilation cache (issue 18).

Each test runs fresh processes that share one cache directory: the first compiles and stores
the program, the second loads it; both must write the same points (read back with
TensorBoard's reader), which proves that the loaded executable's host calls reach the second
process's functions. Both processes of a test compile without XLA's expensive optimizations
(tests/conftest.py's ``child_env``): the setting is part of the cache's key, so the second
finds what the first stored only because they share it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from callax._host import _ffi, _primitives
from conftest import child_env, read_run, run_dirs

# Scalars that depend on time, not on the computation.
TIMED = ("time/", "trainer/time", "trainer/timing", "fps")


def _train(tmp_path, cache: str, name: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "callax", "train", "--algo", "sac", "--env", "pendulum",
            "--total-timesteps", "1000", "--no-progress", "--no-histograms",
            "--logdir", str(tmp_path / "runs"), "--name", name,
            "--compilation-cache", cache]
    done = subprocess.run(argv, capture_output=True, text=True, env=child_env(), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _computed(directory: str) -> dict[str, list[tuple[int, float]]]:
    return {tag: points for tag, points in read_run(directory).items()
            if not any(t in tag for t in TIMED)}


@pytest.mark.slow
def test_second_callax_train_loads_the_program_and_writes_the_same_points(tmp_path):
    cache = str(tmp_path / "cache")
    first = _train(tmp_path, cache, "first")
    assert "callax: compiled in" in first.stderr, first.stderr
    assert os.listdir(cache), "nothing stored in the cache"
    second = _train(tmp_path, cache, "second")
    assert "callax: loaded from the compilation cache in" in second.stderr, second.stderr

    runs = str(tmp_path / "runs")
    assert run_dirs(os.path.join(runs, "first")) == run_dirs(os.path.join(runs, "second"))
    a = _computed(os.path.join(runs, "first", "seed_0"))
    b = _computed(os.path.join(runs, "second", "seed_0"))
    assert "rollout/ep_rew_mean" in a and any(tag.startswith("trainer/") for tag in a)
    assert a == b  # the same seed: the same points, from the loaded program's host calls


_SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp
    import callax

    jax.config.update("jax_compilation_cache_dir", sys.argv[2])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    hits = []
    jax.monitoring.register_event_listener(
        lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None)

    writer = callax.JITSummaryWriter(sys.argv[1])

    def body(c, i):
        writer.add_scalar("x", c, i)
        writer.add_scalar("stop", jnp.float32(callax._host.stop_requested(i)), i)
        return c + 1.5, None

    jax.jit(lambda: jax.lax.scan(body, 0.0, jnp.arange(64), unroll=8)[0])().block_until_ready()
    writer.close()
    print("hits", len(hits))
""")


def test_a_users_jitted_loop_runs_from_the_cache_in_program_order(tmp_path):
    cache = str(tmp_path / "cache")
    outputs = []
    for name in ("first", "second"):
        done = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / name), cache],
                              capture_output=True, text=True, env=child_env(), timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append(done.stdout)
    assert "hits 0" in outputs[0] and "hits 0" not in outputs[1], outputs
    for name in ("first", "second"):
        run = read_run(str(tmp_path / name))
        assert run["x"] == [(i, 1.5 * i) for i in range(64)]
        assert run["stop"] == [(i, 0.0) for i in range(64)]


def test_a_key_naming_another_function_fails_instead_of_calling_it():
    seen = []

    def mine(x):
        seen.append(np.asarray(x))

    program = jax.jit(lambda x: _primitives.callback(mine, x))
    program(jnp.int32(1))
    jax.effects_barrier()
    assert [int(v) for v in seen] == [1]
    if not _ffi.AVAILABLE:  # JAX >= 0.11 caches its own callbacks: no keys to check
        pytest.skip(f"callax's FFI handler is not used here: {_ffi.REASON}")
    key = _ffi.key_of(_primitives._returning_nothing(mine))
    real_name = _ffi.name_of

    def another_function_under_the_key(fn):  # as if this process had another one there
        return "somewhere.impostor" if _ffi.function_of(key) is fn else real_name(fn)

    _ffi._PROCESS.checked.discard(key)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_ffi, "name_of", another_function_under_the_key)
        with pytest.raises(Exception, match="names .*mine.* but this process has "
                                            "'somewhere.impostor'"):
            program(jnp.int32(2))
            jax.effects_barrier()
    assert [int(v) for v in seen] == [1]  # not called under the mismatched name
