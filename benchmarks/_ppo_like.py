"""A PPO-like CartPole training loop, jitted whole, with or without a callback.

Shared by the logging benchmarks. Shapes follow the core issue: ``n_envs`` envs ×
``n_steps`` steps per iteration, ``epochs`` × ``minibatches`` gradient steps, and a training
log of 8 scalars per iteration (plus the learning rate and the two episode statistics the
callback adds: ~10 tags).

Both variants return the per-iteration training log (stacked over iterations, as trainers do),
so XLA computes the same training statistics with and without the callback: the difference
is what logging costs. A loop that discarded its log would let XLA drop the statistics'
computation as dead code; the benchmark measures that case too (``log_out=False``).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from _logwrap import logwrap_init, logwrap_step

import callax._host
from callax import IterationContext, ResetContext, StepContext, TrainingContext
from callax.envs import CartPole


class Net(eqx.Module):
    torso: eqx.nn.MLP
    pi: eqx.nn.Linear
    v: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.torso = eqx.nn.MLP(4, 64, 64, 1, activation=jnp.tanh, key=k1)
        self.pi = eqx.nn.Linear(64, 2, key=k2)
        self.v = eqx.nn.Linear(64, "scalar", key=k3)

    def __call__(self, obs):
        h = jnp.tanh(self.torso(obs))
        return self.pi(h), self.v(h)


def make_train(n_envs, n_steps, n_iters, epochs=4, minibatches=4, logging=False,
               log_out=True, stop_read=False, step_tracking=True, logwrap=False):
    """A jitted ``train(key, callback)``; ``callback`` is ignored unless ``logging``.

    ``stop_read``: also read the Ctrl-C stop flag once per iteration, as callax's trainers
    and ``StopOnInterrupt`` do (its result is returned, so XLA keeps the read).

    ``step_tracking=False``: the callback's ``on_step`` is left out (its step state stays as
    ``step_reset`` made it), so what logging costs per iteration shows alone. ``logwrap``
    (without ``logging``): PureJaxRL's ``LogWrapper`` state updated at every env step, its
    ``info`` stacked over the rollout and the finished episodes' mean return added to the
    training log, as PureJaxRL's PPO does.

    The callback is an argument, so a new one (a fresh run) does not recompile. ``train``
    returns the training log of every iteration (``log_out``) or only the losses.
    """
    env = CartPole()
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=2.5e-4)

    def train(key, callback):
        if not logging:
            callback = None
        key, net_key = jax.random.split(key)
        net = Net(net_key)
        params, static = eqx.partition(net, eqx.is_array)
        opt_state = optimizer.init(params)
        obs, env_state = jax.vmap(env.reset)(jax.random.split(key, n_envs))
        cb_state = step_state = None
        if logwrap:
            step_state = logwrap_init(n_envs)
        if callback is not None:
            cb_state = callback.reset(ResetContext(), key=key)
            step_state = jax.vmap(lambda k: callback.step_reset(ResetContext(), key=k))(
                jax.random.split(key, n_envs))
            cb_state = callback.on_training_start(
                TrainingContext(cb_state, step_state, env, None, n_iters * n_steps * n_envs, 0,
                                opt_state), key=key)

        def rollout_step(carry, _):
            params, obs, env_state, step_state, key = carry
            key, k_act, k_env = jax.random.split(key, 3)
            net = eqx.combine(params, static)
            logits, value = jax.vmap(net)(obs)
            action = jax.random.categorical(k_act, logits)
            logp = jax.nn.log_softmax(logits)[jnp.arange(n_envs), action]
            next_obs, env_state, reward, done, _ = jax.vmap(env.step)(
                jax.random.split(k_env, n_envs), env_state, action)
            if callback is not None and step_tracking:
                ctx = StepContext(step_state, env, None, done, reward)
                step_state = jax.vmap(lambda c: callback.on_step(c, key=key))(ctx)
            out = (obs, action, logp, value, reward, done)
            if logwrap:
                step_state, info = logwrap_step(step_state, reward, done)
                out = (*out, info)
            return (params, next_obs, env_state, step_state, key), out

        def iteration(carry, i):
            params, opt_state, obs, env_state, cb_state, step_state, key = carry
            (params, obs, env_state, step_state, key), traj = jax.lax.scan(
                rollout_step, (params, obs, env_state, step_state, key), None, n_steps)
            o, a, logp_old, v, r, d = traj[:6]
            _, last_v = jax.vmap(eqx.combine(params, static))(obs)

            def gae(carry, x):
                adv, next_v = carry
                r, v, d = x
                delta = r + 0.99 * next_v * (1 - d) - v
                adv = delta + 0.99 * 0.95 * (1 - d) * adv
                return (adv, v), adv

            _, adv = jax.lax.scan(gae, (jnp.zeros(n_envs), last_v), (r, v, d), reverse=True)
            ret = adv + v
            flat = jax.tree.map(lambda x: x.reshape(n_steps * n_envs, *x.shape[2:]),
                                (o, a, logp_old, adv, ret))

            def loss_fn(params, batch):
                o, a, lp_old, adv, ret = batch
                logits, v = jax.vmap(eqx.combine(params, static))(o)
                logp_all = jax.nn.log_softmax(logits)
                lp = logp_all[jnp.arange(a.shape[0]), a]
                ratio = jnp.exp(lp - lp_old)
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                pg = -jnp.minimum(ratio * adv, jnp.clip(ratio, 0.8, 1.2) * adv).mean()
                vf = ((v - ret) ** 2).mean()
                ent = -(jnp.exp(logp_all) * logp_all).sum(-1).mean()
                kl = ((ratio - 1) - (lp - lp_old)).mean()
                clip = (jnp.abs(ratio - 1) > 0.2).mean()
                return pg + 0.5 * vf - 0.01 * ent, (pg, vf, ent, kl, clip)

            def epoch(carry, key):
                params, opt_state = carry
                perm = jax.random.permutation(key, n_steps * n_envs).reshape(minibatches, -1)

                def minibatch(carry, idx):
                    params, opt_state = carry
                    batch = jax.tree.map(lambda x: x[idx], flat)
                    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
                    updates, opt_state = optimizer.update(grads, opt_state)
                    return (optax.apply_updates(params, updates), opt_state), (loss, *aux)

                return jax.lax.scan(minibatch, (params, opt_state), perm)

            key, k_epochs = jax.random.split(key)
            (params, opt_state), stats = jax.lax.scan(
                epoch, (params, opt_state), jax.random.split(k_epochs, epochs))
            loss, pg, vf, ent, kl, clip = (s.mean() for s in stats)
            log = {"loss": loss, "policy_loss": pg, "value_loss": vf, "entropy": ent,
                   "approx_kl": kl, "clip_fraction": clip, "value_mean": v.mean(),
                   "reward_mean": r.mean()}
            if logwrap:  # PureJaxRL's metric: the mean return of the finished episodes
                info = traj[6]
                finished = info["returned_episode"]
                log["episode_return"] = (
                    jnp.sum(jnp.where(finished, info["returned_episode_returns"], 0.0))
                    / jnp.maximum(jnp.sum(finished), 1))
            if callback is not None:
                cb_state = callback.on_iteration(
                    IterationContext(cb_state, step_state, env, None, i + 1, opt_state, log),
                    key=key)
            out = log if log_out else log["loss"]
            if stop_read:
                out = (out, callax._host.stop_requested(i))
            return (params, opt_state, obs, env_state, cb_state, step_state, key), out

        carry = (params, opt_state, obs, env_state, cb_state, step_state, key)
        carry, logs = jax.lax.scan(iteration, carry, jnp.arange(n_iters))
        if callback is not None:
            callback.on_training_end(
                TrainingContext(carry[4], carry[5], env, None, n_iters * n_steps * n_envs,
                                n_iters, carry[1]), key=key)
        return logs

    return jax.jit(train)
