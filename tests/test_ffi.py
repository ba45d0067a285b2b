"""callax's XLA FFI handler (``callax._host._ffi``) cannot crash the process (issue 24).

- In this process: call frames built the way XLA builds them (ctypes), with one struct too
  small, another API major version, wrong results or a raising function, handed to the
  handler's C entry point: each returns an XLA error saying why, reads nothing past a
  struct and writes no result.
- Retention: a program keeps its host functions; one dropped while still running (a
  temporary ``jax.jit(f)(x)``, one dispatched by another thread) keeps them until it has
  ended, and no longer.
- In child processes (``tests/ffi_child.py``): callax imported with a struct definition
  drifted from XLA's (a field inserted, another API version reported) falls back to JAX's
  callback target with one warning, still writes every point, and a program forced onto the
  handler fails with an error (never a signal); a reload of the handler's module; 300
  retraces of host functions closing over 4 MB; what the installed JAX's cache stores.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import json
import os
import subprocess
import sys
import threading
import warnings
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import callax
from callax import _host
from callax._host import _ffi, _ffi_abi as abi, _ffi_path, _primitives
from conftest import read_run

CHILD = os.path.join(os.path.dirname(__file__), "ffi_child.py")
_CODES = {dtype: code for code, dtype in _ffi._DTYPES.items()}
ERROR = 4242  # what the fake API table's error_create returns


def _child(*args: str, timeout: float = 600) -> dict:
    # No speed is measured in the children: XLA skips its expensive passes.
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    done = subprocess.run([sys.executable, CHILD, *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    assert done.returncode == 0, (done.returncode, done.stderr[-4000:])  # -11: a crash
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def _ctypes_array(kind, values):
    return (kind * len(values))(*values)


class _Call:
    """One call frame as XLA passes it to an FFI handler, in ctypes: ``fn`` under its real
    key and name, ``operands`` and ``results`` (NumPy arrays the buffers point into), an
    API table whose ``error_create`` records every error the handler makes."""

    def __init__(self, fn, operands, results, api_version=(0, 3)):
        self.errors: list[tuple[str, int]] = []
        self.results = results
        keep = self._keep = [operands, results]

        def create(args):
            self.errors.append((args.contents.message.decode(), args.contents.errc))
            return ERROR

        self.error_create = abi.ERROR_CREATE(create)
        self.api = abi.Api(struct_size=192, api_version=abi.ApiVersion(
            abi.SIZES[abi.ApiVersion], None, *api_version),
            error_create=ctypes.cast(self.error_create, ctypes.c_void_p).value)
        self.operands = [self._buffer(a) for a in operands]
        self.outputs = [self._buffer(a) for a in results]
        key = ctypes.c_int64(_ffi.key_of(fn))
        self.scalar = abi.Scalar(abi.S64, ctypes.addressof(key))
        name = ctypes.create_string_buffer(_ffi.name_of(fn).encode())
        self.name = abi.ByteSpan(ctypes.addressof(name), len(name.value))
        labels = [ctypes.create_string_buffer(b"key"), ctypes.create_string_buffer(b"name")]
        spans = [abi.ByteSpan(ctypes.addressof(x), len(x.value)) for x in labels]
        keep += [key, name, labels, spans]
        attrs = abi.Attrs(abi.SIZES[abi.Attrs], None, 2,
                          _ctypes_array(ctypes.c_int, [abi.SCALAR, abi.STRING]),
                          _ctypes_array(ctypes.POINTER(abi.ByteSpan),
                                        [ctypes.pointer(s) for s in spans]),
                          _ctypes_array(ctypes.c_void_p, [ctypes.addressof(self.scalar),
                                                          ctypes.addressof(self.name)]))
        self.frame = abi.CallFrame(abi.SIZES[abi.CallFrame], None, ctypes.addressof(self.api),
                                   None, abi.EXECUTE, self._list(self.operands),
                                   self._list(self.outputs), attrs)
        keep.append(attrs)

    def _buffer(self, array: np.ndarray) -> abi.Buffer:
        dims = _ctypes_array(ctypes.c_int64, array.shape or (0,))
        self._keep.append(dims)
        return abi.Buffer(abi.SIZES[abi.Buffer], None, _CODES[array.dtype], array.ctypes.data,
                          array.ndim, ctypes.cast(dims, ctypes.POINTER(ctypes.c_int64)))

    def _list(self, buffers) -> abi.List:
        items = _ctypes_array(ctypes.c_void_p, [ctypes.addressof(b) for b in buffers])
        types = _ctypes_array(ctypes.c_int, [1] * len(buffers))
        self._keep += [items, types]
        return abi.List(abi.SIZES[abi.List], None, len(buffers), types, items)

    def __call__(self):
        """What the handler's C entry point returns (``None``: success)."""
        return _ffi._PROCESS.thunk(ctypes.addressof(self.frame))


def _doubled(x):
    return (x * 2,)


def test_a_well_formed_call_runs_the_function_and_writes_its_result():
    out = np.zeros(3, np.float32)
    call = _Call(_doubled, [np.arange(3, dtype=np.float32)], [out])
    assert call() is None and call.errors == []
    assert out.tolist() == [0.0, 2.0, 4.0]


def _smaller(struct_of):
    def shrink(call):
        struct = struct_of(call)
        struct.struct_size -= 8
    return shrink


def _other_major(call):
    call.api.api_version.major_version = 1


def _int32_key(call):
    call.scalar.dtype = 4


SHRUNK = {  # what is changed -> what the error must say
    "call frame": (_smaller(lambda c: c.frame), "call frame (CallFrame) is 160 bytes"),
    "attributes": (_smaller(lambda c: c.frame.attrs), "attributes struct is 40 bytes"),
    "operand buffer": (_smaller(lambda c: c.operands[0]), "operand buffer 0 (Buffer) is 40"),
    "result buffer": (_smaller(lambda c: c.outputs[0]), "result buffer 0 (Buffer) is 40"),
    "argument list": (_smaller(lambda c: c.frame.args), "operand list is 32 bytes"),
    "API major version": (_other_major, "callax's handler was written for major version 0"),
    "key's type": (_int32_key, "attribute 'key' has element type 4, not int64"),
}


@pytest.mark.parametrize("what", SHRUNK)
def test_a_struct_unlike_callaxs_is_an_xla_error_and_nothing_is_written(what):
    change, message = SHRUNK[what]
    out = np.full(3, -1.0, np.float32)
    call = _Call(_doubled, [np.arange(3, dtype=np.float32)], [out])
    change(call)
    assert call() == ERROR
    [(text, code)] = call.errors
    assert message in text and code == abi.FAILED_PRECONDITION, text
    assert out.tolist() == [-1.0, -1.0, -1.0]  # the result buffer was not written


def test_the_api_version_reported_is_callaxs_own_not_the_runtimes():
    for runtime in [(0, 7), (0, 1)]:
        metadata = abi.Metadata(abi.SIZES[abi.Metadata], abi.ApiVersion(
            abi.SIZES[abi.ApiVersion], None, 0, 0), 123)
        extension = abi.MetadataExtension(abi.ExtensionBase(
            abi.SIZES[abi.MetadataExtension], abi.METADATA, None), ctypes.addressof(metadata))
        call = _Call(_doubled, [], [], api_version=runtime)
        call.frame.extension_start = ctypes.addressof(extension)
        assert call() is None
        version = metadata.api_version
        assert (version.major_version, version.minor_version) == abi.API_VERSION == (0, 2)
        assert metadata.traits == 0
    # XLA itself accepted that version: the handler is registered and used here (the
    # decision, made at the first read of AVAILABLE, registers it).
    available = _ffi.AVAILABLE
    assert _ffi._PROCESS.registered == available


def test_an_api_table_too_small_to_report_an_error_is_never_called():
    call = _Call(_doubled, [], [])
    call.frame.struct_size -= 8
    call.api.struct_size = 16  # no error_create in it
    _ffi._take_unreported()
    assert call() is None and call.errors == []  # nothing called through the table
    assert "call frame" in (_ffi._take_unreported() or "")  # kept for the round trip


@pytest.mark.parametrize("returned, why", [
    ((np.zeros(5, np.float32),), "returned float32[5] for result 0, which is float32[3]"),
    ((np.zeros(2, np.float32),), "returned float32[2] for result 0, which is float32[3]"),
    ((np.zeros(3, np.float64),), "returned float64[3] for result 0, which is float32[3]"),
    ((np.zeros((3, 1), np.float32),), "returned float32[3, 1]"),
    ((), "returned 0 value(s) for 1 result(s)"),
])
def test_results_are_written_only_after_their_dtype_and_shape_are_checked(returned, why):
    def wrong(x):
        del x
        return returned

    out = np.full(3, -1.0, np.float32)
    call = _Call(wrong, [np.arange(3, dtype=np.float32)], [out])
    assert call() == ERROR
    [(text, code)] = call.errors
    assert why in text and code == abi.INTERNAL
    assert out.tolist() == [-1.0, -1.0, -1.0]


@pytest.fixture
def handler_path():
    if not _ffi.AVAILABLE:
        pytest.skip(f"callax's FFI handler is not used here: {_ffi.REASON}")
    # These tests lower the FFI path directly (``_ffi_path.bind``). In a program the first
    # write builds callax's host call before any function of the program reaches the
    # handler, and names the effect whose tokens tell what still runs (``_inflight``).
    _primitives.direct_host_call()


def test_wrong_results_from_a_real_program_raise_instead_of_overflowing(handler_path):
    want = [jax.ShapeDtypeStruct((3,), jnp.float32)]
    for returned in [np.zeros(4096, np.float32), np.zeros(1, np.float32),
                     np.zeros(3, np.int32)]:
        with pytest.raises(Exception, match="for result 0, which is float32\\[3\\]"):
            np.asarray(_ffi_path.call(lambda x, r=returned: (r,), want, np.zeros(3))[0])
    assert np.asarray(_ffi_path.call(lambda x: (x + 1,), want,
                                     np.zeros(3, np.float32))[0]).tolist() == [1, 1, 1]


def _raise_from_the_host(x):
    raise ValueError(f"no good value: {x.tolist()}")


def test_a_python_error_in_a_host_call_reaches_the_user_with_its_traceback(handler_path):
    with pytest.raises(Exception) as raised:
        np.asarray(_ffi_path.call(_raise_from_the_host, [jax.ShapeDtypeStruct((), jnp.int32)],
                                  np.arange(2, dtype=np.int32))[0])
    text = str(raised.value)
    assert "Traceback (most recent call last)" in text, text
    assert "in _raise_from_the_host" in text and "test_ffi.py" in text, text
    assert "ValueError: no good value: [0, 1]" in text, text


def _compiled_int_program(host, value: int):
    """``host`` (one int32 in, one out) compiled alone on the FFI path, and its operand."""
    want = [jax.ShapeDtypeStruct((), jnp.int32)]
    x = jax.device_put(np.int32(value), jax.devices("cpu")[0])
    return jax.jit(functools.partial(_ffi_path.bind, host, want)).lower(x).compile(), x


def test_a_compiled_program_keeps_its_host_function_alive_and_only_it(handler_path):
    seen = []

    def host(x):
        seen.append(int(x))
        return (x + 1,)

    compiled, x = _compiled_int_program(host, 1)
    alive = weakref.ref(host)
    del host
    gc.collect()
    assert [int(compiled(x)[0]) for _ in range(2)] == [2, 2] and seen == [1, 1]
    assert alive() is not None


def test_a_dropped_program_releases_its_host_function(handler_path):
    def host(x):
        return (x + 1,)

    compiled, x = _compiled_int_program(host, 1)
    alive = weakref.ref(host)
    del host
    assert int(compiled(x)[0]) == 2
    del compiled
    jax.clear_caches()
    gc.collect()
    jax.effects_barrier()  # where callax lets go of what programs that ended called
    assert alive() is None  # nothing of callax kept it


def test_a_deserialized_executable_keeps_its_host_function_after_the_original_goes(
        handler_path):
    from jax.experimental import serialize_executable

    def host(x):
        return (x * 3,)

    compiled, x = _compiled_int_program(host, 2)
    loaded = serialize_executable.deserialize_and_load(*serialize_executable.serialize(compiled))
    alive = weakref.ref(host)
    del host, compiled
    jax.clear_caches()
    gc.collect()
    assert alive() is not None and int(loaded(x)[0]) == 6  # the loaded program holds it
    del loaded
    gc.collect()
    jax.effects_barrier()
    assert alive() is None


def test_where_jax_cannot_report_running_programs_dropped_ones_keep_their_functions(
        monkeypatch, handler_path):
    # Another JAX whose token set callax cannot watch: nothing is freed early (kept instead).
    from callax._host import _inflight

    def another_jax():
        raise AttributeError("RuntimeTokenSet")

    monkeypatch.setattr(_inflight._STATE, "installed", False)
    monkeypatch.setattr(_inflight._STATE, "unwatchable", False)
    monkeypatch.setattr(_inflight, "_install", another_jax)

    def host(x):
        return (x - 1,)

    compiled, x = _compiled_int_program(host, 1)
    alive = weakref.ref(host)
    del host
    assert int(compiled(x)[0]) == 0
    del compiled
    jax.clear_caches()
    gc.collect()
    assert alive() is not None and any(alive() in kept.values() for kept in
                                       _inflight._STATE.kept)
    assert _inflight._STATE.unwatchable and not _inflight.watch()


class _HeldPrograms:
    """Temporary programs ``jax.jit(f)(i)`` that wait in a first host call (``hold``, a new
    function per program) until :meth:`release`, then write ``i`` to tag ``t``. A matrix
    product first makes XLA:CPU dispatch them asynchronously: the call returns at once."""

    def __init__(self, logdir: str) -> None:
        self.writer = callax.JITSummaryWriter(logdir)
        self.gate = threading.Event()
        self.waited: list[bool] = []  # True: the program waited for release()
        self.holds: list[weakref.ref] = []

    def dispatch(self, i: int, keep: list | None = None) -> None:
        """Dispatch program ``i``; its jitted function goes after the call, or into ``keep``."""
        self.gate.clear()
        dispatcher = threading.get_ident()

        def hold(seed, when, x):
            del seed, when, x
            if threading.get_ident() == dispatcher:
                # XLA:CPU ran this program inline in the dispatching call (a loaded machine
                # does so at times): nothing can be dropped while it runs, so it probes
                # nothing; waiting would only block the dispatch until the timeout.
                self.waited.append(False)
                return
            self.waited.append(self.gate.wait(20))

        def program(s):
            m = jnp.full((16, 16), 0.5, jnp.float32) * s
            _host.send(hold, (m @ m)[0, :1])
            self.writer.add_scalar("t", s * 0 + i, global_step=s)
            return s

        self.holds.append(weakref.ref(hold))
        jitted = jax.jit(program)
        jitted(jnp.int32(i))
        if keep is not None:
            keep.append(jitted)

    def release(self) -> None:
        self.gate.set()

    def check(self, logdir: str, n: int) -> None:
        """Every program wrote (at least one of them while its executable was gone); then
        none of their host functions is kept."""
        self.writer.close()  # waits for every program (jax.effects_barrier)
        assert len(self.waited) == n
        assert any(self.waited), "every dispatch was synchronous: this test checked nothing"
        assert read_run(logdir)["t"] == [(i, float(i)) for i in range(n)]
        jax.clear_caches()
        gc.collect()
        jax.effects_barrier()  # where callax lets go of what programs that ended called
        assert [ref() for ref in self.holds] == [None] * n


def test_a_temporary_program_still_running_finds_its_host_function(tmp_path):
    # The jitted function and executable of `jax.jit(f)(x)` are collected while the program
    # waits in its first host call; its later calls must still find their host functions.
    programs = _HeldPrograms(str(tmp_path))
    for i in range(5):
        programs.dispatch(i)
        gc.collect()  # the executable is gone: only the running program needs its functions
        programs.release()
    programs.check(str(tmp_path), 5)


def test_a_program_running_in_another_thread_keeps_its_functions(tmp_path):
    # Dispatched by another thread; this one drops its jitted function and every executable
    # (`jax.clear_caches()`: the executable is collected in this thread, which has no token
    # of its own in flight) and lowers another program while it still runs.
    programs = _HeldPrograms(str(tmp_path))
    errors: list[BaseException] = []
    jitted: list = []
    for i in range(3):
        dispatched = threading.Event()

        def run(i=i, dispatched=dispatched):
            try:
                programs.dispatch(i, keep=jitted)
                dispatched.set()
                jax.effects_barrier()  # this thread's programs (JAX's tokens are per thread)
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)
                dispatched.set()

        thread = threading.Thread(target=run)
        thread.start()
        assert dispatched.wait(60)
        jitted.clear()
        jax.clear_caches()
        gc.collect()
        jax.jit(lambda x: _host.send(lambda *a: None, x))(jnp.float32(i))  # a lowering
        programs.release()
        thread.join()
    assert not errors, errors
    programs.check(str(tmp_path), 3)


def test_the_round_trip_compares_what_comes_back(monkeypatch, handler_path):
    assert _ffi.REASON == "callax's XLA FFI handler (its round trip passed)"
    assert _ffi.decide() == (True, _ffi.REASON)
    # The handler misreading its operands (zeros instead of the values sent):
    monkeypatch.setattr(_ffi, "_array", lambda buffer: np.zeros(_ffi._shape(buffer),
                                                                 _ffi._dtype(buffer.dtype)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available, reason = _ffi.decide()
    assert not available and "the round trip returned float32[2, 3]" in reason, reason
    [warning] = [w for w in caught if "callax: host calls use" in str(w.message)]
    assert warning.category is RuntimeWarning and "persistent compilation cache" in str(
        warning.message)


@pytest.mark.parametrize("jax_caches", [True, False])
def test_each_answer_of_the_probe_picks_a_path_and_the_same_points_arrive(
        tmp_path, monkeypatch, jax_caches):
    monkeypatch.setattr(_ffi_path, "jax_caches_host_callbacks", lambda: jax_caches)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available, reason = _ffi.decide()
    assert not [w for w in caught if "callax" in str(w.message)]  # neither answer warns
    assert available == (not jax_caches), reason
    assert ("JAX's own callback target" in reason) == jax_caches
    monkeypatch.setattr(_ffi, "AVAILABLE", available)

    writer = callax.JITSummaryWriter(str(tmp_path / "run"))

    def body(c, i):
        writer.add_scalar("x", c, global_step=i)
        return c + 1.5, None

    program = jax.jit(lambda: jax.lax.scan(body, 0.0, jnp.arange(6))[0])
    assert ("callax_host" in program.lower().as_text()) == available
    program()
    writer.close()
    assert read_run(str(tmp_path / "run"))["x"] == [(i, 1.5 * i) for i in range(6)]


def test_the_probe_says_what_the_installed_jax_does(tmp_path):
    result = _child("probe", str(tmp_path / "cache"))
    assert result["stored"]["plain"], result  # the cache works at all
    assert result["probe"] == result["stored"]["callback"], result


@pytest.mark.parametrize("struct", ["CallFrame", "Attrs", "Buffer", "version"])
def test_drifted_structs_fall_back_with_one_warning_and_never_crash(tmp_path, struct):
    result = _child("drift", struct, str(tmp_path))
    assert not result["available"], result
    [warning] = result["warnings"]
    assert "instead of callax's XLA FFI handler" in warning
    expected = {"CallFrame": "call frame (CallFrame) is 168 bytes, but callax reads 176",
                "Attrs": "call frame (CallFrame) is 168 bytes, but callax reads 176",
                "Buffer": "operand buffer 0 (Buffer) is 48 bytes, but callax reads 56",
                "version": "handler's API version (1.2) is incompatible"}[struct]
    assert expected in warning, warning
    assert read_run(str(tmp_path / "fallback"))["x"] == [(i, i / 2) for i in range(5)]
    # Forced onto the handler anyway: a clean error (no handler registered, for
    # "version"), no point written.
    assert result["forced"] is not None, result
    assert (expected if struct != "version" else "No FFI handler registered") in \
        result["forced"], result["forced"]


def test_the_handler_outlives_a_reload_of_its_module(tmp_path):
    result = _child("reload", str(tmp_path))
    assert result["available"], result
    run = read_run(str(tmp_path))
    assert run["before"] == [(0, 0.0), (1, 1.0), (3, 3.0)]
    assert run["after"] == [(2, 2.0)]


@pytest.mark.parametrize("path", ["ffi", "jax"])
def test_retracing_new_host_functions_keeps_memory_flat(path):
    """40 traces, each with a new host function closing over 4 MB, then
    ``jax.clear_caches()``: the process keeps less than 50 MB of it (the FFI path kept
    1.1 GB of 300 before: all of it; 40 kept would be 160 MB, 13 would pass the bound)."""
    result = _child("retention", path, "40")
    assert result["calls"] == 45 and result["values_ok"], result
    assert result["after"] - result["before"] < 50, result
    assert result["live_wrappers"] == 0, result
    # What callax's table still names: the round trip's function and module-level ones.
    assert result["live_keys"] <= 5 and result["checked_keys"] <= 5, result
