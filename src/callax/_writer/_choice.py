"""Which writers a run writes to: names (``"tensorboard"``, ``"jsonl"``, ``"wandb"``, or
registered by :func:`register_writer`) and factories, resolved into factories."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._interface import DEFAULT_WRITERS, AbstractWriter, Destination

__all__ = ["register_writer", "resolve_writers", "writer_names"]


_factories: dict[str, Callable[[], Callable[[Destination], AbstractWriter]]] = {}


def register_writer(name: str, load: Callable[[], Callable[[Destination], AbstractWriter]]
                    ) -> None:
    """Make ``name`` usable in ``writers=``; ``load()`` returns the factory (called the first
    time a run uses the name, so that optional packages are imported only then)."""
    _factories[name] = load


def writer_names() -> tuple[str, ...]:
    return tuple(_factories)


def resolve_writers(writers: Any) -> tuple[Callable[[Destination], AbstractWriter], ...]:
    """The factories of ``writers`` (a :data:`WriterSpec` or a sequence of them; ``None``:
    TensorBoard alone), checked now: an unknown
    name, a writer instance (a writer serves one seed of one run: give its class or a
    factory), an empty or repeated list raise here, when the run is configured."""
    if writers is None:
        writers = DEFAULT_WRITERS
    if isinstance(writers, str) or callable(writers):
        writers = (writers,)
    writers = tuple(writers)
    if not writers:
        raise ValueError("writers must name at least one writer (e.g. ('tensorboard',))")
    out = []
    for spec in writers:
        if isinstance(spec, str):
            load = _factories.get(spec)
            if load is None:
                raise ValueError(f"unknown writer {spec!r}: use one of {writer_names()}, or an "
                                 "AbstractWriter subclass / factory")
            out.append(load())
        elif isinstance(spec, AbstractWriter):
            raise TypeError(f"writers takes names or factories, got the writer instance "
                            f"{spec!r}: pass its class (or functools.partial(cls, ...)); one "
                            "writer is made per seed of each run")
        elif callable(spec):
            out.append(spec)
        else:
            raise TypeError(f"a writer is a name or a factory, got {spec!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"a writer is listed twice in {writers!r}")
    return tuple(out)


def _tensorboard():
    from ._tensorboard import TensorBoardWriter

    return TensorBoardWriter


def _jsonl():
    from ._jsonl import JsonlWriter

    return JsonlWriter


def _wandb():
    from ._wandb import WandbWriter

    WandbWriter.check_installed()
    return WandbWriter


register_writer("tensorboard", _tensorboard)
register_writer("jsonl", _jsonl)
register_writer("wandb", _wandb)
