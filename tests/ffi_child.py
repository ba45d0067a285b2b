"""Child process for tests/test_ffi.py: what must not crash, leak or differ runs here.

    python tests/ffi_child.py retention <ffi|jax> <n>
    python tests/ffi_child.py drift <struct> <logdir>
    python tests/ffi_child.py reload <logdir>

Each mode prints one line ``RESULT <json>`` that the test reads; a crash (a signal) shows
as the child's return code.
"""

from __future__ import annotations

import gc
import json
import sys


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
            "live_wrappers": (_primitives._returning_nothing.live()
                              + _primitives._refusable.live())
            if hasattr(_primitives._refusable, "live") else None}


def main() -> None:
    mode = sys.argv[1]
    if mode == "retention":
        result = retention(sys.argv[2], int(sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
