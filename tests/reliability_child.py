"""A child process for the exit-path tests: ``python reliability_child.py MODE LOG_DIR``.

It writes rows ``i`` (tags ``a = i`` and ``b = -i`` at step ``i``) from a jitted step through
a device-side buffer of ``ROWS`` rows, so one host transfer every ``ROWS`` steps. After each
transfer it prints ``handed <rows>`` (every row up to there has reached the host); after an
eager ``flush()`` it prints ``durable <rows>`` (every row up to there is on disk). Modes:

- ``end``: ``END`` rows, the last ones sent without waiting, then a normal exit (no close).
- ``exception``: an exception after ``RAISE_AT`` rows (the rows still on device are lost).
- ``loop``: once a line arrives on stdin: ``DURABLE`` rows, an eager flush, rows up to
  ``BURST``, then it waits for a signal (the tests send SIGINT, SIGTERM, SIGHUP, SIGKILL).
- ``user_handler``: like ``loop``, with the user's own SIGTERM handler installed first; it
  prints how many points are on disk when it runs, then exits with status 7.
- ``slow_<mode>``: the same with a slow disk (every batch takes ``SLOW_WRITE`` seconds to
  write), so that batches wait in the writer queue when the process ends.
- ``stuck``: rows written from another thread while the main thread waits in C code
  (``SIGTERM`` blocked there, so Python cannot run a handler until the wait ends).
- ``perstep <n>``: once a line arrives on stdin, ``n`` steps of a jitted ``scan`` each
  writing one row (no device buffer), then ``handed <n>`` and a wait for a signal.
- ``fork``: forks, SIGTERMs the forked child, and prints how the child ended.
- ``shared <tag>``: ``END`` rows of tag ``<tag>`` into LOG_DIR, written by several processes
  at once (tests/test_names.py).
"""

from __future__ import annotations

import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp

import callax
from callax._writer._read import read_scalars

ROWS = 4
END = 22  # not a multiple of ROWS: the last rows are still on device at the end
RAISE_AT = 10
DURABLE, BURST = 2 * ROWS, 10 * ROWS
SAFETY_SECONDS = 120.0

SLOW_WRITE = 0.1

mode, log_dir = sys.argv[1], sys.argv[2]
if mode.startswith("slow_"):
    from callax._writer._event_file import EventFile

    mode = mode[len("slow_"):]
    write = EventFile.write

    def slow_write(self, data):
        time.sleep(SLOW_WRITE)
        write(self, data)

    EventFile.write = slow_write
tags = ("a", "b") if mode != "shared" else (sys.argv[3], sys.argv[3] + "_neg")

if mode == "user_handler":

    def on_term(signum, frame):
        points = sum(len(p) for p in read_scalars(log_dir).values())
        print(f"user handler {points}", flush=True)
        sys.exit(7)

    signal.signal(signal.SIGTERM, on_term)

# Every exit path must hold for every writer: TensorBoard (slowed down above) and JSON lines.
writer = callax.JITSummaryWriter(log_dir, writers=("tensorboard", "jsonl"))
buffer = callax.ScalarBuffer.empty(ROWS, 2)


@jax.jit
def step(writer, buffer, i, when):
    x = i.astype(jnp.float32)
    return buffer.append(writer, tags, i, jnp.stack([x, -x]), jnp.ones(2, jnp.bool_), when)


@jax.jit
def send(writer, buffer):
    return buffer.flush(writer, sync=False)


def write_rows(buffer, start, stop):
    for i in range(start, stop):
        buffer = step(writer, buffer, jnp.int32(i), True)
        if (i + 1) % ROWS == 0:
            jax.block_until_ready(buffer)
            jax.effects_barrier()
            print(f"handed {i + 1}", flush=True)
    return buffer


if mode in ("end", "shared"):
    buffer = write_rows(buffer, 0, END)
    # The rows still on device are handed over without waiting, and the process exits at
    # once: the interpreter's exit must write them.
    buffer = send(writer, buffer)
    jax.effects_barrier()
elif mode == "exception":
    buffer = write_rows(buffer, 0, RAISE_AT)
    raise RuntimeError("an error in the training loop")
elif mode == "fork":
    # A forked child (multiprocessing) inherits callax's signal handling: a SIGTERM to the
    # child ends the child only.
    import os

    buffer = write_rows(buffer, 0, ROWS)
    pid = os.fork()
    if pid == 0:
        time.sleep(SAFETY_SECONDS)
        os._exit(3)
    time.sleep(0.5)
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    time.sleep(1.0)  # the parent's watcher would have acted on a byte from the child by now
    print(f"forked child ended by signal {os.WTERMSIG(status)}", flush=True)
elif mode == "perstep":
    # Per-step writes from one jitted scan (one host call per step): when the call returns,
    # every row has been handed over and at most the queue's bound waits to be written.
    n = int(sys.argv[3])

    @jax.jit
    def per_step():
        def body(c, i):
            writer.add_dict("", {"a": c, "b": -c}, global_step=i)
            return c + 1.0, None

        return jax.lax.scan(body, 0.0, jnp.arange(n))[0]

    jax.block_until_ready(per_step.lower().compile())
    sys.stdin.readline()
    jax.block_until_ready(per_step())
    print(f"handed {n}", flush=True)
    time.sleep(SAFETY_SECONDS)
    sys.exit(3)
elif mode == "stuck":
    # Rows come from another thread while the main thread runs no Python code for a long
    # time, as when it waits for a long jitted computation (a whole training run in one
    # while_loop): a signal blocked here is delivered to another thread, and Python would
    # run its handler only when the main thread's wait ends.

    def feed():
        for i in range(0, 10**6, ROWS):
            steps = jnp.arange(i, i + ROWS, dtype=jnp.int32)
            x = steps.astype(jnp.float32)
            writer.write_rows(tags, steps, jnp.stack([x, -x], axis=1))
            print(f"handed {i + ROWS}", flush=True)
            time.sleep(0.02)

    threading.Thread(target=feed, daemon=True).start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    time.sleep(SAFETY_SECONDS)
    sys.exit(3)
else:
    # Compile first (a step that writes nothing), then wait for the test's "go": the burst
    # of rows below is handed over faster than a slow disk writes it, so the signal the
    # test sends right after "handed" finds batches waiting in the writer queue.
    buffer = step(writer, buffer, jnp.int32(0), False)
    jax.block_until_ready(buffer)
    sys.stdin.readline()
    buffer = write_rows(buffer, 0, DURABLE)
    writer.flush()
    print(f"durable {DURABLE}", flush=True)
    buffer = write_rows(buffer, DURABLE, BURST)
    start = time.monotonic()
    while time.monotonic() - start < SAFETY_SECONDS:  # a loop nobody stops ends by itself
        time.sleep(0.05)
    sys.exit(3)
print("exiting", flush=True)
