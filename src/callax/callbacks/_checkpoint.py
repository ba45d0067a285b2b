"""``CheckpointCallback``: saves the agent with Equinox serialisation from inside ``jit``."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Int, Key, PyTree

from .. import _host, _writer as host
from .._callback import (
    AbstractCallbackState,
    AbstractStepStatelessCallback,
    AbstractTrainingPassthroughCallback,
    IterationContext,
    ResetContext,
)

__all__ = [
    "CheckpointCallback",
    "CheckpointCallbackState",
    "load_checkpoint",
    "save_tree",
]

# Host-side registries (never part of a pytree): tree structures registered at trace time,
# and each callback's save location, found by an integer handle carried as data.
_lock = threading.Lock()
_treedefs: list[Any] = []
_treedef_ids: dict[Any, int] = {}
_locations: dict[int, tuple[str, str]] = {}
_handles = itertools.count()


def _treedef_id(treedef: Any) -> int:
    with _lock:
        index = _treedef_ids.get(treedef)
        if index is None:
            index = _treedef_ids[treedef] = len(_treedefs)
            _treedefs.append(treedef)
    return index


def seed_directory(directory: str, seed: int) -> str:
    """``directory`` for an un-vmapped run, ``directory/seed_<i>`` for vmapped seed ``i``
    (the same numbering as TensorBoard runs)."""
    return directory if seed == host.NO_SEED else os.path.join(directory, f"seed_{seed}")


def _write_tree(path: str, treedef_id: int, leaves: list[np.ndarray]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tree = jax.tree_util.tree_unflatten(_treedefs[treedef_id], leaves)
    # Write to a temporary name first: a crash mid-write never leaves a truncated checkpoint
    # under the final name.
    partial = f"{path}.{os.getpid()}.{threading.get_ident()}.partial"
    eqx.tree_serialise_leaves(partial, tree)
    os.replace(partial, path)


def save_tree(tree: PyTree, *, handle: Int[ArrayLike, ""], step: Int[ArrayLike, ""],
              pred: Bool[ArrayLike, ""] = True) -> None:
    """Save the arrays of ``tree`` with ``eqx.tree_serialise_leaves`` from device code (one
    host call for a whole ``jax.vmap`` batch), to the file named by the registered location
    of ``handle`` at ``step``. Internal helper of the checkpointing callbacks."""
    arrays = eqx.filter(tree, eqx.is_array)
    leaves, treedef = jax.tree_util.tree_flatten(arrays)
    _host.send(_save_from_device, jnp.asarray(handle, jnp.int32),
               jnp.asarray(_treedef_id(treedef), jnp.int32), jnp.asarray(step, jnp.int32),
               *leaves, when=jnp.asarray(pred, jnp.bool_))


def _save_from_device(seeds, when, handles, treedef_ids, steps, *leaves) -> None:
    # One row per seed of the batch (``_host.send``); only the rows that asked are saved.
    for row in np.flatnonzero(when):
        directory, pattern = _locations[int(handles[row])]
        path = os.path.join(seed_directory(directory, int(seeds[row])),
                            pattern.format(step=int(steps[row])))
        _write_tree(path, int(treedef_ids[row]), [np.asarray(leaf[row]) for leaf in leaves])


def _register_location(directory: str, pattern: str) -> int:
    handle = next(_handles)
    with _lock:
        _locations[handle] = (os.path.abspath(os.fspath(directory)), pattern)
    return handle


def location(handle: Int[ArrayLike, ""]) -> tuple[str, str]:
    """The registered ``(directory, file-name pattern)`` of a handle (outside tracing)."""
    if _host.is_traced(handle):
        raise RuntimeError("checkpoint paths are not available while tracing")
    return _locations[int(np.asarray(handle))]


def location_path(handle: Int[ArrayLike, ""], step: int, seed: int | None) -> str:
    """The file a save of ``handle`` at ``step`` writes (of vmapped seed ``seed``)."""
    directory, pattern = location(handle)
    if seed is not None:
        directory = seed_directory(directory, seed)
    return os.path.join(directory, pattern.format(step=int(step)))


def load_checkpoint(path: str | os.PathLike[str], like: PyTree) -> PyTree:
    """Load a checkpoint written by [`callax.CheckpointCallback`][] (or the best model of
    [`callax.EvalCallback`][]) into a pytree of the same structure as ``like``.

    ``like`` is any agent state of the same configuration, e.g. a fresh
    ``PPO().init(env, key)``: its arrays are replaced by the saved ones (same shapes and
    dtypes), everything else is kept. This is ``eqx.tree_deserialise_leaves`` applied to the
    array part of ``like``.
    """
    arrays, static = eqx.partition(like, eqx.is_array)
    return eqx.combine(eqx.tree_deserialise_leaves(os.fspath(path), arrays), static)


class CheckpointCallbackState(AbstractCallbackState):
    """Run state of [`callax.CheckpointCallback`][].

    **Attributes:**

    - `last_index`: ``num_timesteps // save_freq`` at the last save (``0``: none yet).
    - `saves`: checkpoints written so far.
    """

    last_index: Int[Array, ""]
    saves: Int[Array, ""]


def _default_select(ctx: IterationContext) -> PyTree:
    agent_state = ctx.locals.get("agent_state")
    if agent_state is not None:
        return agent_state
    return {"policy": ctx.policy, "opt_state": ctx.opt_state}


class CheckpointCallback(AbstractStepStatelessCallback[CheckpointCallbackState],
                         AbstractTrainingPassthroughCallback):
    """Saves the agent every `save_freq` env steps, from inside the jitted training.

    What is saved is the array part of the trainer's agent state
    (``IterationContext.locals["agent_state"]``: for PPO the policy with its parameters and
    the optimizer state), or ``{"policy": ..., "opt_state": ...}`` from the context when the
    trainer passes no agent state, or whatever `select` returns. Files are written with
    ``eqx.tree_serialise_leaves`` by one host call (for all vmapped seeds at once) to
    ``<save_path>/<name_prefix>_<num_timesteps>_steps.eqx``, and under ``jax.vmap`` over seeds
    to ``<save_path>/seed_<i>/...`` (the numbering of the TensorBoard runs). Restore with
    [`callax.load_checkpoint`][] (``eqx.tree_deserialise_leaves``).

    A save is due after the iteration in which the total env steps (summed over envs) reach
    the next multiple of `save_freq` (SB3 counts ``save_freq`` in calls, i.e. steps per env;
    here it is total steps, the x-axis of TensorBoard). Seeds that already stopped
    (``locals["active"]`` false) save nothing. Files appear asynchronously: after the jitted
    function returned, ``jax.effects_barrier()`` (or [`callax.flush_all`][]) waits for them.
    """

    handle: Int[Array, ""]
    save_freq: Int[Array, ""]
    select: Callable[[IterationContext], PyTree] = eqx.field(static=True)

    def __init__(self, save_freq: int, save_path: str | os.PathLike, name_prefix: str = "rl_model",
                 select: Callable[[IterationContext], PyTree] | None = None):
        """**Arguments:**

        - `save_freq`: save every `save_freq` env steps (total over envs), a positive int.
        - `save_path`: the directory of the checkpoints (created when needed).
        - `name_prefix`: file names are ``<name_prefix>_<step>_steps.eqx``.
        - `select`: ``ctx -> pytree`` choosing what to save (default: the agent state).
          Use a module-level function: a new lambda per callback recompiles the trainer.
        """
        if not isinstance(save_freq, int) or isinstance(save_freq, bool) or save_freq < 1:
            raise ValueError(f"save_freq must be a positive int, got {save_freq!r}")
        if not isinstance(save_path, str | os.PathLike) or not os.fspath(save_path):
            raise TypeError(f"save_path must be a non-empty path, got {save_path!r}")
        if not isinstance(name_prefix, str) or not name_prefix or os.sep in name_prefix:
            raise ValueError(f"name_prefix must be a file-name prefix, got {name_prefix!r}")
        # The location lives in a host registry (found by the handle, an array): callbacks
        # saving to different directories share one compiled trainer.
        self.handle = jnp.asarray(_register_location(
            os.path.abspath(os.fspath(save_path)), name_prefix + "_{step}_steps.eqx"), jnp.int32)
        # An array: a different frequency does not recompile the trainer.
        self.save_freq = jnp.asarray(save_freq, jnp.int32)
        self.select = _default_select if select is None else select

    @property
    def save_path(self) -> str:
        """The directory of the checkpoints (absolute)."""
        return location(self.handle)[0]

    def checkpoint_path(self, step: int, seed: int | None = None) -> str:
        """Where the checkpoint of env step `step` is written (of vmapped seed `seed`)."""
        return location_path(self.handle, step, seed)

    def reset(self, ctx: ResetContext, *, key: Key[Array, ""]) -> CheckpointCallbackState:
        return CheckpointCallbackState(jnp.asarray(0, jnp.int32), jnp.asarray(0, jnp.int32))

    def on_iteration(self, ctx: IterationContext, *, key: Key[Array, ""]
                     ) -> CheckpointCallbackState:
        step = jnp.asarray(ctx.locals["num_timesteps"], jnp.int32)
        index = step // self.save_freq
        due = (index > ctx.state.last_index) & jnp.asarray(ctx.locals.get("active", True))
        save_tree(self.select(ctx), handle=self.handle, step=step, pred=due)
        return CheckpointCallbackState(jnp.where(due, index, ctx.state.last_index),
                                       ctx.state.saves + due.astype(jnp.int32))

    def continue_training(self, ctx: IterationContext, *, key: Key[Array, ""]) -> Bool[Array, ""]:
        return jnp.asarray(True)
