"""Cost of recording ``SACEvents``: the same jitted SAC run with and without the recorder.

Both programs are compiled first; then rounds alternate between them (so that load from other
processes hits both alike) and the script prints the median wall time and the median process
CPU time (all threads; less sensitive to other processes sharing the cores) of each, and their
ratios.

    python benchmarks/bench_sac_events.py [--steps 5000] [--rounds 15] [--hidden 64,64]

The default configuration is the one ``callax train --algo sac --env pendulum`` uses
(``SAC(learning_rate=1e-3, hidden_sizes=(64, 64))``, batch 256, a TensorBoardCallback; the
events go through its writer). Every round writes a fresh run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax

import callax
from callax.envs import Pendulum
from callax.train._sac import SAC


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000, help="env steps per run")
    parser.add_argument("--rounds", type=int, default=15, help="timed runs of each variant")
    parser.add_argument("--hidden", default="64,64", help="hidden layer sizes")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=1, help="seeds vmapped in one run")
    parser.add_argument("--no-tensorboard", action="store_true",
                        help="run both variants without a TensorBoardCallback")
    args = parser.parse_args()

    env = Pendulum()
    sac = SAC(learning_rate=1e-3, batch_size=args.batch_size,
              hidden_sizes=tuple(int(h) for h in args.hidden.split(",")))
    log_dir = tempfile.mkdtemp(prefix="callax-bench-sac-")

    def learn(key, callback, events):
        return sac.learn(env, total_timesteps=args.steps, key=key, callback=callback,
                         events=events)

    # Callbacks and writers are arguments: every round writes to a fresh run (steps must
    # increase per run) without recompiling.
    train = jax.jit(jax.vmap(learn, in_axes=(0, None, None)))

    def arguments(variant: str) -> tuple:
        # Both variants log like `callax train` (a TensorBoardCallback) unless told not to: a
        # program holding any host callback is executed differently by XLA on CPU, which would
        # otherwise be counted as part of the events' cost (or gain).
        callback = None
        if not args.no_tensorboard:
            callback = callax.TensorBoardCallback(log_dir=os.path.join(log_dir, variant))
        if variant == "without events":
            return callback, None
        if callback is not None:
            return callback, callback.tb_writer
        return None, callax.JITSummaryWriter(os.path.join(log_dir, variant, "events"))

    keys = jax.random.split(jax.random.key(0), args.seeds)
    variants = ("without events", "with events")
    compiled = {}
    for name in variants:
        start = time.perf_counter()
        compiled[name] = train.lower(keys, *arguments(name)).compile()
        print(f"compile {name}: {time.perf_counter() - start:.1f} s")
    for name, fn in compiled.items():  # warm-up run
        jax.block_until_ready(fn(keys, *arguments(name)))

    wall: dict[str, list[float]] = {name: [] for name in compiled}
    cpu: dict[str, list[float]] = {name: [] for name in compiled}
    for round_ in range(args.rounds):
        order = list(compiled) if round_ % 2 == 0 else list(reversed(compiled))
        for name in order:
            fn_args = arguments(name)
            start, start_cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(compiled[name](keys, *fn_args))
            jax.effects_barrier()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    callax.flush_all()

    for label, times in (("wall", wall), ("cpu", cpu)):
        for name, values in times.items():
            spread = ", ".join(f"{t:.2f}" for t in values)
            print(f"{label:>4} {name:>15}: median {statistics.median(values):.3f} s  ({spread})")
    ratios = {label: statistics.median(t["with events"]) / statistics.median(t["without events"])
              for label, t in (("wall", wall), ("cpu", cpu))}
    print(f"ratio with/without events (medians): wall {ratios['wall']:.3f}x, "
          f"cpu {ratios['cpu']:.3f}x  ({args.steps} env steps x {args.seeds} seed(s), hidden "
          f"{args.hidden}, batch {args.batch_size}, {args.rounds} interleaved rounds)")


if __name__ == "__main__":
    main()
