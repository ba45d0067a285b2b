"""Ctrl-C (``SIGINT``): stop a training at its next iteration, or exit — never swallowed.

Python runs a signal handler only in the main thread, between two bytecodes. A main thread
waiting for a whole-jitted training (one ``while_loop``) runs none until the training ends,
and a handler that runs inside a host callback raises its ``KeyboardInterrupt`` into XLA
(where it becomes a ``JaxRuntimeError``, or is lost). So callax counts Ctrl-C itself:

- **First Ctrl-C while a training is running** (a trainer's loop, or a loop with
  [`callax.StopOnInterrupt`][]): the *stop flag* is set; the training reads it once per
  iteration (a host read returning to the device), ends at the iteration boundary, runs
  ``on_training_end`` and returns normally, saying it was interrupted.
- **Otherwise, and at the second Ctrl-C:** everything handed over is written (bounded by
  :data:`~._signals.EXIT_FLUSH_TIMEOUT`), then ``KeyboardInterrupt`` is raised in the main
  thread where that is safe (catchable, as usual); where it is not (the main thread is
  inside a host call, or runs no Python code at all: compiling, or waiting for a jitted
  computation), the process ends with ``SIGINT``'s status (or :data:`exit_status`, which
  ``callax train`` sets to 130, after a one-line message).

Deliveries are counted once each: by the signal watcher thread (which reads every signal from
Python's wakeup fd, see :mod:`._signals`), or by the main-thread handler when no watcher
runs. The watcher leaves each delivery to the main thread for
:data:`~._signals.MAIN_THREAD_GRACE` seconds and acts itself only if the main thread did not.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

__all__ = ["exit_status", "in_host_call", "on_sigint", "stop_requested", "training_ended",
           "training_started"]

exit_status: int | None = None
"""If set (``callax train``: 130), an interrupt that must end the process from outside the
main thread exits with this status after a one-line message, instead of the signal."""

_lock = threading.Lock()
_delivered = 0  # SIGINTs received (counted by the watcher, or the handler without one)
_handled = 0  # deliveries acted upon
_training = False  # a training that reads the stop flag is running
_stop = False
_host_call = threading.local()
watcher_active = False


class in_host_call:
    """Context manager marking the current thread as running a callax host call: a
    ``KeyboardInterrupt`` must not be raised there (XLA would swallow or wrap it)."""

    def __enter__(self) -> None:
        _host_call.depth = getattr(_host_call, "depth", 0) + 1

    def __exit__(self, *exc) -> None:
        _host_call.depth -= 1


# Where JAX runs a host callback's Python code (the trampoline around callax's function).
_CALLBACK_FILES = (os.path.join("jax", "_src", "callback.py"),
                   os.path.join("jax", "_src", "debugging.py"))


def _inside_host_call(frame) -> bool:
    """Whether the main thread is running a host callback (XLA can run one in the thread
    that called the jitted function): the marker, or JAX's trampoline on the stack."""
    if getattr(_host_call, "depth", 0) > 0:
        return True
    while frame is not None:
        if frame.f_code.co_filename.endswith(_CALLBACK_FILES):
            return True
        frame = frame.f_back
    return False


def training_started() -> None:
    """A training that reads the stop flag began: the first Ctrl-C will stop it."""
    global _training, _stop
    with _lock:
        _training, _stop = True, False


def training_ended() -> None:
    global _training
    with _lock:
        _training = False


def stop_requested() -> bool:
    """Whether Ctrl-C asked the running training to stop (read once per iteration)."""
    return _stop


def _act(pending: int) -> str:
    """Act on ``pending`` new deliveries (called with ``_lock`` held): ``"stop"`` (the stop
    flag is set) or ``"exit"``."""
    global _stop
    if _training and not _stop and pending == 1:
        _stop = True
        print("callax: stopping at the end of this iteration (Ctrl-C again to exit now)",
              file=sys.stderr, flush=True)
        return "stop"
    return "exit"


def _exit_from_any_thread() -> None:
    from . import _signals

    _signals.flush_before_exit(_signals.EXIT_FLUSH_TIMEOUT)
    if exit_status is not None:
        print("callax: interrupted", file=sys.stderr, flush=True)
        os._exit(exit_status)
    _signals.die(signal.SIGINT)


def on_sigint(signum: int, frame) -> None:
    """callax's ``SIGINT`` handler (main thread)."""
    global _delivered, _handled
    if watcher_active:
        # Give the watcher a moment to count this delivery (it reads the wakeup fd).
        deadline = time.monotonic() + 0.1
        while _delivered <= _handled and time.monotonic() < deadline:
            time.sleep(0.002)
    with _lock:
        if not watcher_active:
            _delivered += 1
        pending = _delivered - _handled
        if pending <= 0:
            return  # the watcher acted on it already
        _handled = _delivered
        action = _act(pending)
    if action == "stop":
        return
    if _inside_host_call(frame):
        _exit_from_any_thread()
    from . import _signals

    _signals.flush_before_exit(_signals.EXIT_FLUSH_TIMEOUT)
    previous = _signals.previous_handler(signal.SIGINT)
    if callable(previous) and previous is not on_sigint:
        previous(signum, frame)  # Python's default: raise KeyboardInterrupt
        return
    raise KeyboardInterrupt


def on_watcher_sigint() -> None:
    """The watcher thread read a ``SIGINT``: leave it to the main thread for a moment, then
    act if the main thread did not (it runs no Python code)."""
    global _delivered, _handled
    from . import _signals

    with _lock:
        _delivered += 1
        mine = _delivered
    time.sleep(_signals.MAIN_THREAD_GRACE)
    with _lock:
        if _handled >= mine:
            return
        pending = _delivered - _handled
        _handled = _delivered
        action = _act(pending)
    if action == "exit":
        _exit_from_any_thread()
