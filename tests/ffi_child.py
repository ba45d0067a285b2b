"""Child process for tests/test_ffi.py: what must not crash, leak or differ runs here.

    python tests/ffi_child.py retention <ffi|jax> <n>
    python tests/ffi_child.py drift <CallFrame|Attrs|Buffer|version> <logdir>
    python tests/ffi_child.py reload <logdir>
    python tests/ffi_child.py probe <cache_dir>

Each mode prints one line ``RESULT <json>`` that the test reads (the points are read back
from ``<logdir>`` by the test); a crash (a signal) shows as the child's return code.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import re
import sys
import warnings

_ABI = "callax._host._ffi_abi"


def _install_drifted_abi(struct: str) -> None:
    """Load callax's ABI module, before callax, with one struct definition no longer
    matching XLA's: an 8-byte field inserted after its ``struct_size`` (or, for
    ``version``, another API major version reported). ``import callax`` then uses it."""
    spec = importlib.util.find_spec("callax")
    assert spec is not None and spec.origin is not None
    path = os.path.join(os.path.dirname(spec.origin), "_host", "_ffi_abi.py")
    with open(path) as file:
        source = file.read()
    if struct == "version":
        patched = source.replace("API_VERSION = (0, 2)", "API_VERSION = (1, 2)")
    else:
        pattern = (rf"(class {struct}\(ctypes\.Structure\):.*?_fields_ = \["
                   r"\(\"struct_size\", _size_t\), )")
        patched = re.sub(pattern, r'\1("drift", ctypes.c_int64), ', source, count=1,
                         flags=re.S)
    assert patched != source, f"nothing patched for {struct!r}"
    module = importlib.util.module_from_spec(
        importlib.util.spec_from_loader(_ABI, loader=None, origin=path))
    exec(compile(patched, path, "exec"), module.__dict__)
    sys.modules[_ABI] = module


def _write_in_a_loop(logdir: str, tag: str, n: int) -> None:
    """A jitted ``lax.scan`` writing ``n`` points of ``tag``: step i, value i / 2."""
    import jax
    import jax.numpy as jnp

    import callax

    writer = callax.JITSummaryWriter(logdir)

    def body(carry, i):
        writer.add_scalar(tag, i / 2, global_step=i)
        return carry, None

    jax.jit(lambda: jax.lax.scan(body, 0, jnp.arange(n))[0])()
    writer.close()


def drift(struct: str, logdir: str) -> dict:
    """Import callax with a drifted struct: at the first host call (the decision's first
    read) the round trip must fail cleanly, JAX's path must be chosen with one warning, and
    points must still arrive. Then force the handler: a program using it must fail with an
    error, not crash."""
    _install_drifted_abi(struct)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import callax
        from callax._host import _ffi

        available, reason = _ffi.AVAILABLE, _ffi.REASON
    ours = [str(w.message) for w in caught if "callax: host calls use" in str(w.message)]
    _write_in_a_loop(os.path.join(logdir, "fallback"), "x", 5)

    _ffi.AVAILABLE = True  # as if no round trip had run
    forced = None
    try:
        _write_in_a_loop(os.path.join(logdir, "forced"), "y", 3)
        import jax

        jax.effects_barrier()
    except Exception as error:  # noqa: BLE001 - the clean error expected
        forced = f"{type(error).__name__}: {error}"
    del callax
    return {"available": available, "reason": reason, "warnings": ours, "forced": forced}


def reload(logdir: str) -> dict:
    """A program compiled before ``importlib.reload`` of the handler's module, and one
    after, both write (before, XLA called the freed handler: "free(): invalid pointer")."""
    import importlib

    import jax
    import jax.numpy as jnp

    import callax
    from callax._host import _ffi

    writer = callax.JITSummaryWriter(logdir)

    def step(i):
        writer.add_scalar("before", i, global_step=i)
        return i

    old = jax.jit(step)
    old(jnp.int32(0))
    jax.effects_barrier()
    importlib.reload(_ffi)
    gc.collect()
    old(jnp.int32(1))

    def step_after(i):
        writer.add_scalar("after", i, global_step=i)
        return i

    jax.jit(step_after)(jnp.int32(2))
    jax.effects_barrier()
    importlib.reload(_ffi)
    gc.collect()
    old(jnp.int32(3))
    writer.close()
    return {"available": _ffi.AVAILABLE, "reason": _ffi.REASON}


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def retention(path: str, n: int) -> dict:
    """``n`` retraces of a program whose host function is new each time and closes over
    4 MB, then ``jax.clear_caches()``: how much the process kept."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from callax import _host
    from callax._host import _ffi, _primitives

    assert _ffi.AVAILABLE or path != "ffi", _ffi.REASON  # (reading it registers the handler)
    _ffi.AVAILABLE = path == "ffi"  # which lowering the programs below get
    seen: list[float] = []

    def sweep(count: int, offset: int) -> None:
        for i in range(offset, offset + count):
            big = np.full(1_000_000, i, np.float32)  # 4 MB, a new array per trace

            def host(seed, when, x, big=big):
                del seed, when
                seen.append(float(big[0]) + float(x[0]))

            jax.jit(lambda x, host=host: _host.send(host, x))(jnp.float32(0.5))
        jax.effects_barrier()

    sweep(5, 0)  # warm: JAX's own first-use allocations
    jax.clear_caches()
    gc.collect()
    before = _rss_mb()
    sweep(n, 5)
    peak = _rss_mb()
    jax.clear_caches()
    gc.collect()
    after = _rss_mb()
    return {"before": before, "peak": peak, "after": after, "calls": len(seen),
            "values_ok": seen == [i + 0.5 for i in range(n + 5)],
            "live_keys": len(_ffi._PROCESS.functions) if hasattr(_ffi, "_PROCESS") else None,
            "checked_keys": len(_ffi._PROCESS.checked) if hasattr(_ffi, "_PROCESS") else None,
            "live_wrappers": (_primitives._returning_nothing.live()
                              + _primitives._refusable.live())
            if hasattr(_primitives._refusable, "live") else None}


def probe(cache_dir: str) -> dict:
    """What the installed JAX's persistent cache does with a program holding a host
    callback (``io_callback``), next to what callax's probe says it does."""
    import jax
    import jax.numpy as jnp
    from jax.experimental import io_callback

    from callax._host import _ffi_path

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    stored = {}
    for name, fn in (("plain", lambda x: x * 3 + 1),
                     ("callback", lambda x: io_callback(lambda v: v, x, x) + 1)):
        entries = set(os.listdir(cache_dir)) if os.path.isdir(cache_dir) else set()
        jax.jit(fn)(jnp.arange(4.0)).block_until_ready()
        stored[name] = len(set(os.listdir(cache_dir)) - entries) > 0
    return {"probe": _ffi_path.jax_caches_host_callbacks(), "stored": stored}


def main() -> None:
    mode = sys.argv[1]
    if mode == "retention":
        result = retention(sys.argv[2], int(sys.argv[3]))
    elif mode == "drift":
        result = drift(sys.argv[2], sys.argv[3])
    elif mode == "reload":
        result = reload(sys.argv[2])
    elif mode == "probe":
        result = probe(sys.argv[2])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
