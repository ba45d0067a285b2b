"""``StopOnInterrupt``: Ctrl-C ends a jitted training at the next iteration, cleanly."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Bool, Key

from .. import _host
from .._callback import (
    AbstractStepStatelessCallback,
    EmptyCallbackState,
    IterationContext,
    ResetContext,
    TrainingContext,
)

__all__ = ["StopOnInterrupt"]


class StopOnInterrupt(AbstractStepStatelessCallback[EmptyCallbackState]):
    """Lets the first Ctrl-C (``SIGINT``) end a training at the next iteration boundary.

    Add it to the callbacks of your own training loop (callax's trainers have it built in):
    its ``continue_training`` reads a host flag once per iteration (one host read returning
    a ``bool``, for all vmapped seeds at once), and returns false once Ctrl-C was pressed
    during the training. The loop then ends as after any early stop: ``on_training_end``
    runs (final points, checkpoints) and the jitted function returns normally. A second
    Ctrl-C ends the process at once, after writing what was handed over (see
    [Guarantees](guarantees.md#exit-paths)).

    Works eagerly and inside ``jit``, under ``vmap`` over seeds, ``pmap``/``shard_map``
    (every device reads the flag and all agree, so all stop at the same iteration) and with
    several processes (each process reads its own flag; the devices of a mesh agree).
    ``on_training_start`` tells the host that a training is running (from then on the
    first Ctrl-C stops it instead of raising ``KeyboardInterrupt``), ``on_training_end``
    that it is over.
    """

    def reset(self, ctx: ResetContext, *, key: Key[Array, ""]) -> EmptyCallbackState:
        return EmptyCallbackState()

    def on_training_start(self, ctx: TrainingContext, *, key: Key[Array, ""]
                          ) -> EmptyCallbackState:
        _host.training_started(ctx.iteration_count)
        return EmptyCallbackState()

    def on_iteration(self, ctx: IterationContext, *, key: Key[Array, ""]
                     ) -> EmptyCallbackState:
        return EmptyCallbackState()

    def on_training_end(self, ctx: TrainingContext, *, key: Key[Array, ""]
                        ) -> EmptyCallbackState:
        _host.training_ended(ctx.iteration_count)
        return EmptyCallbackState()

    def continue_training(self, ctx: IterationContext, *, key: Key[Array, ""]
                          ) -> Bool[Array, ""]:
        return ~_host.stop_requested(jnp.asarray(ctx.iteration_count, jnp.int32).sum())
