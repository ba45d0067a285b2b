"""Where ``callax train`` keeps compiled programs: JAX's persistent compilation cache."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["cache_dir", "compilation_cache"]


def cache_dir(args: argparse.Namespace) -> str | None:
    """Where ``callax train`` keeps compiled programs (``None``: nowhere)."""
    if getattr(args, "no_compilation_cache", False):
        return None
    chosen = getattr(args, "compilation_cache", None)
    if chosen:
        return chosen
    from_env = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if from_env:
        return from_env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "callax", "jax")


@contextlib.contextmanager
def compilation_cache(directory: str | None) -> Iterator[list[int]]:
    """JAX's persistent compilation cache in ``directory`` while the block compiles (a
    directory that cannot be made: no cache, one line on stderr); the previous settings
    after it. Yields a list that counts the programs loaded from the cache."""
    import jax

    hits: list[int] = []
    if directory is not None:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as error:
            print(f"callax: no compilation cache: {directory!r}: {error.strerror or error}",
                  file=sys.stderr)
            directory = None
    if directory is None:
        yield hits
        return
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    before = {name: getattr(jax.config, name) for name in names}

    def listen(event: str, **kwargs: Any) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            hits.append(1)

    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    # JAX decides once per process whether it uses the cache (at the first compilation, which
    # may have come before): decide again now, and again after the block.
    compilation_cache.reset_cache()
    jax.monitoring.register_event_listener(listen)
    try:
        yield hits
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()
        try:
            from jax._src import monitoring

            monitoring.unregister_event_listener(listen)
        except (ImportError, AttributeError, AssertionError):  # pragma: no cover
            pass
