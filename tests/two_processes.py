"""The two-process set-up shared by the multi-process tests and the scripts they start.

A test calls :func:`run` with a script; the script, first thing, calls :func:`join`, which
gives this process 2 host devices and joins ``jax.distributed`` (gloo collectives, the
coordinator on 127.0.0.1) as process 0 or 1 of 2: 4 global devices in all.
"""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(script: str, root: str, *, timeout: float) -> None:
    """Start ``python tests/<script> PORT PROCESS ROOT`` as processes 0 and 1, wait for both
    (killing what is left after ``timeout`` s), and check each exited 0 after printing
    ``DONE``."""
    from conftest import free_port  # not at import: the scripts import this module first

    port = free_port()
    # No speed is measured in the processes: XLA skips its expensive passes.
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, script), str(port), str(p),
                               root], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for p in range(2)]
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-4000:]
        assert "DONE" in out


def join() -> tuple[int, str]:
    """In a script :func:`run` started, before anything imports JAX: 2 host devices, gloo,
    ``jax.distributed.initialize`` with the coordinator on 127.0.0.1:PORT. Returns
    ``(process, root)`` from the command line."""
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    port, process, root = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process,
                               initialization_timeout=60)
    return process, root
