"""The ``callax`` command's entry point: Ctrl-C handled from the interpreter's first moments.

``import callax`` imports JAX (seconds). Python's own ``SIGINT`` handler raises
``KeyboardInterrupt`` wherever the main thread is: inside ``import jax`` that leaves
half-initialised modules behind (a long traceback, or a crash at exit), and inside a
garbage-collector callback (JAX registers one) it is printed as "Exception ignored" and lost,
so the command goes on. The command therefore replaces that handler *before* JAX is
imported: ``callax/__init__.py`` imports this module first, and importing it runs
:func:`install_if_command`, which acts only when the process is the ``callax`` command (the
console script, or ``python -m callax``).

Until :func:`hand_over` (JAX is imported, nothing written yet) Ctrl-C ends the process at
once: one line, ``callax: interrupted``, exit status 130. A handler in the main thread runs
only between two bytecodes, so a thread reading Python's *wakeup fd* ends the process too
while the main thread is in C code (loading XLA). :func:`hand_over` then gives Ctrl-C to
callax's interrupt machinery (``callax._writer._signals``): a training stops at its next
iteration, a second Ctrl-C or one outside a training writes what was handed over and exits
with 130 after one line.

Python's own window stays: from its ``SIGINT`` handler's installation (during start-up) to
this one's, a Ctrl-C raises ``KeyboardInterrupt`` in ``site`` or the first imports. So this
module imports only what the interpreter has already loaded at start-up (``os``, ``sys``) and
the C modules ``_signal`` and ``_thread`` (``signal`` imports ``enum``, ~8 ms).
"""

import _signal as signal  # pyright: ignore[reportMissingImports]  # `signal` without `enum`
import _thread
import os
import sys

__all__ = ["EXIT_STATUS", "hand_over", "install", "install_if_command", "main"]

EXIT_STATUS = 130
"""Exit status after Ctrl-C (a shell's: 128 + ``SIGINT``)."""
_LINE = b"callax: interrupted\n"
_COMMANDS = ("callax", "callax.exe", "callax-script.py")

_exiting = _thread.allocate_lock()
_state: dict[str, int] = {}  # the wakeup pipe's ends while the early handler is installed


def _exit_now(*_: object) -> None:
    """Write the one line and end the process (from any thread; the first caller wins, a
    second one waits for the end)."""
    if not _exiting.acquire(False):
        never = _thread.allocate_lock()
        never.acquire()
        never.acquire()  # blocks until the other caller has ended the process
    try:
        os.write(2, _LINE)  # not sys.stderr: its lock may be held by the interrupted thread
    finally:
        os._exit(EXIT_STATUS)


def _watch(read_fd: int) -> None:
    # Every signal Python handles writes its number here; the main thread may be in C code.
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:  # hand_over closed the pipe
            os.close(read_fd)
            return
        if signal.SIGINT in data:
            _exit_now()


def _module_run_by_m() -> str | None:
    """The module of ``python [options] -m <module>`` (from ``sys.orig_argv``), else None."""
    args = iter(list(getattr(sys, "orig_argv", ()))[1:])
    for arg in args:
        if arg == "-m":
            return next(args, None)
        if arg.startswith("-m"):
            return arg[2:]
        if arg in ("-X", "-W", "--check-hash-based-pycs"):
            next(args, None)  # the option's value
        elif not arg.startswith("-") or arg in ("-c", "-"):
            return None
    return None


def is_command() -> bool:
    """Whether this process is the ``callax`` command: its console script, or
    ``python -m callax`` while Python locates ``callax.__main__`` (``sys.argv[0]`` is
    ``"-m"`` until then)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 == "-m":
        return _module_run_by_m() in ("callax", "callax.__main__")
    main = sys.modules.get("__main__")
    if (os.path.basename(argv0) not in _COMMANDS or main is None
            or getattr(main, "__spec__", None) is not None):
        return False
    try:  # a script of this entry point (one installed before it calls callax.cli.main)
        with open(argv0, encoding="utf-8", errors="replace") as script:
            return "callax._entry" in script.read(4096)
    except OSError:
        return False


def install() -> bool:
    """Replace Python's ``SIGINT`` handler by one that ends the process at once (one line,
    :data:`EXIT_STATUS`), and watch the wakeup fd for the times the main thread runs no
    Python code. Only in the main thread, and only over Python's own handler (a user's is
    kept); returns whether it installed."""
    if _state:
        return False
    try:  # (ValueError outside the main thread)
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return False
        signal.signal(signal.SIGINT, _exit_now)
    except (ValueError, OSError):  # pragma: no cover - an embedded interpreter
        return False
    _state["installed"] = 1
    try:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        if signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False) != -1:
            signal.set_wakeup_fd(-1)  # someone else's (not expected this early): keep theirs
            raise OSError("wakeup fd in use")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - platform
        return True  # the handler alone (the main thread runs it between bytecodes)
    _state.update(read=read_fd, write=write_fd)
    _thread.start_new_thread(_watch, (read_fd,))  # a daemon: never joined at exit
    return True


def install_if_command() -> None:
    """:func:`install` if this process is the ``callax`` command (called by
    ``callax/__init__.py`` before it imports JAX)."""
    if is_command():
        install()


def hand_over() -> None:
    """Give Ctrl-C to callax's interrupt machinery (JAX is imported now): the wakeup fd and
    the handler go to ``callax._writer._signals``, with exit status :data:`EXIT_STATUS`.

    A Ctrl-C during the switch still ends the process with one line: before it by the early
    handler, after it by callax's handler, and in between as a ``KeyboardInterrupt`` that
    :func:`main` turns into the same exit."""
    from ._writer import _interrupt, _signals

    _interrupt.exit_status = EXIT_STATUS
    if _state.pop("installed", None) is None:
        _signals.install_signal_handlers()
        return
    if "write" in _state:
        signal.set_wakeup_fd(-1)
        os.close(_state.pop("write"))  # the watcher reads what is left, then ends
        _state.pop("read")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _signals.install_signal_handlers()


def main(argv: "list[str] | None" = None) -> int:
    """The ``callax`` command (``[project.scripts]`` and ``python -m callax``): the early
    handler if not installed yet, :func:`hand_over`, then :func:`callax.cli.main`."""
    install()
    try:
        hand_over()
        from .cli import main as cli_main

        return cli_main(argv)
    except KeyboardInterrupt:  # between the handlers, or raised past cli.main
        sys.stdout.flush()
        _exit_now()
        raise  # pragma: no cover - not reached


install_if_command()  # at import: callax/__init__.py imports this module first
