"""Stable-Baselines3's episode statistics inside a jitted rollout: the mean return and
length of the last ``stats_window_size`` finished episodes, and ``time/fps``.

SB3 keeps a ``deque(maxlen=stats_window_size)`` of finished episodes, appended step by step
with the envs in index order, and logs its mean as ``rollout/ep_rew_mean`` and
``rollout/ep_len_mean``. Here that deque is one ring of ``W`` slots per seed (an
:class:`EpisodeWindow`), filled in the order SB3 fills its deque, so the means are SB3's
exactly.

Where the ring lives: trainers update step states with ``jax.vmap(callback.on_step)`` over
envs, so the ring is spread over the envs' step states (``[N, ceil((W + 1) / N)]`` per
array: the seed's ``W`` slots and a guard slot, not ``W`` per env). A batching rule cannot
tell a ``vmap`` over envs from one over seeds: the innermost ``vmap`` of ``step_reset`` and
``on_step`` must be the envs', and the guard slot makes :func:`window_means` refuse, at
trace time, a ring shared out over seeds (see :func:`_check_one_ring`). Under the envs'
``vmap``, :meth:`EpisodeWindow.empty` and :meth:`EpisodeWindow.add` are ``custom_vmap``
functions that see all envs at once:
``add`` ranks the envs that finished at this step by index (one cumulative sum) and writes
their episodes into the ring with one scatter. Each array stays at about ``4 * W`` bytes
for a few envs: XLA:CPU then keeps running the rollout's loop body in order (its
``execute_sequential_buffer_threshold`` is 512 bytes), which a window per env
(``N * W`` numbers) did not. :func:`window_means` reads the filled slots: ``O(W)``, no sort.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import custom_batching
from jaxtyping import Array, ArrayLike, Bool, Float, Int

__all__ = ["EpisodeWindow", "check_window_size", "sb3_time", "window_means"]


def check_window_size(size: object, *, allow_none: bool = False) -> int | None:
    """`size` if it is a positive int (or ``None`` with `allow_none`); else a ``ValueError``."""
    if size is None and allow_none:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        off = " or None (no window)" if allow_none else ""
        raise ValueError(f"stats_window_size must be a positive int{off}, got {size!r}")
    return size


def _capacity(size: int) -> int:
    # One guard slot over ``size``: a ring shared out over ``N >= 2`` envs then holds
    # ``ceil((size + 1) / N) < size + 1`` slots per env, so a view that does not hold all
    # of the ring's envs is always too short, at trace time (see :func:`window_means`).
    return size + 1


_SHARED_OVER_SEEDS = (
    "the episode window was shared out over a vmapped axis that is not the envs' "
    "(step_reset and on_step vmapped over seeds, with one unbatched env each or envs "
    "vectorised without vmap?). The innermost vmap of step_reset and on_step must be the "
    "envs': vmap them over the envs (an env axis even of one env), or pass "
    "stats_window_size=None.")


def _empty_ring(n_envs: int, size: int) -> tuple[Array, Array, Array]:
    # The seed's slots spread over its envs: env e holds slots e*K .. e*K + K - 1.
    per_env = -(-_capacity(size) // n_envs)
    return (jnp.zeros((n_envs, per_env), jnp.float32), jnp.zeros((n_envs, per_env), jnp.int32),
            jnp.zeros(n_envs, jnp.int32))


def _add_to_ring(returns, lengths, position, done, episode_return, episode_length, size):
    """The ring (``[n, K]``: its ``n`` envs' slots) after one step of all envs (``done``
    and the episodes: any shape, flattened in index order).

    ``position`` (the same in every env) is the number of episodes written while below
    ``size``, then ``size + written % size``: the next slot is ``position % size`` and
    ``min(position, size)`` slots are filled. The envs that finished get ranks in index
    order (SB3 appends them so) and one scatter writes their episodes; of this step's
    episodes only the last ``size`` are kept, so the slots written are distinct.
    """
    n_envs, per_env = returns.shape
    done, episode_return, episode_length = (
        x.reshape(-1) for x in jnp.broadcast_arrays(done, episode_return, episode_length))
    start = position.reshape(-1)[0]
    finished = done.astype(jnp.int32)
    rank = jnp.cumsum(finished) - finished
    count = rank[-1] + finished[-1]
    keep = done & (rank >= count - size)
    slot = jnp.where(keep, (start + rank) % size, n_envs * per_env)  # out of range: dropped
    returns = returns.reshape(-1).at[slot].set(episode_return, mode="drop")
    lengths = lengths.reshape(-1).at[slot].set(episode_length, mode="drop")
    written = start + count
    written = jnp.where(written >= size, size + (written - size) % size, written)
    return (returns.reshape(n_envs, per_env), lengths.reshape(n_envs, per_env),
            jnp.broadcast_to(written, position.shape))


def _add_one(returns, lengths, position, done, episode_return, episode_length, size):
    # A whole ring (``[C]``) and the episodes of every env it covers (any shape).
    returns, lengths, position = _add_to_ring(returns[None], lengths[None], position[None],
                                              done, episode_return, episode_length, size)
    return returns[0], lengths[0], position[0]


@functools.cache
def _ring_functions(size: int):
    """``(empty, add)`` for rings of `size` episodes: ``custom_vmap`` functions.

    ``empty``'s rule shares the ring out over the ``vmap``'s elements (the envs of one
    seed). ``add``'s rule treats the batch as those envs only when the ring is shared out
    over it (fewer than ``size + 1`` slots per element); a batch of whole rings (built
    without a batched ``like``, e.g. one per seed) is updated ring by ring."""

    @custom_batching.custom_vmap
    def empty(like):
        returns, lengths, position = _empty_ring(1, size)
        return returns[0], lengths[0], position[0]

    @empty.def_vmap
    def _empty_rule(axis_size, in_batched, like):
        return _empty_ring(axis_size, size), (True, True, True)

    @custom_batching.custom_vmap
    def add(returns, lengths, position, done, episode_return, episode_length):
        return _add_one(returns, lengths, position, done, episode_return, episode_length,
                        size)

    @add.def_vmap
    def _add_rule(axis_size, in_batched, *args):
        args = [x if batched else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))
                for x, batched in zip(args, in_batched, strict=True)]
        if axis_size > 1 and args[0].shape[-1] == _capacity(size):
            # Whole rings: one per batch element (each element's own episodes).
            out = jax.vmap(functools.partial(_add_one, size=size))(*args)
        elif any(jnp.ndim(x) > 1 for x in args[3:]):
            # The ring is shared out over this batch, yet each element has envs of its own.
            raise ValueError(_SHARED_OVER_SEEDS)
        else:
            out = _add_to_ring(*args, size)  # pyright: ignore[reportCallIssue]
        return out, (True, True, True)

    return empty, add


class EpisodeWindow(eqx.Module):
    """A seed's last ``size`` finished episodes (a ring), spread over its envs' step
    states (under ``vmap`` over envs, and over seeds, the batch axes come first).

    **Attributes:**

    - `returns` (``float32``), `lengths` (``int32``): the finished episodes' return and
      length; the seed's ring is ``returns.reshape(-1)[:size]`` over its envs.
    - `position` (``int32``, the same in every env): episodes written while below
      ``size``, then ``size`` plus their count modulo ``size``.
    - `size`: the ring's length (static).
    """

    returns: Float[Array, "*batch K"]
    lengths: Int[Array, "*batch K"]
    position: Int[Array, "*batch"]
    size: int = eqx.field(static=True)

    @classmethod
    def empty(cls, size: int, like: ArrayLike | None = None) -> EpisodeWindow:
        """No finished episode yet; room for `size`.

        Pass any per-env array as `like` (e.g. the key of ``step_reset``): under
        ``jax.vmap`` over ``N`` envs the seed's ring (``size + 1`` slots, one a guard) is
        shared out over them, ``ceil((size + 1) / N)`` slots each, and
        :meth:`add` under that ``vmap`` fills it with all envs' episodes. The ``vmap`` over
        envs must be the innermost one: a ``like`` batched over seeds (one unbatched env
        each) shares the ring out over the seeds, which :func:`window_means` refuses at
        trace time. Without `like` the window is one whole ring per element of any
        ``vmap`` (e.g. per seed); its envs must then be a leading axis of the arrays given
        to :meth:`add`, not a ``vmap``.
        """
        size = check_window_size(size)  # pyright: ignore[reportAssignmentType]
        empty, _ = _ring_functions(size)
        if like is None:
            like = jnp.zeros((), jnp.int32)
        elif jnp.issubdtype(jnp.asarray(like).dtype, jax.dtypes.prng_key):
            like = jax.random.key_data(like)
        return cls(*empty(jnp.asarray(like)), size=size)

    def add(self, done: Bool[ArrayLike, "*#envs"], episode_return: Float[ArrayLike, "*#envs"],
            episode_length: Int[ArrayLike, "*#envs"]) -> EpisodeWindow:
        """Append the episode that ended at this step if `done` (under ``vmap`` over envs,
        or for arrays with leading env axes: every env that ended one, in env order, as SB3
        appends them)."""
        _, add = _ring_functions(self.size)
        ring = add(self.returns, self.lengths, self.position, jnp.asarray(done, jnp.bool_),
                   jnp.asarray(episode_return, jnp.float32),
                   jnp.asarray(episode_length, jnp.int32))
        return EpisodeWindow(*ring, size=self.size)


def _check_one_ring(window: EpisodeWindow) -> None:
    capacity, shape = _capacity(window.size), window.returns.shape
    if window.returns.size < capacity:
        raise ValueError(f"this view of the episode window holds {window.returns.size} of "
                         f"its {capacity} slots: {_SHARED_OVER_SEEDS}")
    if len(shape) >= 2 and shape[-1] == capacity and window.returns.size > capacity:
        raise ValueError(
            f"the episode window holds {window.returns.size // capacity} whole rings: it "
            "was built without `like` and updated under jax.vmap over envs. Pass a "
            "per-env array as `like` to EpisodeWindow.empty (step_reset's key) so that "
            "the envs share one ring.")


def window_means(window: EpisodeWindow) -> tuple[Array, Array, Array]:
    """``(ep_rew_mean, ep_len_mean, count)`` over the seed's last ``size`` finished
    episodes (``window`` batched over its envs, leading axes); the means are ``NaN`` and
    ``count`` is 0 while no episode has finished.

    Raises a ``ValueError`` at trace time when ``window`` is not one whole ring: a view
    that misses some of the envs the ring is shared out over (``on_iteration`` under a
    ``vmap`` that also batched ``step_reset``'s ``like``: seeds with one unbatched env
    each), or several whole rings (``vmap`` over envs of a window built without ``like``).
    """
    size = window.size
    _check_one_ring(window)
    returns = window.returns.reshape(-1)[:size]
    lengths = window.lengths.reshape(-1)[:size]
    count = jnp.minimum(window.position.reshape(-1)[0], size)
    filled = jnp.arange(size, dtype=jnp.int32) < count
    denominator = jnp.maximum(count, 1).astype(jnp.float32)
    mean_return = jnp.sum(jnp.where(filled, returns, 0.0)) / denominator
    mean_length = jnp.sum(jnp.where(filled, lengths, 0)).astype(jnp.float32) / denominator
    nan = jnp.asarray(jnp.nan, jnp.float32)
    return (jnp.where(count > 0, mean_return, nan), jnp.where(count > 0, mean_length, nan),
            count)


def sb3_time(locals_: Mapping[str, Any]) -> dict[str, Array]:
    """SB3's ``time/fps`` (``int(num_timesteps / time_elapsed)``) and ``time/time_elapsed``
    (whole seconds) from a loop's ``locals``: ``time_elapsed`` (seconds since training
    started, read by the loop from the host clock once per iteration) and
    ``num_timesteps``. Empty when the loop gives no ``time_elapsed``."""
    if "time_elapsed" not in locals_ or "num_timesteps" not in locals_:
        return {}
    elapsed = jnp.asarray(locals_["time_elapsed"], jnp.float32)
    steps = jnp.asarray(locals_["num_timesteps"], jnp.float32)
    fps = jnp.where(elapsed > 0, jnp.floor(steps / jnp.maximum(elapsed, 1e-9)), 0.0)
    return {"time/fps": fps, "time/time_elapsed": jnp.floor(elapsed)}
