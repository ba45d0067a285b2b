"""Executions that may still call host functions after their program was dropped.

callax's FFI key table (:mod:`._ffi`) holds host functions weakly; a compiled program keeps
its own alive (a keepalive of its lowering). But JAX may drop a program's executable while
an execution of it, dispatched asynchronously, has not yet made its host calls: the jitted
function of a temporary ``jax.jit(f)(x)`` is collected as soon as the call returns, and
``jax.clear_caches()`` drops every cached executable. The functions of such a program must
live until those executions have ended, and no longer.

Every program holding callax's host calls carries callax's ordered effect, so JAX threads
one token through all of them on a thread, from one execution to the next: each host call
takes the token of the call before and returns the next. The last token a thread got back
is therefore ready only once every host call it dispatched before has returned.

- :func:`watch` makes JAX remember, per thread, the last token of callax's effect (named by
  :func:`track`): one dictionary store per dispatch of a program holding callax's host
  calls, in JAX's ``RuntimeTokenSet.set_token_result``, installed at the first lowering
  of a call to callax's FFI handler. After ``jax.effects_barrier()`` (which waits for
  them) this thread's token is forgotten.
- :func:`retire`, when a program's executable is collected, keeps its host functions with
  the last tokens of every thread, or drops them at once where no thread has one left.
- :func:`release_finished` drops the retired functions whose tokens are all ready: at every
  lowering of a host call (``_ffi.key_of``) and after ``jax.effects_barrier()``.

Where JAX's internals differ (:func:`watch` failed), retired functions are kept for the
process's life. The state lives on :mod:`sys`, so a reload of this module shares it.
"""

from __future__ import annotations

import collections
import inspect
import sys
import threading
import types
from collections.abc import Mapping
from typing import Any

__all__ = ["release_finished", "retire", "track", "watch"]

_ANCHOR = "_callax_in_flight"  # the attribute of ``sys`` holding the state


def _state() -> types.SimpleNamespace:
    """``latest`` (thread id -> the last token of callax's effect it got back), ``retired``
    (``(tokens, functions)`` pairs waiting for their tokens), ``kept`` (what is retired
    while untracked), ``effect`` (callax's effect type, see :func:`track`), ``installed``
    (whether JAX's token set reports to ``latest``), ``unwatchable`` (it cannot)."""
    state = getattr(sys, _ANCHOR, None)
    if state is None:
        state = types.SimpleNamespace(latest={}, retired=collections.deque(), kept=[],
                                      effect=None, installed=False, unwatchable=False)
        setattr(sys, _ANCHOR, state)
    return state


_STATE = _state()


def track(effect_type: type) -> None:
    """Name the effect whose tokens tell which executions still run (callax's ordered
    effect). JAX is asked to report them at the first program that needs it
    (:func:`watch`)."""
    _STATE.effect = effect_type


def watch() -> bool:
    """Make JAX remember, per thread, the last token of callax's effect it got back from an
    execution (once per process, at the lowering of the first program whose functions may
    be retired; no cost where no such program is lowered). Whether it does."""
    if _STATE.installed or _STATE.effect is None or _STATE.unwatchable:
        return _STATE.installed
    try:
        _install()
    except (ImportError, AttributeError, TypeError, ValueError):  # another JAX: untracked
        _STATE.unwatchable = True
        return False
    _STATE.installed = True
    return True


def _install() -> None:
    from jax._src import dispatch

    tokens = dispatch.RuntimeTokenSet
    jax_set, jax_wait = tokens.set_token_result, tokens.block_until_ready
    if getattr(jax_set, "_callax", False):  # already wrapped (a reload of this module)
        return
    if (list(inspect.signature(jax_set).parameters) != ["self", "eff", "token"]
            or list(inspect.signature(jax_wait).parameters) != ["self"]):
        raise TypeError("JAX's RuntimeTokenSet has other methods than callax wraps")
    state, latest, thread = _STATE, _STATE.latest, threading.get_ident

    def set_token_result(self, eff, token):
        jax_set(self, eff, token)
        if type(eff) is state.effect:
            latest[thread()] = token

    def block_until_ready(self):
        jax_wait(self)  # this thread's executions have all ended (else it raised)
        latest.pop(thread(), None)
        release_finished()

    set_token_result._callax = True  # type: ignore[attr-defined]
    tokens.set_token_result = set_token_result
    tokens.block_until_ready = block_until_ready


def retire(functions: Mapping[int, Any]) -> None:
    """The program that could call ``functions`` is gone: keep them until every execution
    dispatched so far has ended. Runs in a finalizer (any thread, inside a garbage
    collection): only Python containers are touched here, never JAX."""
    if not functions:
        return
    if not _STATE.installed:  # untracked: kept for the process's life
        _STATE.kept.append(functions)
        return
    running = tuple(_STATE.latest.values())  # one step under the GIL
    if running:
        _STATE.retired.append((running, functions))


def _ended(token: Any) -> bool:
    """Whether the execution that returned ``token`` (a ``jax.core.Token``) has ended."""
    buffer = getattr(token, "_buf", token)
    try:  # (is_ready on a deleted buffer crashes the process: is_deleted first)
        return bool(buffer.is_deleted() or buffer.is_ready())
    except Exception:  # noqa: BLE001 - a failed execution has ended too
        return True


def release_finished() -> None:
    """Drop the retired functions whose executions have all ended, and the last tokens of
    threads that are done (this thread's, once ready; those of threads that exited)."""
    latest, me = _STATE.latest, threading.get_ident()
    mine = latest.get(me)
    if mine is not None and _ended(mine):
        latest.pop(me, None)  # only this thread stores under its own id
    if latest and (len(latest) > 1 or me not in latest):
        alive = {t.ident for t in threading.enumerate()}
        for ident, token in list(latest.items()):
            if ident not in alive and _ended(token):  # an exited thread stores no more
                latest.pop(ident, None)
    retired = _STATE.retired
    for _ in range(len(retired)):
        try:
            tokens, functions = retired.popleft()
        except IndexError:  # another thread emptied it meanwhile
            break
        running = tuple(t for t in tokens if not _ended(t))
        if running:
            retired.append((running, functions))
