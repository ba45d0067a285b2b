"""Shared test helpers: reading event files back with TensorBoard's own reader."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import jax
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import callax

JAX_VERSION = tuple(int("".join(c for c in p if c.isdigit()) or 0)
                    for p in jax.__version__.split(".")[:3])
# JAX 0.8.2-0.9.0 fail to trace a vmapped gradient that needs psum_invariant (pmean of the
# gradient of a value varying over fewer manual axes, inside shard_map): its batching rule
# passes axis_index_groups to an abstract eval that no longer takes it. Fixed in JAX 0.9.1.
OLD_JAX_PSUM_INVARIANT_UNDER_VMAP = JAX_VERSION < (0, 9, 1)

# `callax train` keeps compiled programs in ~/.cache/callax/jax by default: not the tests (a
# directory of this session instead, inherited by the child processes tests start). The
# pytest-xdist workers inherit the controller's directory (made when it loaded this file) and
# keep it, so that a program one test file's `callax train` compiled is found by another's.
_SESSION_CACHE = "CALLAX_TESTS_CACHE_HOME"
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    if not os.path.isdir(os.environ.get(_SESSION_CACHE, "")):
        import atexit
        import shutil
        import tempfile

        os.environ[_SESSION_CACHE] = tempfile.mkdtemp(prefix="callax-tests-cache-")
        # Removed by the process that made it, at its exit (the controller, after its workers).
        atexit.register(shutil.rmtree, os.environ[_SESSION_CACHE], True)
    os.environ["XDG_CACHE_HOME"] = os.environ[_SESSION_CACHE]

# What a child process (`python -m callax train`, a test's script) needs in its environment
# when its test checks no learning number (signals, exit codes, files, the printed lines, the
# tags): XLA skips its expensive optimization passes (JAX's own flag, read from the
# environment; the PPO program compiles ~4x faster). Part of the persistent compilation
# cache's key, so children with it share programs among themselves only. Never set in the
# test process itself: JAX's in-memory jit cache does not key on it.
FAST_COMPILE = {"JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment with :data:`FAST_COMPILE` and ``extra``, for a child."""
    return {**os.environ, **FAST_COMPILE, **extra}


def callax_train(argv: list[str], *, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    """``python -m callax train *argv`` in a child with :data:`FAST_COMPILE` (``env``:
    that environment instead, ``cwd`` and the rest: ``subprocess.run``'s); it must exit 0
    without a traceback. Returns the finished process (text stdout and stderr)."""
    kwargs.setdefault("env", child_env())
    done = subprocess.run([sys.executable, "-m", "callax", "train", *argv], capture_output=True,
                          text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


def tensorboard_command() -> list[str]:
    """The TensorBoard server of the interpreter running the tests: the ``tensorboard``
    script next to ``sys.executable``, found whether or not the venv is activated. The test
    extra installs it (this module imports it), so a missing script fails the test."""
    script = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    assert os.path.isfile(script), f"no TensorBoard server script next to {sys.executable}"
    return [script]


def sync() -> None:
    """Wait for every host callback, then for the writer thread, then flush files."""
    jax.effects_barrier()
    callax.flush_all()


def read_run(directory: str) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of the event files directly in ``directory``."""
    sync()
    accumulator = EventAccumulator(directory, size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def run_dirs(root: str) -> list[str]:
    """Every directory under ``root`` holding an event file, relative to ``root``, sorted."""
    sync()
    found = []
    for directory, _, files in os.walk(root):
        if any(f.startswith("events.out.tfevents") for f in files):
            found.append(os.path.relpath(directory, root))
    return sorted(found)


def assert_steps_increase(run: dict[str, list[tuple[int, float]]]) -> None:
    for tag, points in run.items():
        steps = [s for s, _ in points]
        assert all(a < b for a, b in zip(steps, steps[1:])), (tag, steps)


@pytest.fixture
def logdir(tmp_path) -> str:
    return str(tmp_path)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for TensorBoard servers and jax.distributed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    """GET `url` and parse its JSON body."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def tensorboard_server(logdir: str):
    """A real TensorBoard (its Rust data server, ``--load_fast=true``, reloading every
    second) on ``logdir``; yields ``(port, process)`` and kills it afterwards. Skips the
    test when TensorBoard is not installed."""
    if importlib.util.find_spec("tensorboard") is None:
        pytest.skip("tensorboard is not installed")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1",
         "--port", str(port), "--load_fast", "true", "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield port, server
    finally:
        server.kill()
        server.wait()


def settled(fetch, server, *, timeout: float = 120):
    """``fetch()`` once two calls in a row give the same non-``None`` result (the server has
    loaded everything); ``fetch`` returns ``None`` or raises ``OSError`` while it is not
    ready. Fails if the server exits or the deadline passes."""
    deadline = time.monotonic() + timeout  # a generous bound on a loaded machine
    previous = None
    while time.monotonic() < deadline:
        try:
            result = fetch()
        except OSError:  # not serving yet, or a tag not loaded yet
            result = None
        if result is not None and result == previous:
            return result
        previous = result
        if server.poll() is not None:
            pytest.fail(f"tensorboard exited: {server.stderr.read()}")
        time.sleep(1.5)
    raise AssertionError(f"the data server did not settle: {previous}")


def data_server_scalars(logdir: str, runs: dict[str, list[str]]) -> dict:
    """``{run: {tag: [(step, value), ...]}}`` of the given runs and tags as TensorBoard's
    data server serves them, once two reloads found the same."""
    with tensorboard_server(logdir) as (port, server):
        base = f"http://127.0.0.1:{port}/data/plugin/scalars"

        def fetch():
            return {run: {tag: [(p[1], p[2]) for p in get_json(
                f"{base}/scalars?{urllib.parse.urlencode({'run': run, 'tag': tag})}")]
                for tag in tags} for run, tags in runs.items()}

        return settled(fetch, server)


def default_sigint() -> None:
    """``preexec_fn`` for child processes that tests signal: SIGINT, SIGTERM and SIGHUP with
    their default actions, as in a terminal. A shell without job control starts background
    commands (``cmd &``) with SIGINT ignored, ``nohup`` ignores SIGHUP, and children inherit
    that; Python (and callax, which leaves ignored signals alone) then installs no handler."""
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
