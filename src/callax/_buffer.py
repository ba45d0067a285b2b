"""``ScalarBuffer``: rows of scalars kept on device and sent to the host ``K`` rows at a time."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Shaped, UInt32

from . import _step as _steps
from ._host import vary
from ._step import Step
from ._summary_writer import JITSummaryWriter, check_values, tag_layout

__all__ = ["ScalarBuffer"]


class ScalarBuffer(eqx.Module):
    """A device-side buffer of up to ``capacity`` rows of at most ``width`` scalars.

    [`append`][callax.ScalarBuffer.append] adds one row (one global step) and, when the
    buffer is full, hands every row to the host in **one** host call;
    [`flush`][callax.ScalarBuffer.flush] sends whatever is buffered. The tags of the rows
    travel as a small integer (``layout``), so a buffer filled in one traced function can be
    flushed from another that never saw the tags.

    What a crash can lose: the rows appended since the last host transfer (fewer than
    ``capacity``). Everything already handed to the host is written, see
    [`callax.JITSummaryWriter`][].
    """

    values: Float[Array, "capacity width"]
    valid: Bool[Array, "capacity width"]
    steps: UInt32[Array, "capacity 2"]  # 64-bit steps as (hi, lo) words, see callax.Step
    count: Int[Array, ""]
    layout: Int[Array, ""]

    @classmethod
    def empty(cls, capacity: int, width: int) -> ScalarBuffer:
        """An empty buffer of ``capacity`` rows × ``width`` scalars (inside ``pmap`` /
        ``shard_map``: varying over the manual axes, so it can be a loop carry)."""
        if capacity < 1 or width < 1:
            raise ValueError(f"capacity and width must be >= 1, got {capacity}, {width}")
        return cls(
            values=vary(jnp.zeros((capacity, width), jnp.float32)),
            valid=vary(jnp.zeros((capacity, width), jnp.bool_)),
            steps=vary(jnp.zeros((capacity, 2), jnp.uint32)),
            count=vary(jnp.zeros((), jnp.int32)),
            layout=jnp.zeros((), jnp.int32),
        )

    @property
    def capacity(self) -> int:
        return self.steps.shape[-2]

    @property
    def width(self) -> int:
        return self.values.shape[-1]

    def append(
        self,
        writer: JITSummaryWriter,
        tags: tuple[str, ...],
        step: Int[ArrayLike, ""] | Step,
        values: Shaped[ArrayLike, " n"],
        valid: Bool[Array, " n"],
        when: Bool[ArrayLike, ""] = True,
    ) -> ScalarBuffer:
        """Add one row at ``step``; if that fills the buffer, send every row to the host.

        ``step`` is an integer scalar or a [`callax.Step`][] (64-bit, no overflow at 2**31).

        ``tags`` must be the same at every call between two transfers (in a loop body traced
        once, they are). With ``when`` false nothing is added or sent: pass the trainer's
        ``locals["active"]`` so that a vmapped seed that stopped early (its loop body still
        runs while other seeds train) writes nothing more.
        """
        layout = tag_layout(tags)
        if len(tags) > self.width:
            raise ValueError(
                f"{len(tags)} scalars per row but the buffer holds {self.width}; raise "
                f"`max_scalars` (tags: {tags})"
            )
        pad = self.width - len(tags)
        when = jnp.asarray(when, jnp.bool_)
        index = jnp.minimum(self.count, self.capacity - 1)
        row_values = jnp.pad(check_values(tags, values), (0, pad))
        row_valid = jnp.pad(jnp.asarray(valid, jnp.bool_), (0, pad))
        buffer = ScalarBuffer(
            values=self.values.at[index].set(jnp.where(when, row_values, self.values[index])),
            valid=self.valid.at[index].set(jnp.where(when, row_valid, self.valid[index])),
            steps=self.steps.at[index].set(jnp.where(when, _steps.as_words(step),
                                                     self.steps[index])),
            count=self.count + when.astype(jnp.int32),
            layout=jnp.asarray(layout, jnp.int32),
        )
        full = when & (buffer.count >= self.capacity)
        buffer._send(writer, full)
        return eqx.tree_at(lambda b: b.count, buffer, jnp.where(full, 0, buffer.count))

    def _send(self, writer: JITSummaryWriter, when, sync: bool = False) -> None:
        rows = jnp.arange(self.capacity) < self.count
        writer._emit(self.layout, Step._from_words(self.steps), self.values,
                     self.valid & rows[:, None], when, sync)

    def flush(self, writer: JITSummaryWriter, *, sync: bool = True) -> ScalarBuffer:
        """Send the buffered rows (if any) and empty the buffer.

        With ``sync`` (the default) the host call returns only once the run's event files
        hold every point handed over, this buffer's rows included.
        """
        self._send(writer, self.count > 0, sync)
        return eqx.tree_at(lambda b: b.count, self, jnp.zeros_like(self.count))
