"""The cases of ``bench_logging.py`` (imported only once the process is pinned or not)."""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import jax
import numpy as np
from _ppo_like import make_train

import callax
from callax import _writer as host


def timed(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    jax.effects_barrier()
    return time.perf_counter() - start


def _over_seeds(base, logged, seeds):
    """Both trainings vmapped over ``seeds`` seeds (jitted), and their key(s)."""
    if not seeds:
        return base, logged, jax.random.key(0)
    vmapped = (jax.jit(jax.vmap(f, in_axes=(0, None))) for f in (base, logged))
    return *vmapped, jax.random.split(jax.random.key(0), seeds)


def compare(name, n_envs, n_steps, n_iters, rounds, *, seeds=None, logdir, log_out=True,
            stop_read=False, emit_base=False):
    """Median env-steps/s with and without logging, measured in interleaved rounds.

    With ``stop_read`` both sides log, and the "logging" side also reads the Ctrl-C stop
    flag once per iteration: the ratio is the cost of that read. With ``emit_base`` both
    sides log, the base's host calls lowered with ``emit_python_callback`` (JAX's callback
    target) and the other's with callax's FFI target: the ratio is the FFI's cost."""

    def callback():  # a fresh run each time; same pytree structure, so no recompilation
        return callax.TensorBoardCallback(name=name, log_dir=logdir)

    base = make_train(n_envs, n_steps, n_iters, logging=stop_read or emit_base,
                      log_out=log_out)
    logged = make_train(n_envs, n_steps, n_iters, logging=True, log_out=log_out,
                        stop_read=stop_read)
    base, logged, key = _over_seeds(base, logged, seeds)
    from callax._host import _ffi

    ffi = _ffi.AVAILABLE
    _ffi.AVAILABLE = ffi and not emit_base  # the choice is made when a program is lowered
    timed(base, key, callback())
    _ffi.AVAILABLE = ffi
    for _ in range(2):  # compile, then one warm run each
        timed(base, key, callback()), timed(logged, key, callback())
    calls = []
    original = host.write
    host.write = lambda *a, **k: (calls.append(len(a[2])), original(*a, **k))
    try:
        times = {"base": [], "logged": []}
        for r in range(rounds):
            order = ("base", "logged") if r % 2 == 0 else ("logged", "base")
            for which in order:
                times[which].append(timed(base if which == "base" else logged, key, callback()))
    finally:
        host.write = original
    callax.flush_all()
    steps = n_envs * n_steps * n_iters * (seeds or 1)
    ratios = sorted(b / a for a, b in zip(times["base"], times["logged"], strict=True))
    quartiles = statistics.quantiles(ratios, n=4)
    med_base, med_logged = statistics.median(times["base"]), statistics.median(times["logged"])
    print(f"{name:9s} no logging {steps / med_base:9,.0f} steps/s | logging "
          f"{steps / med_logged:9,.0f} steps/s | ratio of medians {med_logged / med_base:.3f}"
          f" | per-round ratio median {statistics.median(ratios):.3f}"
          f" (IQR {quartiles[0]:.3f}–{quartiles[2]:.3f})"
          f" | host calls per run {len(calls) // rounds} for {seeds or 1} seed(s)", flush=True)
    print(f"RESULT {name} {med_logged / med_base:.4f}", flush=True)
    return med_logged / med_base


def interleaved(one, arms, rounds):
    """``{arm: [one(arm) per round]}``: each arm compiled and run once warm first, then
    ``rounds`` rounds, the arms' order reversed every other round."""
    for arm in arms:  # compile, then one warm run each
        one(arm), one(arm)
    times = {arm: [] for arm in arms}
    for r in range(rounds):
        for arm in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
            times[arm].append(one(arm))
    return times


def compare_writers(name, n_envs, n_steps, n_iters, rounds, *, logdir, seeds=None):
    """Median training time with no logging, TensorBoard alone, and TensorBoard + JSON lines
    + W&B (offline), in interleaved rounds of one process. The writers' own work happens on
    the writer thread: what is left of it when a training returns is timed apart (closing
    the run: W&B starts a run per seed at its first write and finishes it at close)."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_DIR", logdir)
    arms = {"none": None, "tensorboard": ("tensorboard",),
            "all3": ("tensorboard", "jsonl", "wandb")}
    base = make_train(n_envs, n_steps, n_iters)
    logged = make_train(n_envs, n_steps, n_iters, logging=True)
    base, logged, key = _over_seeds(base, logged, seeds)

    def one(arm):
        writers = arms[arm]
        callback = callax.TensorBoardCallback(name=f"{name}_{arm}", log_dir=logdir,
                                              writers=writers or ("tensorboard",))
        took = timed(base if writers is None else logged, key, callback)
        start = time.perf_counter()
        callback.tb_writer.close()
        return took, time.perf_counter() - start

    runs = interleaved(one, arms, rounds)  # (training time, close time) per round
    times = {arm: [took for took, _ in r] for arm, r in runs.items()}
    drains = {arm: [drain for _, drain in r] for arm, r in runs.items()}
    med = {arm: statistics.median(t) for arm, t in times.items()}
    steps = n_envs * n_steps * n_iters * (seeds or 1)
    print(f"{name:9s} " + " | ".join(
        f"{arm} {steps / med[arm]:9,.0f} steps/s (close {statistics.median(drains[arm]) * 1e3:.0f}"
        " ms)" for arm in arms)
        + f" | all3/tensorboard {med['all3'] / med['tensorboard']:.3f}"
        f" | all3/none {med['all3'] / med['none']:.3f}"
        f" | tensorboard/none {med['tensorboard'] / med['none']:.3f}", flush=True)
    print(f"RESULT {name}-all3/tb {med['all3'] / med['tensorboard']:.4f}", flush=True)
    print(f"RESULT {name}-all3/none {med['all3'] / med['none']:.4f}", flush=True)
    return med


def compare_sweep(name, n_envs, n_steps, n_iters, rounds, *, logdir):
    """A sweep of 4 configurations x 4 seeds (``callax.Sweep``: runs named by configuration,
    statistics per configuration) against 16 plain vmapped seeds, both logging the same
    PPO-like loop, in interleaved rounds: the ratio is what naming the sweep costs."""
    train = make_train(n_envs, n_steps, n_iters, logging=True)
    sweep = callax.Sweep({"learning_rate": [1e-2, 3e-3, 1e-3, 3e-4]}, seeds=4)
    arms = {
        "seeds16": (jax.jit(jax.vmap(train, in_axes=(0, None))),
                    jax.random.split(jax.random.key(0), 16), {}),
        "sweep4x4": (jax.jit(lambda keys, cb: sweep.vmap(lambda c, k: train(k, cb))(keys)),
                     jax.random.split(jax.random.key(0), 4), {"sweep": sweep}),
    }

    def one(arm):
        fn, keys, options = arms[arm]
        callback = callax.TensorBoardCallback(name=f"{name}_{arm}", log_dir=logdir, **options)
        return timed(fn, keys, callback)

    times = interleaved(one, arms, rounds)
    callax.flush_all()
    ratios = sorted(b / a for a, b in zip(times["seeds16"], times["sweep4x4"], strict=True))
    med = {arm: statistics.median(t) for arm, t in times.items()}
    steps = n_envs * n_steps * n_iters * 16
    print(f"{name:9s} 16 seeds {steps / med['seeds16']:9,.0f} steps/s | sweep 4x4 "
          f"{steps / med['sweep4x4']:9,.0f} steps/s | ratio of medians "
          f"{med['sweep4x4'] / med['seeds16']:.3f} | per-round ratio median "
          f"{statistics.median(ratios):.3f} (min {ratios[0]:.3f}, max {ratios[-1]:.3f})",
          flush=True)
    print(f"RESULT {name} {med['sweep4x4'] / med['seeds16']:.4f}", flush=True)
    return med


def compare_parts(name, n_envs, n_steps, n_iters, rounds, *, logdir):
    """Where logging's cost goes in the ``ppo`` loop: interleaved rounds of no logging, the
    default ``TensorBoardCallback``, the same without SB3's episode window
    (``stats_window_size=None``), the same without ``on_step`` (``on_iteration`` and the
    flushes only), and PureJaxRL's ``LogWrapper`` state with its stacked ``info`` (no
    callax). Prints each arm's ratio of medians to no logging, and callax / LogWrapper."""
    arms = {
        "none": (make_train(n_envs, n_steps, n_iters), {}),
        "callax": (make_train(n_envs, n_steps, n_iters, logging=True), {}),
        "callax-nowindow": (make_train(n_envs, n_steps, n_iters, logging=True),
                            {"stats_window_size": None}),
        "callax-iteration-only": (make_train(n_envs, n_steps, n_iters, logging=True,
                                             step_tracking=False), {}),
        "logwrapper": (make_train(n_envs, n_steps, n_iters, logwrap=True), {}),
    }
    key = jax.random.key(0)

    def one(arm):
        fn, options = arms[arm]
        return timed(fn, key, callax.TensorBoardCallback(name=f"{name}_{arm}", log_dir=logdir,
                                                         **options))

    times = interleaved(one, arms, rounds)
    med = {arm: statistics.median(t) for arm, t in times.items()}
    print(f"{name:9s} none {med['none'] * 1e3:.1f} ms | "
          + " | ".join(f"{arm}/none {med[arm] / med['none']:.3f}" for arm in list(arms)[1:])
          + f" | callax/logwrapper {med['callax'] / med['logwrapper']:.3f}", flush=True)
    for arm in list(arms)[1:]:
        print(f"RESULT {name}:{arm} {med[arm] / med['none']:.4f}", flush=True)
    return med


def writer_cost(n_rows=2000, n_tags=10):
    from tensorboardX import SummaryWriter

    tags = tuple(f"train/metric_{i}" for i in range(n_tags))
    values = np.random.default_rng(0).normal(size=(1, n_rows, n_tags)).astype(np.float32)
    steps = np.arange(n_rows, dtype=np.int64)[None]
    valid = np.ones_like(values, dtype=bool)
    with tempfile.TemporaryDirectory() as d:
        warm = host.open_run(os.path.join(d, "warm-up"))
        host.write(warm, tags, np.array([-1]), steps[:, :10], values[:, :10], valid[:, :10])
        host.flush(warm)
        handle = host.open_run(os.path.join(d, "callax"))
        start = time.perf_counter()
        host.write(handle, tags, np.array([-1]), steps, values, valid)
        host.flush(handle)
        ours = (time.perf_counter() - start) / (n_rows * n_tags) * 1e6
        writer = SummaryWriter(os.path.join(d, "tbx"))
        start = time.perf_counter()
        for row in range(n_rows // 4):
            for column, tag in enumerate(tags):
                writer.add_scalar(tag, float(values[0, row, column]), row)
        writer.flush()
        theirs = (time.perf_counter() - start) / (n_rows // 4 * n_tags) * 1e6
        writer.close()
    print(f"writer    callax {ours:.2f} µs/scalar (encode + write + flush) | "
          f"tensorboardX add_scalar {theirs:.2f} µs/scalar", flush=True)


def run(*, rounds: int, quick: bool, cores: str, cases: list[str]) -> None:
    """Run the named cases (validated by ``bench_logging.py``)."""
    scale = 0.1 if quick else 1.0
    usable = len(os.sched_getaffinity(0))
    print(f"== jax {jax.__version__} on {jax.devices()[0].platform}, {usable} of "
          f"{os.cpu_count()} cores usable ({'pinned' if cores == '1' else 'not pinned'}), "
          f"{rounds} interleaved rounds", flush=True)
    with tempfile.TemporaryDirectory() as logdir:
        iters = max(int(60 * scale), 2)
        if "ppo" in cases:
            compare("ppo", 4, 128, iters, rounds, logdir=logdir)
        if "ppo-nolog" in cases:
            compare("ppo-nolog", 4, 128, iters, rounds, logdir=logdir, log_out=False)
        if "ppo-stop" in cases:
            compare("ppo-stop", 4, 128, iters, rounds, logdir=logdir, stop_read=True)
        if "ffi" in cases:
            compare("ffi", 4, 128, iters, rounds, logdir=logdir, emit_base=True)
        if "ffi-tiny" in cases:
            compare("ffi-tiny", 1, 16, max(int(2000 * scale), 2), rounds, logdir=logdir,
                    emit_base=True)
        if "tiny" in cases:
            compare("tiny", 1, 16, max(int(2000 * scale), 2), rounds, logdir=logdir)
        if "vmap8" in cases:
            compare("vmap8", 4, 128, max(int(20 * scale), 2), rounds, seeds=8, logdir=logdir)
        if "writers" in cases:
            compare_writers("writers", 4, 128, iters, rounds, logdir=logdir)
        if "writers8" in cases:
            compare_writers("writers8", 4, 128, max(int(20 * scale), 2), rounds, seeds=8,
                            logdir=logdir)
        if "sweep" in cases:
            compare_sweep("sweep", 4, 128, max(int(20 * scale), 2), rounds, logdir=logdir)
        if "ppo-parts" in cases:
            compare_parts("ppo-parts", 4, 128, iters, rounds, logdir=logdir)
    if "writer" in cases:
        writer_cost()
