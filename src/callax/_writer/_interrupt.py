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
  inside a host call or a garbage-collector callback, or runs no Python code at all:
  compiling, or waiting for a jitted computation), the process ends with ``SIGINT``'s
  status (or :data:`exit_status`, which ``callax train`` sets to 130, after a one-line
  message). A program still running when the main thread ends with ``KeyboardInterrupt``
  fails at its next host call (JAX would otherwise wait for it at exit).

This module holds the state (the stop flag, whether a training runs, where host calls run);
the handlers that act on ``SIGINT`` are in :mod:`._signals`.
"""

from __future__ import annotations

import gc
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
                   os.path.join("jax", "_src", "debugging.py"),
                   os.path.join("callax", "_host", "_ffi.py"))


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


def inside_unraisable(frame) -> bool:
    """Whether an exception raised at ``frame`` would be printed and dropped instead of
    propagating: a garbage-collector callback (JAX registers one, and a ``KeyboardInterrupt``
    raised in it was measured to vanish during compilation: the program went on) or a
    ``__del__`` method."""
    codes = {getattr(fn, "__code__", None) for fn in gc.callbacks}
    while frame is not None:
        if frame.f_code in codes or frame.f_code.co_name == "__del__":
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


_refusing = False  # the process exits after Ctrl-C: host calls of running programs fail


def refuse_host_calls_if_interrupted() -> bool:
    """At interpreter exit (before ``atexit``), if the main thread ended with an uncaught
    ``KeyboardInterrupt``: make every later host call fail, so that a computation still
    running ends at its next host call. JAX (and Equinox) wait at exit for every running
    program with ordered effects, which callax's host calls have: measured, a jitted loop
    of 2M steps interrupted by Ctrl-C kept the process alive until the guard killed it."""
    global _refusing
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    if isinstance(last, KeyboardInterrupt):
        _refusing = True
    return _refusing


def check_not_refused() -> None:
    """Raise if host calls are refused (see :func:`refuse_host_calls_if_interrupted`)."""
    if _refusing:
        raise RuntimeError("callax: the process is exiting after Ctrl-C; the computation's "
                           "host call was refused")


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
