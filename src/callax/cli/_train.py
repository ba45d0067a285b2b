"""``callax train``: PPO or SAC with callax's callbacks, every seed vmapped in one jitted
program whose step budget is an argument (one compiled program for every budget)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import time
from typing import Any

from ._cache import cache_dir, compilation_cache
from ._closing import final_values, next_steps, outputs

__all__ = ["make_algo", "train_command"]


def make_algo(algo: str, env: str) -> Any:
    """The algorithm ``callax train`` runs for `algo` on `env`."""
    from ..train import PPO, SAC

    if algo == "ppo":
        if env == "pendulum":
            # Continuous PPO: long rollouts, short horizon (rl-baselines3-zoo, without gSDE).
            return PPO(n_envs=4, n_steps=256, batch_size=256, n_epochs=10, learning_rate=1e-3,
                       gamma=0.9, gae_lambda=0.95, normalize_obs=False, log_std_init=-0.5)
        return PPO()
    # rl-baselines3-zoo's Pendulum-v1 learning rate, with 64x64 networks instead of 256x256
    # (learns Pendulum as well, with ~15x less compute per update on a CPU).
    return SAC(learning_rate=1e-3, hidden_sizes=(64, 64))


def _histograms(ctx: Any) -> dict[str, Any]:
    """The rollout's histograms under ``rollout_histograms/``: their own group, after
    ``rollout/`` (TensorBoard orders groups by name), so that the episode statistics open
    the ``rollout`` group."""
    from ..callbacks import rollout_histograms

    return {"rollout_histograms/" + tag.rpartition("/")[2]: values
            for tag, values in rollout_histograms(ctx).items()}


@dataclasses.dataclass
class _Setup:
    env: Any
    algo: Any
    writers: tuple[str, ...]
    run_dir: str
    tb_writer: Any
    callbacks: list[Any]
    options: dict[str, Any]
    sweep: Any = None  # a callax.Sweep (--sweep) or None


def _setup(args: argparse.Namespace) -> _Setup:
    """The environment, algorithm, run and callbacks of ``args``. Nothing here depends on
    ``--total-timesteps`` but the progress line's total and the histograms' period, which
    are data of the callbacks, not constants of the program."""
    from .. import envs
    from ..callbacks import HParamsCallback, ProgressBarCallback, TensorBoardCallback, hparams_of

    env, algo, total = envs.make(args.env), make_algo(args.algo, args.env), args.total_timesteps
    name = args.name or "{}_{}_{}".format(
        args.algo, args.env, datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    writers = tuple(dict.fromkeys(getattr(args, "writers", None) or ("tensorboard",)))
    # SB3's names only (rollout/ep_rew_mean, ...): lerax's moving averages would be a second
    # "return" chart. With one seed there are no statistics over seeds.
    sweep = None
    if getattr(args, "sweep", None):
        from .._sweep import Sweep

        sweep = Sweep.grid(dict(args.sweep), seeds=args.seeds)
    tensorboard = TensorBoardCallback(name=name, log_dir=args.logdir, moving_average=False,
                                      stats_window_size=args.stats_window_size,
                                      writers=outputs(writers), seeds_run=args.seeds > 1,
                                      sweep=sweep)
    tb_writer = tensorboard.tb_writer
    per_iteration = algo.n_envs * algo.n_steps
    callbacks: list[Any] = [tensorboard]
    if not args.no_progress:
        callbacks.append(ProgressBarCallback(total, every=max(1, 4096 // per_iteration)))
    # The HParams dashboard lists each seed's run with the algorithm's settings.
    callbacks.append(HParamsCallback(tb_writer, {**hparams_of(algo), "env": args.env}))
    # About every 4096 steps, and at least four times in a short run.
    every = max(1, min(4096, total // 4) // per_iteration)
    if not getattr(args, "no_histograms", False):
        from ..callbacks import HistogramCallback

        callbacks.append(HistogramCallback(tb_writer, every=every, select=_histograms))
    if getattr(args, "table", False):
        from ..callbacks import ConsoleTableCallback

        callbacks.append(ConsoleTableCallback(every=every,
                                              stats_window_size=args.stats_window_size))
    # SAC records Maze-style SACEvents through the TensorBoard callback's writer: the same
    # run (seed_<i>).
    options = {"events": tb_writer} if args.algo == "sac" else {}
    return _Setup(env, algo, writers, tb_writer.log_dir, tb_writer, callbacks, options, sweep)


def _run(args: argparse.Namespace, setup: _Setup, start: float) -> tuple[Any, float, float]:
    """Compile (or load from the cache) and run; returns the result and when compiling and
    training ended."""
    import jax
    import jax.numpy as jnp

    algo, env = setup.algo, setup.env

    def learn(key, total, callbacks, options, hparams=None):
        return algo.learn(env, total_timesteps=total, key=key, callback=callbacks,
                          hparams=hparams, **options)

    keys = jax.random.split(jax.random.key(args.seed), args.seeds)
    total = jnp.asarray(args.total_timesteps, jnp.int32)  # traced: any budget, one program
    configs = f"{setup.sweep.configurations} configuration(s) x " if setup.sweep else ""
    print(f"callax: training {args.algo} on {env.name}, {configs}{args.seeds} seed(s) x "
          f"{args.total_timesteps:,} steps -> {setup.run_dir}", file=sys.stderr)
    print("callax: compiling...", file=sys.stderr, flush=True)
    if args.seeds == 1:  # several seeds: the band run carries the layout
        from ..callbacks._seeds import write_layout

        write_layout(int(setup.tb_writer.handle), 0, seeds=False)
    # Callbacks are arguments, not constants: a new callback does not recompile. Its host
    # calls reach Python by a registered name, so the program can come from JAX's cache.
    if setup.sweep is None:
        train = jax.jit(jax.vmap(learn, in_axes=(0, None, None, None)))
        arguments = (keys, total, setup.callbacks, setup.options)
    else:  # the grid and the seeds in one program; the sweep's values are an argument too
        def sweep_learn(keys, total, callbacks, options, sweep):
            return sweep.vmap(lambda config, key: learn(key, total, callbacks, options,
                                                        config))(keys)

        train = jax.jit(sweep_learn)
        arguments = (keys, total, setup.callbacks, setup.options, setup.sweep)
    with compilation_cache(cache_dir(args)) as hits:
        compiled = train.lower(*arguments).compile()
    compiled_at = time.perf_counter()
    how = "loaded from the compilation cache" if hits else "compiled"
    print(f"callax: {how} in {compiled_at - start:.1f} s", file=sys.stderr, flush=True)
    result = jax.block_until_ready(compiled(*arguments))
    return result, compiled_at, time.perf_counter()


def train_command(args: argparse.Namespace) -> int:
    """``callax train``: returns the exit status (0; 1 after a write error; 130 after
    Ctrl-C)."""
    start = time.perf_counter()
    import jax

    from .._writer import WriteError, _interrupt, flush_all

    # Ctrl-C that must end the process while it runs no Python code (compiling, a second
    # Ctrl-C during training): status 130 after one line, like a shell's.
    _interrupt.exit_status = 130
    setup = _setup(args)
    offline_before = len(_offline_runs())
    result, compiled_at, trained_at = _run(args, setup, start)
    jax.effects_barrier()
    write_error = None
    try:
        flush_all()
    except WriteError as error:  # the training is done; its result is kept
        write_error = error
    steps = [int(s) for s in jax.device_get(result.total_timesteps).reshape(-1)]
    run_time = trained_at - compiled_at
    print(f"run: {setup.run_dir}")
    _print_finals(setup, args.seeds, steps)
    print(f"wall time {trained_at - start:.1f} s (compile {compiled_at - start:.1f} s, "
          f"train {run_time:.1f} s), {sum(steps) / max(run_time, 1e-9):,.0f} steps/s")
    print("next:")
    for line in next_steps(setup.run_dir, _offline_runs()[offline_before:]):
        print(f"  {line}")
    return _status(write_error, result, steps, setup.run_dir)


def _print_finals(setup: _Setup, seeds: int, steps: list[int]) -> None:
    """Each seed's final return (in a sweep: each configuration's seeds, by name)."""
    if setup.sweep is None:
        groups = [("", setup.run_dir)]
    else:
        import os

        layout = setup.sweep.layout()
        groups = [(f"{layout.name(c)} ", os.path.join(setup.run_dir, layout.name(c)))
                  for c in range(layout.configurations)]
    for index, (label, directory) in enumerate(groups):
        for seed, final in enumerate(final_values(directory, seeds)):
            shown = f"{final:.1f}" if final is not None else "n/a (no finished episode)"
            print(f"{label}seed {seed}: final ep_rew_mean {shown} after "
                  f"{steps[index * seeds + seed]:,} steps")


def _offline_runs() -> list[str]:
    """The offline W&B runs made so far (none when the W&B writer was never imported)."""
    module = sys.modules.get("callax._writer._wandb")
    return list(getattr(module, "offline_runs", []))


def _status(write_error: Exception | None, result: Any, steps: list[int], run_dir: str) -> int:
    import jax

    if write_error is not None:  # one line, no traceback (the result above is complete)
        message = str(write_error).removeprefix("callax: ")
        others = len(getattr(write_error, "__notes__", []))
        more = f" (and {others} more run(s) with write errors)" if others else ""
        print(f"callax: error: {message}{more}", file=sys.stderr)
        return 1
    if bool(jax.device_get(result.interrupted).any()):
        print(f"callax: stopped by Ctrl-C after {max(steps):,} steps (iteration "
              f"{int(jax.device_get(result.iterations).max())}); the run so far: {run_dir}",
              file=sys.stderr)
        return 130
    return 0
