"""The writer thread's bounded queue: host calls wait when it is full (issue 16, "Bounded
queue"), and nothing handed over is lost or reordered."""

from __future__ import annotations

import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

import callax
from callax import _writer as host
from callax._writer import _event_file, _queue
from conftest import read_run


def test_per_step_writes_wait_for_a_slow_disk_instead_of_growing_the_queue(logdir,
                                                                           monkeypatch):
    monkeypatch.setattr(_queue, "MAX_PENDING_ROWS", 8)
    high = [0]
    submit = _queue.submit

    def watching_submit(job, rows=1):
        submit(job, rows)
        high[0] = max(high[0], _queue._pending_rows)

    monkeypatch.setattr(_queue, "submit", watching_submit)
    write = _event_file.EventFile.write

    def slow_write(self, data):
        time.sleep(0.002)
        write(self, data)

    monkeypatch.setattr(_event_file.EventFile, "write", slow_write)
    writer = callax.JITSummaryWriter(logdir)

    @jax.jit
    def per_step():
        def body(c, i):
            writer.add_scalar("x", c, i)  # one host call per step, faster than the disk
            return c + 1.0, None

        return jax.lax.scan(body, 0.0, jnp.arange(200))[0]

    per_step()
    writer.flush()
    assert 1 <= high[0] <= 8
    assert read_run(logdir)["x"] == [(i, float(i)) for i in range(200)]


def test_a_batch_larger_than_the_bound_is_accepted_alone(logdir, monkeypatch):
    monkeypatch.setattr(_queue, "MAX_PENDING_ROWS", 4)
    handle = host.open_run(logdir)
    steps = np.arange(10)[None]
    host.write(handle, ("a",), np.array([host.NO_SEED]), steps,
               np.arange(10, dtype=np.float32).reshape(1, 10, 1), np.ones((1, 10, 1), bool))
    host.flush(handle)
    assert read_run(logdir)["a"] == [(i, float(i)) for i in range(10)]


def test_a_waiting_host_call_resumes_when_the_writer_drains(monkeypatch):
    monkeypatch.setattr(_queue, "MAX_PENDING_ROWS", 2)
    release = threading.Event()
    done = []
    _queue.submit(release.wait, rows=2)  # fills the queue until released
    waiter = threading.Thread(target=lambda: (_queue.submit(lambda: done.append(1)),
                                              done.append(0)))
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive() and done == []  # backpressure: still waiting for room
    release.set()
    waiter.join(10)
    _queue.wait_idle()
    assert sorted(done) == [0, 1]
