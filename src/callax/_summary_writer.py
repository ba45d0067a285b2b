"""``JITSummaryWriter``: a TensorBoard writer usable eagerly and inside jit/scan/vmap/cond."""

from __future__ import annotations

import datetime
import functools
import os
import socket
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jaxtyping import Array, ArrayLike, Bool, Int, Shaped

from . import _host, _step as _steps, _summary_eager as _eager, _writer as host
from ._step import Step
from ._summary_steps import check_concrete_steps, host_step, step_words
from ._summary_values import (
    check_tag as check_tag,
    check_values as check_values,
    flatten_scalars as flatten_scalars,
    scalar_value as scalar_value,
    stack_scalars as stack_scalars,
    tag_layout as tag_layout,
)

__all__ = ["JITSummaryWriter", "check_tag", "check_values", "scalar_value"]


def default_log_dir() -> str:
    """``runs/<date>_<time>_<host>``, like tensorboardX's default."""
    stamp = datetime.datetime.now().strftime("%b%d_%H-%M-%S")
    return os.path.join("runs", f"{stamp}_{socket.gethostname()}")


def _as_handle(handle):
    """A run handle as the writer holds it: an ``int32`` NumPy scalar when it is known now
    (eager writes read it for free), the traced value inside a trace."""
    if isinstance(handle, Tracer):
        return handle.astype(jnp.int32)
    return np.asarray(handle, np.int32)


class _PlainMethod:
    """A method bound as a plain Python method. Equinox binds a method looked up on a
    module as a module of its own (so that ``jax.jit(module.method)`` traces the module),
    which costs 20-100 µs per lookup: more than an eager write. The writer's ``add_*``
    methods are called, not transformed; binding them plainly keeps an eager write at
    tensorboardX's cost."""

    def __init__(self, fn):
        self.fn = fn
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __get__(self, instance, owner=None):
        # A partial, not a ``MethodType``: Equinox rebinds those as modules.
        return self.fn if instance is None else functools.partial(self.fn, instance)


class JITSummaryWriter(eqx.Module):
    """Writes scalars to a TensorBoard run from eager code or from inside ``jax.jit``.

    The module holds only an ``int32`` handle; files, queues and threads live on the host in a
    registry. Consequences:

    - Two writers with the same configuration are the same pytree structure: passing a new one
      to a jitted function does not recompile it.
    - A writer created *inside* a jitted function opens a fresh run every time the function
      executes (the directory gets a ``_1``, ``_2``, ... suffix if it was already used by
      this process), so repeated executions never merge into one run.
    - Under ``jax.vmap`` every batch element writes to ``<log_dir>/seed_<i>``, ``i`` being its
      flat position in the batch, with one host call for the whole batch.

    Every ``add_*`` call is one host call carrying all its scalars in one packed array. Values
    are handed to a background thread which encodes and writes them and flushes the file
    after each batch: once handed over, a point survives an exception in the training loop
    or the process being killed. Inside a hot loop, prefer a callback that buffers on device
    (such as [`callax.TensorBoardCallback`][]) over one ``add_scalar`` per step.

    Steps are 64-bit: Python ints up to 2**63 - 1 eagerly; inside jit any integer scalar, or
    a [`callax.Step`][] (two 32-bit words that add with carry) to count past 2**31 without
    ``jax_enable_x64``. A negative step is an error naming the tag (eagerly at the call;
    inside jit the host call raises, so the jitted function fails). ``walltime`` must be a
    Python float (static).
    """

    handle: Int[Array | np.ndarray, ""]  # NumPy when made eagerly: read without a device copy
    axis_names: tuple[str, ...] | None = eqx.field(static=True)
    reduce: str | None = eqx.field(static=True)
    per_process: bool = eqx.field(static=True)

    def __init__(
        self,
        log_dir: str | os.PathLike | None = None,
        *,
        axis_names: tuple[str, ...] | None = None,
        reduce: str | None = None,
        per_process: bool = False,
        purge_step: int | None = None,
        writers: Any = None,
        _handle=None,
    ):
        """**Arguments:**

        - `log_dir`: the run directory. Defaults to ``runs/<date>_<time>_<host>``. Checked
          here: a path that is (or lies inside) a file, is not writable or is too long for
          the file system raises at once.
        - `axis_names`: the manual axes (``jax.pmap``/``shard_map`` axis names) over which
          devices hold *different* seeds. Default: every enclosing manual axis, or none
          when `reduce` is set. Each device's batch elements go to ``seed_<i>``, ``i`` the
          global index (device-major, then the vmap position): the same directories as
          ``jax.jit`` of the vmapped function on a sharded batch.
        - `reduce`: for the enclosing manual axes *not* in `axis_names` (replicated,
          data-parallel training): ``"mean"`` writes the mean over their devices,
          ``"first"`` the first device's values, once. ``None`` (default): such axes are
          an error at trace time, since their devices would write the same points.
        - `per_process`: with several processes, each process writes its own
          ``<log_dir>/process_<p>`` (process-local data). Default: data that is not split
          over seed axes is written by process 0 only.
        - `purge_step`: continue the run in `log_dir` after a restart (as tensorboardX's
          ``purge_step``): TensorBoard hides the points written there before at steps
          ``>= purge_step``, so a tail re-run after restoring a checkpoint is not shown
          twice. The directory is then used as it is (no ``_1`` suffix).
        - `writers`: where the points go: names among ``"tensorboard"``, ``"jsonl"``,
          ``"wandb"``, or [`callax.writers.AbstractWriter`][] factories (default:
          ``("tensorboard",)``). Every flush is one host call, whatever the writers; see
          the "Writers" page.
        """
        if reduce not in _host.REDUCE_MODES:
            raise ValueError(f"reduce must be one of {_host.REDUCE_MODES}, got {reduce!r}")
        if axis_names is not None:
            if isinstance(axis_names, str):
                axis_names = (axis_names,)
            axis_names = tuple(axis_names)
            if not all(isinstance(a, str) for a in axis_names):
                raise TypeError(f"axis_names must be a tuple of str, got {axis_names!r}")
        self.axis_names = axis_names
        self.reduce = reduce
        self.per_process = bool(per_process)
        if _handle is not None:
            self.handle = _as_handle(_handle)
            return
        if purge_step is not None and (isinstance(purge_step, bool)
                                       or not isinstance(purge_step, int | np.integer)
                                       or purge_step < 0):
            raise ValueError(f"purge_step must be a non-negative int, got {purge_step!r}")
        if log_dir is None:
            host.prepare_log_dir(default_log_dir())
            self.handle = _as_handle(_host.open_run(
                default_log_dir, per_process=self.per_process, purge_step=purge_step,
                writers=writers))
        else:
            log_dir = os.fspath(host.prepare_log_dir(log_dir))
            self.handle = _as_handle(_host.open_run(
                log_dir, per_process=self.per_process, purge_step=purge_step,
                writers=writers))

    @classmethod
    def _from_handle(cls, handle: Int[ArrayLike, ""], **options) -> JITSummaryWriter:
        return cls(_handle=handle, **options)

    def _emit(self, layout, steps, values, valid, pred: ArrayLike = True,
              sync: ArrayLike = False) -> None:
        _host.emit(layout, self.handle, steps, values, valid, pred, sync,
                   axis_names=self.axis_names, reduce=self.reduce,
                   per_process=self.per_process)

    @property
    def log_dir(self) -> str:
        """The run directory (only available outside of tracing)."""
        if _host.is_traced(self.handle):
            raise RuntimeError("JITSummaryWriter.log_dir is not available while tracing")
        handle = np.asarray(self.handle)
        if handle.ndim:
            raise RuntimeError("this writer is batched; each element has its own run")
        return host.get_run(int(handle)).log_dir

    @_PlainMethod
    def add_scalar(
        self,
        tag: str,
        scalar_value: ArrayLike,
        global_step: ArrayLike | Step | None = None,
        walltime: float | None = None,
        *,
        when: ArrayLike = True,
    ) -> None:
        """Write one scalar (checked at trace time: a non-scalar fails naming the tag).

        ``global_step=None`` continues from the tag's last step. ``when`` (a boolean
        scalar, per seed under ``vmap``): write only where it holds.
        """
        _add_dict(self, "", {tag: scalar_value}, global_step, walltime, when)

    @_PlainMethod
    def add_dict(
        self,
        prefix: str,
        scalars: Mapping[str, Any],
        *,
        global_step: ArrayLike | Step | None = None,
        walltime: float | None = None,
        when: ArrayLike = True,
    ) -> None:
        """Write several scalars at one step in one host call, tagged ``<prefix>/<key>``.

        An empty ``prefix`` writes the keys as they are. Nested mappings are flattened
        (``{"a": {"b": x}}`` becomes ``<prefix>/a/b``). ``when``: as in `add_scalar`.
        """
        _add_dict(self, prefix, scalars, global_step, walltime, when)

    def write_rows(
        self,
        tags: tuple[str, ...],
        steps: Int[ArrayLike, " K"] | Step,
        values: Shaped[ArrayLike, "K n"],
        valid: Bool[ArrayLike, "K n"] | None = None,
        when: Bool[ArrayLike, ""] = True,
    ) -> None:
        """Low-level: write ``K`` rows of ``n`` tags in one host call.

        Row ``k`` writes ``values[k, j]`` under ``tags[j]`` at step ``steps[k]`` where
        ``valid[k, j]``; nothing is sent unless ``when`` is true. ``steps`` are integers or a
        [`callax.Step`][] with ``K`` steps. This is what device-side buffers call when they
        flush. Called eagerly (concrete arrays, e.g. an ``EventRecord`` written between
        jitted updates) it compiles nothing: the rows go straight to the writer thread.
        """
        if _eager.write_rows_eagerly(self, tags, steps, values, valid, when):
            return  # outside any trace: no program compiled or run
        layout = tag_layout(tags)
        values = check_values(tags, values)
        if values.ndim != 2 or values.shape[1] != len(tags):
            raise ValueError(f"values must have shape (K, {len(tags)}), got {values.shape}")
        words = _steps.as_words(steps)
        if words.shape != (values.shape[0], 2):
            shape = words.shape[:-1]
            raise ValueError(f"steps must have shape ({values.shape[0]},), got {shape}")
        check_concrete_steps(words, tags)
        if valid is None:
            valid = jnp.ones(values.shape, jnp.bool_)
        self._emit(layout, Step._from_words(words), values, valid, when)

    @_PlainMethod
    def add_text(self, tag: str, text_string: str, global_step: ArrayLike | None = None,
                 walltime: float | None = None) -> None:
        """Write text (Markdown, e.g. a hyperparameter table) under ``tag`` at
        ``global_step``, for TensorBoard's *Text* dashboard (a JSON line ``{"step", "tag",
        "text", "wall_time"}``; a string in W&B's history). Eager only (from Python, not
        inside jit). ``global_step=None`` continues from the tag's last text; ``walltime``
        is ignored (the time of the call is recorded).
        """
        del walltime
        _eager.add_text(self, tag, text_string, global_step)

    @_PlainMethod
    def add_hparams(self, hparam_dict: Mapping[str, bool | int | float | str] | Any,
                    metric_dict: Mapping[str, Any] | None = None, *,
                    global_step: ArrayLike | None = None) -> None:
        """Link hyperparameters to this run for TensorBoard's *HParams* dashboard, from a
        plain loop (what [`callax.HParamsCallback`][] does for a training with hooks).

        Writes an HParams session (start, then end) into the run itself (not into a
        time-stamped sub-run as tensorboardX does), a JSON line ``{"hparams"}`` and W&B's
        config; then ``metric_dict`` as scalars at ``global_step`` (``None``: each tag's
        next step). The dashboard shows each metric tag's last value next to the
        hyperparameters, so metrics logged later under the same tags also show. Eager only.

        **Arguments:**

        - `hparam_dict`: ``{name: bool | int | float | str}``, or a dataclass / Equinox
          module read by [`callax.hparams_of`][].
        - `metric_dict`: ``{tag: scalar}`` (optional).
        """
        _eager.add_hparams(self, hparam_dict, metric_dict, global_step)

    def flush(self) -> None:
        """Make every point written so far readable on disk.

        Called eagerly (after a jitted function returned), this waits for the function's host
        callbacks first: every point is on disk when it returns. Inside a jitted function it
        is a host callback that XLA may run before earlier, independent writes; prefer
        flushing eagerly after the function, or [`callax.TensorBoardCallback`][]'s
        ``on_training_end``, which writes and flushes in one host call.
        """
        _host.flush(self.handle)

    def close(self) -> None:
        """Flush and close the event files (writing again opens new files in the same run).

        Same ordering rules as [`flush`][callax.JITSummaryWriter.flush].
        """
        _host.close(self.handle)


def _writes_eagerly(writer: JITSummaryWriter, global_step, values) -> bool:
    """Whether a write runs outside any trace, with host (or concrete) data only."""
    handle = writer.handle
    if _host.under_trace() or isinstance(handle, Tracer) or np.ndim(handle):
        return False
    if isinstance(global_step, Step | Tracer):
        return False
    return not any(isinstance(v, Tracer) for v in values)


def _add_dict(writer: JITSummaryWriter, prefix: str, scalars: Mapping[str, Any],
              global_step: ArrayLike | Step | None, walltime: float | None,
              when: ArrayLike = True) -> None:
    """[`JITSummaryWriter.add_dict`][callax.JITSummaryWriter.add_dict] (a function: an
    Equinox bound method costs ~0.1 ms to look up, more than an eager write)."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {prefix!r}")
    if walltime is not None and not isinstance(walltime, int | float):
        raise TypeError("walltime must be a Python float (seconds since the epoch) or None")
    flat = flatten_scalars(prefix, scalars)
    if not flat:
        return
    tags = tuple(flat)
    if when is not True:  # a gate: traced (per seed under vmap), or known now
        if not _host.is_traced(when) and not np.all(np.asarray(when)):
            return
        if _host.is_traced(when) or _host.under_trace():
            values = stack_scalars(list(flat.values()))[None, :]
            writer.write_rows(tags, Step._from_words(step_words(global_step, tags)[None]), values,
                              when=when)
            return
    if _writes_eagerly(writer, global_step, flat.values()):
        # No trace: straight to the host (no program compiled or run per call).
        tag_layout(tags)  # the same checks as inside jit
        step = host_step(global_step, tags)
        values = np.array([np.asarray(v) for v in flat.values()], np.float32)[None, :]
        _host.write_eager(tags, int(writer.handle), np.array([step], np.int64), values,
                          np.ones(values.shape, np.bool_), per_process=writer.per_process)
        return
    values = stack_scalars(list(flat.values()))[None, :]
    writer.write_rows(tags, Step._from_words(step_words(global_step, tags)[None]), values)
