"""Exit paths that do not run ``atexit``: ``SIGTERM``/``SIGHUP`` (written before the process
ends, bounded), forked children (a clean writer state of their own).

Exit paths: at interpreter exit (normal end, an uncaught exception, ``KeyboardInterrupt``)
everything handed over is written by an ``atexit`` hook (see :mod:`._registry`). ``SIGTERM``
and ``SIGHUP`` end a Python process without running ``atexit``: when the first run opens in
the main thread, callax installs a handler for each of them that writes everything handed
over, then calls the handler that was there before (a user's own) or, if that was the
default, restores the default and re-sends the signal, so the process still ends with the
signal's status. Ignored signals and handlers installed outside Python are left alone.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import sys
import threading
import time

from . import _interrupt, _queue

__all__ = ["EXIT_FLUSH_TIMEOUT", "EXIT_SIGNALS", "MAIN_THREAD_GRACE", "flush_before_exit",
           "install_signal_handlers", "in_forked_child"]

EXIT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP")
                     if hasattr(signal, name))
"""The signals after which callax writes everything handed over before the process ends."""
EXIT_FLUSH_TIMEOUT = 10.0
"""Seconds a signal handler waits at most for the writer thread before the process ends."""
MAIN_THREAD_GRACE = 0.5
"""Seconds the signal watcher gives the main thread to end the process itself."""

_signals_installed = False
_previous_handlers: dict[int, object] = {}


def install_signal_handlers() -> None:
    """Install :func:`_on_exit_signal` for every signal of :data:`EXIT_SIGNALS` whose handler
    is Python's default or a Python function (kept, and called after the flush). Only the
    main thread may install handlers: elsewhere this does nothing (and is tried again at the
    next run opened in the main thread)."""
    global _signals_installed
    if _signals_installed or threading.current_thread() is not threading.main_thread():
        return
    _signals_installed = True
    try:  # Ctrl-C: only where Python's own handler (raise KeyboardInterrupt) is in place
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            _previous_handlers[signal.SIGINT] = signal.default_int_handler
            signal.signal(signal.SIGINT, on_sigint)
    except (ValueError, OSError):  # pragma: no cover - an embedded interpreter
        _previous_handlers.pop(signal.SIGINT, None)
    for signum in EXIT_SIGNALS:
        try:
            previous = signal.getsignal(signum)
            if previous is signal.SIG_IGN or previous is None:
                continue  # ignored on purpose, or a handler installed outside Python
            _previous_handlers[signum] = previous
            signal.signal(signum, _on_exit_signal)
        except (ValueError, OSError):  # pragma: no cover - an embedded interpreter
            _previous_handlers.pop(signum, None)
    if _previous_handlers:
        _start_signal_watcher()


def _start_signal_watcher() -> None:
    """Also act on the signals while the main thread runs no Python code.

    Python runs a signal handler in the main thread, between two bytecodes: a main thread
    waiting for a long jitted computation (a whole training run in one ``while_loop``)
    would run it only when the computation ends. Python also writes the number of every
    handled signal to its *wakeup fd*; a watcher thread reading it writes everything handed
    over at once and, if the signal's action is the default one, ends the process with
    that signal when the main thread has not done so within :data:`MAIN_THREAD_GRACE`.
    Used only if no one else (``asyncio``) has set the wakeup fd; if someone replaces it
    later, the handler in the main thread still does the work.
    """
    try:
        read_end, write_end = socket.socketpair()
        write_end.setblocking(False)
        previous = signal.set_wakeup_fd(write_end.fileno(), warn_on_full_buffer=False)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - platform
        return
    if previous != -1:  # someone else's: leave it to them
        signal.set_wakeup_fd(previous)
        read_end.close()
        write_end.close()
        return
    _watcher_sockets.extend([read_end, write_end])  # kept open for the process's life
    _interrupt.watcher_active = True
    threading.Thread(target=_watch_signals, args=(read_end,), name="callax-signals",
                     daemon=True).start()


_watcher_sockets: list[socket.socket] = []
_in_forked_child = False


def in_forked_child() -> bool:
    """Whether this process is a fork of the one that imported callax."""
    return _in_forked_child


def _after_fork_in_child() -> None:
    # A forked child (multiprocessing) shares the parent's wakeup socket: a signal to the
    # child must not reach the parent's watcher, so the child's end now writes to
    # /dev/null, and the child (no watcher thread) counts its Ctrl-C in its handler. Its
    # writer state starts empty (see _queue, _registry): its handlers write only its own.
    global _in_forked_child
    _in_forked_child = True
    _interrupt.watcher_active = False
    if len(_watcher_sockets) == 2:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, _watcher_sockets[1].fileno())
        finally:
            os.close(devnull)


@atexit.register
def _stop_signal_watcher() -> None:
    # At exit the main thread runs Python code (the exit hook writing the runs), so the
    # handler there acts on a signal; the watcher's socket is closed cleanly.
    if len(_watcher_sockets) == 2 and not _in_forked_child:
        try:
            if threading.current_thread() is threading.main_thread():
                signal.set_wakeup_fd(-1)
                for sock in _watcher_sockets:
                    sock.close()
                _watcher_sockets.clear()
        except (ValueError, OSError):  # pragma: no cover
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _watch_signals(read_end: socket.socket) -> None:
    while True:
        try:
            data = read_end.recv(64)
        except OSError:  # pragma: no cover - closed at shutdown
            return
        if not data:  # pragma: no cover
            return
        for signum in data:
            if signum == signal.SIGINT:
                if signal.getsignal(signum) is on_sigint:
                    _on_watcher_sigint()
                continue
            # Only while callax's handler is the signal's handler (a user may replace it).
            if signum in _previous_handlers and signal.getsignal(signum) is _on_exit_signal:
                flush_before_exit(EXIT_FLUSH_TIMEOUT)
                if _previous_handlers[signum] is signal.SIG_DFL:
                    # The main thread ends the process as soon as it runs Python code again
                    # (the flush is done); if it is stuck in a computation, end it here.
                    time.sleep(MAIN_THREAD_GRACE)
                    die(signum)


def previous_handler(signum: int) -> object:
    """The handler callax replaced for ``signum`` (``SIG_DFL`` if none)."""
    return _previous_handlers.get(signum, signal.SIG_DFL)


def die(signum: int) -> None:
    """End the process with ``signum``'s default action, from any thread (``signal.signal``
    works only in the main thread: the C library's ``signal`` restores the default)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.signal.restype = ctypes.c_void_p
        libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.signal(signum, None)  # SIG_DFL
        os.kill(os.getpid(), signum)
    finally:
        os._exit(128 + signum)  # only if the signal did not end the process


def flush_before_exit(timeout: float) -> bool:
    """Write everything handed over; ``False`` if that took longer than ``timeout``.

    Every batch is flushed to the operating system as soon as it is written, so what is
    left is to wait for the writer thread. That waiting runs in a helper thread: a signal
    handler runs in the main thread between two bytecodes, possibly while the main thread
    itself holds the writer's lock (for microseconds; the timeout bounds the rare case).
    """
    done = threading.Event()

    def work() -> None:
        try:
            _queue.wait_idle()
        finally:
            done.set()

    threading.Thread(target=work, name="callax-exit-flush", daemon=True).start()
    finished = done.wait(timeout)
    if not finished:
        print(f"callax: the event files were not all written within {timeout:g} s at "
              "exit; points still queued may be lost", file=sys.stderr)
    return finished


def _on_exit_signal(signum: int, frame) -> None:
    # (In a forked child: the child's own queue, which starts empty at the fork.)
    flush_before_exit(EXIT_FLUSH_TIMEOUT)
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    # The default action (end the process), with the signal's own exit status.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)



# --------------------------------------------------------------------------------------------
# Ctrl-C (SIGINT): see callax._writer._interrupt for what it does. Deliveries are counted once
# each: by the watcher thread (which reads every signal from the wakeup fd), or by the
# main-thread handler when no watcher runs. The watcher leaves each delivery to the main
# thread for MAIN_THREAD_GRACE seconds and acts itself only if the main thread did not.


def _exit_from_any_thread() -> None:
    flush_before_exit(EXIT_FLUSH_TIMEOUT)
    if _interrupt.exit_status is not None:
        print("callax: interrupted", file=sys.stderr, flush=True)
        os._exit(_interrupt.exit_status)
    die(signal.SIGINT)


def on_sigint(signum: int, frame) -> None:
    """callax's ``SIGINT`` handler (main thread)."""
    if _interrupt.watcher_active:
        # Give the watcher a moment to count this delivery (it reads the wakeup fd).
        deadline = time.monotonic() + 0.1
        while _interrupt.delivered <= _interrupt.handled and time.monotonic() < deadline:
            time.sleep(0.002)
    with _interrupt.lock:
        if not _interrupt.watcher_active:
            _interrupt.delivered += 1
        pending = _interrupt.delivered - _interrupt.handled
        if pending <= 0:
            return  # the watcher acted on it already
        _interrupt.handled = _interrupt.delivered
        action = _interrupt.act(pending)
    if action == "stop":
        return
    if (_interrupt.exit_status is not None or _interrupt.inside_host_call(frame)
            or _interrupt.inside_unraisable(frame)):
        # A KeyboardInterrupt raised here would be lost; the command (exit_status set) exits
        # anyway, and one raised in a weakref callback or a finally block could be too.
        _exit_from_any_thread()
    flush_before_exit(EXIT_FLUSH_TIMEOUT)
    previous = previous_handler(signal.SIGINT)
    if callable(previous) and previous is not on_sigint:
        previous(signum, frame)  # Python's default: raise KeyboardInterrupt
        return
    raise KeyboardInterrupt


def _on_watcher_sigint() -> None:
    """The watcher read a ``SIGINT``: leave it to the main thread for a moment, then act if
    the main thread did not (it runs no Python code: compiling, or in a jitted call)."""
    with _interrupt.lock:
        _interrupt.delivered += 1
        mine = _interrupt.delivered
    time.sleep(MAIN_THREAD_GRACE)
    with _interrupt.lock:
        if _interrupt.handled >= mine:
            return
        pending = _interrupt.delivered - _interrupt.handled
        _interrupt.handled = _interrupt.delivered
        action = _interrupt.act(pending)
    if action == "exit":
        _exit_from_any_thread()
