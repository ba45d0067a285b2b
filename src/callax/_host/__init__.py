"""The one package that crosses from device to host (its primitives: :mod:`._primitives`).

Everything a jitted program sends to TensorBoard goes through :func:`emit`: one host call
carrying one packed batch (``steps[K]``, ``values[K, n]``, ``valid[K, n]``) for a tuple of
``n`` tags registered once as a *layout*. :func:`emit` is a
:func:`jax.custom_batching.custom_vmap` function: under ``jax.vmap`` (nested or not) it makes
**one** host call for the whole batch and tags every batch element with its flat position, so
each vmapped seed is written to its own run sub-directory ``seed_<i>``. The payload carries
the run handle, the tag layout, the seed position and the steps, so the host never depends on
call order or on which thread or device called it.

Other callbacks reach the host through :func:`send` (one generic batched host call with the
same seed numbering) and :func:`clock` (host clock reads returning to the device).

One module per concern, re-exported here:

- :mod:`._primitives` (and :mod:`._ffi`): the host-call primitives and their lowering;
- :mod:`._autodiff`, :mod:`._gating`, :mod:`._aot`: what the primitive needs from JAX's
  transformations (writes once under differentiation; per seed under a batched predicate;
  at every call of an ahead-of-time compiled program);
- :mod:`._trace`: whether code is traced;
- :mod:`._runs`: opening runs, named once across processes;
- :mod:`._packing`: layouts and the packed payload of a write, unpacked on the host;
- :mod:`._seeds`: mesh axes (``pmap``/``shard_map``) and seed numbering;
- :mod:`._emit`: writes (:func:`emit`, :func:`write_eager`);
- :mod:`._send`: generic batched host calls, the host clock and the stop flag;
- :mod:`._training`: training boundaries (a new run per training, Ctrl-C handling);
- :mod:`._flush`: flush and close.
"""

from ._emit import batching_rule as batching_rule, emit as emit, write_eager as write_eager
from ._flush import close as close, flush as flush, flush_all as flush_all
from ._packing import (
    known_layout as known_layout,
    layout_tags as layout_tags,
    register_layout as register_layout,
)
from ._primitives import callback as callback, direct_host_call as direct_host_call
from ._runs import open_run as open_run
from ._seeds import (
    REDUCE_MODES as REDUCE_MODES,
    device_position as device_position,
    global_seed as global_seed,
    manual_axes as manual_axes,
    on_mesh as on_mesh,
    seed_origin as seed_origin,
    seed_positions as seed_positions,
    split_axes as split_axes,
    vary as vary,
)
from ._send import (
    clock as clock,
    each_device as each_device,
    send as send,
    stop_requested as stop_requested,
)
from ._trace import is_traced as is_traced, under_trace as under_trace
from ._training import (
    begin_training as begin_training,
    training_ended as training_ended,
    training_started as training_started,
)

__all__ = [
    "begin_training", "callback", "clock", "close", "emit", "flush", "flush_all", "is_traced",
    "layout_tags", "open_run", "register_layout", "seed_origin", "seed_positions", "send",
    "under_trace", "write_eager", "stop_requested", "training_started", "training_ended",
]
