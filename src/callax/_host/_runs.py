"""Opening runs, named once for every process (``jax.distributed``): process 0 decides a
run's directory (and a new training's ``<run>_<n>``) and shares it through the distributed
key-value store."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from .. import _writer as host
from ._trace import under_trace as _under_trace

__all__ = ["open_run"]


_run_names = itertools.count()


def _shared_name(log_dir: str | Callable[[], str], avoid_existing: bool, per_process: bool,
                 purge_step: int | None = None, writers=None) -> int:
    """Open a run on the host and return its handle, the name decided once for every process.

    With several processes (``jax.distributed``), process 0 names the run (time stamp,
    ``avoid_existing`` suffix) and publishes it in the distributed key-value store; the other
    processes wait for it (the n-th run opened by each process is the same run). With
    ``per_process`` each process then writes ``<run>/process_<p>``.
    """
    count, index = jax.process_count(), jax.process_index()
    if count == 1:
        return host.open_run(log_dir, avoid_existing=avoid_existing, purge_step=purge_step,
                             writers=writers)
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:  # pragma: no cover - processes without a coordinator
        raise RuntimeError("callax: several JAX processes but no jax.distributed client")
    key = f"callax/run/{next(_run_names)}"
    if index == 0:
        handle = host.open_run(log_dir, avoid_existing=avoid_existing, purge_step=purge_step,
                             writers=writers)
        name = host.get_run(handle).log_dir
        client.key_value_set(key, name)
    else:
        name = client.blocking_key_value_get(key, 300_000)
        handle = None
    if per_process:
        directory = os.path.join(name, f"process_{index}")
        if handle is not None:
            run = host.get_run(handle)
            run.log_dir = run.base_dir = directory
        else:
            handle = host.open_run(directory, purge_step=purge_step, writers=writers)
    elif handle is None:
        handle = host.open_run(name, purge_step=purge_step, writers=writers)
    return handle


def open_run(log_dir: str | Callable[[], str], *, avoid_existing: bool = False,
             per_process: bool = False, purge_step: int | None = None,
             writers=None) -> jax.Array:
    """Register a run and return its handle as an ``int32`` scalar.

    Called eagerly, the run is opened now. Called while tracing (inside ``jax.jit``), the run
    is opened by a host callback each time the compiled function executes, so every execution
    writes to a fresh run directory. With several processes the run's name is decided once
    (by process 0) and shared; ``per_process`` gives each process ``<run>/process_<p>``.
    ``purge_step``, ``writers``: see :func:`callax._writer.open_run` (writers are resolved
    here: an unknown name or a missing package fails now, not when the run opens).
    """
    writers = host.resolve_writers(writers)
    if not _under_trace():
        return jnp.asarray(_shared_name(log_dir, avoid_existing, per_process, purge_step,
                                        writers), jnp.int32)

    def _open() -> np.ndarray:
        return np.asarray(_shared_name(log_dir, avoid_existing, per_process, purge_step,
                                       writers), np.int32)

    return io_callback(_open, jax.ShapeDtypeStruct((), jnp.int32), ordered=False)


def _rollover_name(run) -> str:
    """The directory of a run's next training: the next free ``<base>_<n>``, decided by
    process 0 and shared through the distributed key-value store with several processes."""
    if jax.process_count() == 1:
        return host.unique_dir(run.base_dir, True)
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:  # pragma: no cover - processes without a coordinator
        raise RuntimeError("callax: several JAX processes but no jax.distributed client")
    key = f"callax/training/{run.base_dir}/{run.trainings}"
    if jax.process_index() == 0:
        name = host.unique_dir(run.base_dir, True)
        client.key_value_set(key, name)
        return name
    return client.blocking_key_value_get(key, 300_000)
