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

This module holds the state (the stop flag, whether a training runs, where host calls run);
the handlers that act on ``SIGINT`` are in :mod:`._signals`.
"""

from __future__ import annotations

import os
import sys
import threading

__all__ = ["exit_status", "in_host_call", "inside_host_call", "stop_requested",
           "training_ended", "training_started"]

exit_status: int | None = None
"""If set (``callax train``: 130), an interrupt that must end the process from outside the
main thread exits with this status after a one-line message, instead of the signal."""

lock = threading.Lock()
delivered = 0  # SIGINTs received (counted by the watcher, or the handler without one)
handled = 0  # deliveries acted upon
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


def inside_host_call(frame) -> bool:
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
    with lock:
        _training, _stop = True, False


def training_ended() -> None:
    global _training
    with lock:
        _training = False


def stop_requested() -> bool:
    """Whether Ctrl-C asked the running training to stop (read once per iteration)."""
    return _stop


def act(pending: int) -> str:
    """Act on ``pending`` new Ctrl-C deliveries (with :data:`lock` held): ``"stop"`` (the
    stop flag is now set: the first Ctrl-C during a training) or ``"exit"``."""
    global _stop
    if _training and not _stop and pending == 1:
        _stop = True
        print("callax: stopping at the end of this iteration (Ctrl-C again to exit now)",
              file=sys.stderr, flush=True)
        return "stop"
    return "exit"
