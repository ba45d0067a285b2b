"""Runs the Python blocks of README.md and docs/ for tests/test_docs.py, each as a complete
program in a fresh process, like ``python -c <block>``, but forked from this process after it
imported the third-party packages that ``import callax`` loads (JAX, Equinox, tensorboardX):
a block then skips ~3 s of imports (of ~4 s) and starts where callax's own import begins.

callax's import starts JAX's CPU backend (its threads do not survive a fork), so this process
never imports callax and refuses to fork once a JAX backend exists.

Protocol: one JSON request per line on stdin, ``{"source", "cwd", "stdout", "stderr"}`` (the
last two: files that receive the block's output); one line back per request on stdout, the
block's exit status as ``python -c`` would return it (negative: killed by that signal).
"""

from __future__ import annotations

import json
import os
import sys
import types

# What `import callax` loads first and most of its import time; all of it without a backend.
import equinox  # noqa: F401
import jax
import jax.numpy  # noqa: F401
import tensorboardX  # noqa: F401
from jax._src import xla_bridge


def run_block(source: str, cwd: str, stdout: str, stderr: str) -> None:
    """In the forked child: become ``python -c source`` run in `cwd`. Returns only by
    raising (SystemExit at the end, or the block's own exception), so the interpreter exits
    as after ``python -c``: traceback and status 1 on an error, atexit handlers, threads."""
    os.chdir(cwd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for path, fd in ((stdout, 1), (stderr, 2)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    os.close(null)
    sys.argv = ["-c"]
    sys.path[0] = ""  # what `python -c` puts first (this script's directory otherwise)
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = main
    exec(compile(source, "<string>", "exec"), main.__dict__)
    raise SystemExit(0)


def serve() -> None:
    for line in sys.stdin:
        if xla_bridge.backends_are_initialized():
            raise RuntimeError("a JAX backend started in the block runner: it cannot fork")
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            run_block(**request)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)


if __name__ == "__main__":
    assert jax.config.jax_platforms  # set by the test: no accelerator probing in blocks
    serve()
