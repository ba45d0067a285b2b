"""Exit paths, each in a real child process (tests/reliability_child.py): points read back
with TensorBoard's EventAccumulator against the points the child says it handed to the host.

The children start together (module fixture) and run concurrently; each test then stops its
own child the way its exit path says and counts what reached the event files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import default_sigint, read_run

HERE = os.path.dirname(__file__)
CHILD = os.path.join(HERE, "reliability_child.py")
ROWS, END, RAISE_AT, DURABLE, BURST = 4, 22, 10, 8, 40  # as in reliability_child.py

MODES = ("end", "exception", "sigint", "sigterm", "sighup", "user_handler", "sigkill",
         "stuck", "fork")


def _start(mode: str, log_dir: str) -> subprocess.Popen:
    # Every child writes to a slow disk: at each exit, batches wait in the writer queue.
    child_mode = "slow_" + {"end": "end", "exception": "exception",
                            "user_handler": "user_handler"}.get(mode, "loop")
    if mode in ("stuck", "fork"):
        child_mode = mode
    # No speed is measured in the children: XLA skips its expensive passes.
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    # Output goes to files: everything the child printed before it died stays readable.
    with open(log_dir + ".out", "w") as out, open(log_dir + ".err", "w") as err:
        return subprocess.Popen([sys.executable, CHILD, child_mode, log_dir],
                                env=env, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                text=True, preexec_fn=default_sigint)


@pytest.fixture(scope="module")
def children(tmp_path_factory):
    root = tmp_path_factory.mktemp("exit_paths")
    procs = {mode: (_start(mode, str(root / mode)), str(root / mode)) for mode in MODES}
    yield procs
    for proc, _ in procs.values():
        proc.stdin.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _output(log_dir: str) -> tuple[list[str], str]:
    with open(log_dir + ".out") as out, open(log_dir + ".err") as err:
        return out.read().splitlines(), err.read()


def _wait_for(proc: subprocess.Popen, log_dir: str, prefix: str, count: int) -> None:
    """Wait until the child printed ``<prefix> <n>`` with ``n >= count``."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lines, err = _output(log_dir)
        if any(line.startswith(prefix) and int(line.split()[1]) >= count for line in lines):
            return
        if proc.poll() is not None:
            raise AssertionError(f"child ended before '{prefix} {count}': {lines}\n"
                                 f"{err[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no '{prefix} {count}' from the child in 120 s")


def _burst(proc: subprocess.Popen, log_dir: str) -> None:
    """Let a waiting child write its rows; return once all are handed over (most of them
    still in the writer queue: the child's disk is slow)."""
    proc.stdin.write("go\n")
    proc.stdin.flush()
    _wait_for(proc, log_dir, "handed", BURST)


def _finish(proc: subprocess.Popen, log_dir: str, timeout: float = 60
            ) -> tuple[list[str], str]:
    """Wait for the child to end. After a signal the 60 s default is what "at once" allows
    (a stuck child would wait SAFETY_SECONDS, 120 s); a child that runs to its own end gets
    `timeout`: nine children start together, and on a loaded machine one takes over 60 s."""
    proc.wait(timeout=timeout)
    return _output(log_dir)


def _last(lines: list[str], prefix: str) -> int:
    return max(int(line.split()[1]) for line in lines if line.startswith(prefix))


def _assert_rows(log_dir: str, lowest: int, highest: int) -> int:
    """The run holds rows 0..P-1 of both tags, exact values, ``lowest <= P <= highest``, in
    each writer's output (event files, read by TensorBoard; JSON lines); returns the event
    files' P."""
    from callax.writers import read_jsonl

    counts = []
    for run in (read_run(log_dir), read_jsonl(log_dir)):
        n = len(run.get("a", []))
        assert lowest <= n <= highest, (n, lowest, highest)
        assert run["a"] == [(i, float(i)) for i in range(n)]
        assert run["b"] == [(i, -float(i)) for i in range(n)]
        counts.append(n)
    return counts[0]


def test_normal_end_writes_everything(children):
    proc, log_dir = children["end"]
    out, err = _finish(proc, log_dir, timeout=300)
    assert proc.returncode == 0, err[-3000:]
    # The last END % ROWS rows were handed over just before exiting, without waiting.
    _assert_rows(log_dir, END, END)


def test_exception_in_loop_keeps_everything_handed_over(children):
    proc, log_dir = children["exception"]
    out, err = _finish(proc, log_dir, timeout=300)
    assert proc.returncode == 1 and "an error in the training loop" in err
    handed = RAISE_AT // ROWS * ROWS
    # Exactly the rows handed over: the RAISE_AT % ROWS rows still on device are lost.
    _assert_rows(log_dir, handed, handed)


@pytest.mark.parametrize("mode, signum", [("sigint", signal.SIGINT),
                                          ("sigterm", signal.SIGTERM),
                                          ("sighup", signal.SIGHUP)])
def test_signal_keeps_everything_handed_over(children, mode, signum):
    proc, log_dir = children[mode]
    _burst(proc, log_dir)
    proc.send_signal(signum)
    lines, err = _finish(proc, log_dir)
    # The process ends with the signal's own status (KeyboardInterrupt re-raises SIGINT;
    # callax's SIGTERM/SIGHUP handler re-sends the signal with the default action).
    assert proc.returncode == -signum, (proc.returncode, err[-3000:])
    # Every row handed over is on disk, the batches waiting in the queue included.
    _assert_rows(log_dir, BURST, BURST)


def test_sigterm_flushes_before_the_users_handler(children):
    proc, log_dir = children["user_handler"]
    _burst(proc, log_dir)
    proc.send_signal(signal.SIGTERM)
    lines, err = _finish(proc, log_dir)
    assert proc.returncode == 7, err[-3000:]  # the user's handler decided how to exit
    (on_disk,) = [int(line.split()[2]) for line in lines if line.startswith("user handler")]
    # When the user's handler ran, callax had already written every row (two points each).
    assert on_disk == 2 * BURST, lines
    _assert_rows(log_dir, BURST, BURST)


def test_sigkill_loses_at_most_the_device_rows_and_the_queue(children):
    proc, log_dir = children["sigkill"]
    _burst(proc, log_dir)
    proc.kill()
    lines, _ = _finish(proc, log_dir)
    assert proc.returncode == -signal.SIGKILL
    # Nothing flushed is lost; what is lost of the rows handed over is the writer queue at
    # the kill (a slow disk here: most of the burst). The test prints it (pytest -s).
    n = _assert_rows(log_dir, DURABLE, BURST)
    print(f"SIGKILL: rows handed over {BURST}, on disk {n}, lost from the writer queue "
          f"{BURST - n}")


def test_sigterm_while_the_main_thread_runs_no_python(children):
    """The main thread waits in C code for minutes (as in one long jitted computation):
    the signal is acted on at once anyway (callax's watcher thread), everything handed over
    before it is on disk, and the process ends with SIGTERM's status."""
    proc, log_dir = children["stuck"]
    _wait_for(proc, log_dir, "handed", 10 * ROWS)
    before = _last(_output(log_dir)[0], "handed")
    proc.send_signal(signal.SIGTERM)
    lines, err = _finish(proc, log_dir)  # the child would wait for SAFETY_SECONDS (120 s)
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, err[-3000:])
    _assert_rows(log_dir, before, _last(lines, "handed"))


def test_sigterm_to_a_forked_child_ends_only_the_child(children):
    proc, log_dir = children["fork"]
    lines, err = _finish(proc, log_dir, timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert f"forked child ended by signal {int(signal.SIGTERM)}" in lines
    assert "exiting" in lines  # the parent lived on
    _assert_rows(log_dir, ROWS, ROWS)
