"""``SACEvents``: the events of Maze RL's SAC trainer, as a callax event interface."""

from __future__ import annotations

from jaxtyping import ArrayLike, Float, Int

from ._recorder import EventInterface, event

__all__ = ["SACEvents"]


GROUP = "trainer"
"""The first part of every ``SACEvents`` tag (Maze RL writes ``SACEvents``): TensorBoard sorts
tags with a case-sensitive natural sort, so Maze's capitalised name would put these cards
before ``rollout/ep_rew_mean``; ``trainer`` sorts after ``rollout``, ``time`` and ``train``
(``docs/events.md``, "Names in TensorBoard")."""


class SACEvents(EventInterface, name=GROUP):
    """Events of the Soft Actor-Critic algorithm (names and parameters of Maze RL's
    ``SACEvents``).

    Every field is reduced per epoch with ``nanmean`` and written as
    ``trainer/<event>[/<field>][/<key>]`` at x = total env steps (Maze's tag
    ``SACEvents/<event>...``: the event names are Maze's, the group sorts after
    Stable-Baselines3's ``rollout``, ``time`` and ``train`` in TensorBoard). ``step_key`` and
    ``critic_key`` are static ``int | str``, or ``None`` for a single instance (no key part
    in the tag). [`callax.train.SAC`][] has one policy (step key ``None``:
    ``trainer/policy_entropy``) and two critics (keys ``0`` and ``1``:
    ``trainer/critic_value/0``); it does not record ``policy_loss``, ``entropy_coef`` and
    ``entropy_loss``, whose values are its training log's ``actor_loss``, ``ent_coef`` and
    ``ent_coef_loss`` (``train/*`` in TensorBoard, Stable-Baselines3's names).
    ``time`` is in seconds, measured by a real clock; ``percent`` is the
    phase's share of one update, in percent (0-100). See ``docs/sac.md`` for how
    [`callax.train.SAC`][] measures each event.
    """

    @event
    def policy_loss(self, step_key: int | str | None, value: Float[ArrayLike, ""]) -> None:
        """The policy (actor) loss."""

    @event
    def policy_grad_norm(self, step_key: int | str | None, value: Float[ArrayLike, ""]) -> None:
        """The global norm of the policy gradient."""

    @event
    def policy_entropy(self, step_key: int | str | None, value: Float[ArrayLike, ""]) -> None:
        """The policy entropy."""

    @event
    def policy_mean_logp(self, step_key: int | str | None, value: Float[ArrayLike, ""]) -> None:
        """The mean log-probability of the actions the policy sampled."""

    @event
    def entropy_coef(self, step_key: int | str | None, value: Float[ArrayLike, ""]) -> None:
        """The entropy coefficient (interesting with automatic entropy tuning)."""

    @event
    def entropy_loss(self, step_key: int | str | None, value: Float[ArrayLike, ""]) -> None:
        """The loss of the entropy coefficient (automatic entropy tuning)."""

    @event
    def critic_value(self, critic_key: int | str, value: Float[ArrayLike, ""]) -> None:
        """The mean Q value of a critic on the sampled transitions."""

    @event
    def critic_value_loss(self, critic_key: int | str, value: Float[ArrayLike, ""]) -> None:
        """The loss of a critic."""

    @event
    def critic_grad_norm(self, critic_key: int | str, value: Float[ArrayLike, ""]) -> None:
        """The gradient norm of a critic."""

    @event
    def errors_between_critics(self, critic_key: int | str, value: Float[ArrayLike, ""]) -> None:
        """The mean absolute difference between a critic and its target critic."""

    @event
    def buffer_size(self, value: Int[ArrayLike, ""]) -> None:
        """The number of transitions currently stored in the replay buffer."""

    @event
    def buffer_avg_pick_per_transition(self, value: Float[ArrayLike, ""]) -> None:
        """Total sampled indices / total transitions ever added (the replay ratio)."""

    @event
    def estimated_queue_sizes(self, before: Int[ArrayLike, ""], after: Int[ArrayLike, ""]) -> None:
        """The size of the actors' output queue before and after the learner dequeued."""

    @event
    def time_backprob(self, time: Float[ArrayLike, ""], percent: Float[ArrayLike, ""]) -> None:
        """Time to backpropagate the loss and apply the optimizers, and its share of one
        update."""

    @event
    def time_dequeuing_actors(self, time: Float[ArrayLike, ""], percent: Float[ArrayLike, ""]
                              ) -> None:
        """Time to dequeue the actors' output, and its share of one update."""

    @event
    def time_learner_rollout(self, time: Float[ArrayLike, ""], percent: Float[ArrayLike, ""]
                             ) -> None:
        """Time for the learner's rollout (policy and target critics on the sampled
        transitions), and its share of one update."""

    @event
    def time_loss_computation(self, time: Float[ArrayLike, ""], percent: Float[ArrayLike, ""]
                              ) -> None:
        """Time to compute the losses (forward passes), and its share of one update."""

    @event
    def time_sampling_from_buffer(self, time: Float[ArrayLike, ""], percent: Float[ArrayLike, ""]
                                  ) -> None:
        """Time to sample a batch from the replay buffer, and its share of one update."""
