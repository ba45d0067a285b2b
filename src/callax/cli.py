"""The ``callax`` command line: ``callax train`` and ``callax summary``.

``callax train --algo ppo --env cartpole --seeds 2`` trains with every seed vmapped in one
jitted program and writes one TensorBoard run per seed (``<logdir>/<name>/seed_<i>``).
``callax summary DIR`` prints what the event files under ``DIR`` hold and, for runs with
several seeds, each tag's interquartile mean over seeds with a 95 % stratified-bootstrap
confidence interval. Neither needs TensorBoard:
event files are read back with callax's own reader (``callax._writer._read``).

Arguments are checked before JAX is even imported: bad input fails in milliseconds with a
one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

__all__ = ["main", "read_scalars", "summarize", "summarize_seeds"]

ALGOS = ("ppo", "sac")
ENVS = ("cartpole", "pendulum")
# (algo, env) -> default total timesteps per seed.
DEFAULT_TIMESTEPS = {
    ("ppo", "cartpole"): 150_000,
    ("ppo", "pendulum"): 300_000,
    ("sac", "pendulum"): 20_000,
}
CONTINUOUS_ENVS = ("pendulum",)


class UsageError(Exception):
    """Bad command-line input (reported as one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="callax", description="Train reference agents with callax callbacks "
                     "and inspect TensorBoard event files.")
    sub = parser.add_subparsers(dest="command", metavar="{train,summary}")
    sub.required = True

    train = sub.add_parser("train", help="train PPO or SAC; one TensorBoard run per seed")
    train.add_argument("--algo", required=True, choices=ALGOS, help="the algorithm")
    train.add_argument("--env", required=True, choices=ENVS, help="the environment")
    train.add_argument("--total-timesteps", type=_positive_int, default=None, metavar="N",
                       help="env steps per seed (default: " + ", ".join(
                           f"{a}/{e} {n:,}" for (a, e), n in DEFAULT_TIMESTEPS.items()) + ")")
    train.add_argument("--seeds", type=_positive_int, default=1, metavar="K",
                       help="seeds trained at once with jax.vmap (default: 1)")
    train.add_argument("--seed", type=int, default=0, help="base random seed (default: 0)")
    train.add_argument("--logdir", default="runs", metavar="DIR",
                       help="parent directory of runs (default: runs)")
    train.add_argument("--name", default=None,
                       help="run name, a directory under DIR (default: <algo>_<env>_<time>)")
    train.add_argument("--writer", action="append", choices=("tensorboard", "jsonl", "wandb"),
                       default=None, dest="writers", metavar="{tensorboard,jsonl,wandb}",
                       help="where the metrics go; repeat for several (default: tensorboard)")
    train.add_argument("--no-progress", action="store_true", help="no progress line")
    train.add_argument("--table", action="store_true",
                       help="print Stable-Baselines3's console table on stdout (about every "
                       "4096 steps)")
    train.add_argument("--no-histograms", action="store_true",
                       help="write no histograms (default: actions, rewards and PPO's value "
                       "estimates about every 4096 steps)")
    train.add_argument("--stats-window-size", type=_positive_int, default=100, metavar="N",
                       help="episodes averaged by rollout/ep_rew_mean and rollout/ep_len_mean "
                       "(default: 100, as Stable-Baselines3)")
    cache = train.add_mutually_exclusive_group()
    cache.add_argument("--compilation-cache", default=None, metavar="DIR",
                       help="JAX's persistent compilation cache: a second run of the same "
                       "configuration loads the compiled program instead of compiling it "
                       "(default: $JAX_COMPILATION_CACHE_DIR, else ~/.cache/callax/jax)")
    cache.add_argument("--no-compilation-cache", action="store_true",
                       help="compile every time")

    summary = sub.add_parser("summary", help="summarise the scalars of the event files in DIR")
    summary.add_argument("dir", metavar="DIR", help="a run, or a directory of runs")
    summary.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


# --- checks (no JAX) --------------------------------------------------------------------------


def _check_logdir(logdir: str) -> str:
    logdir = os.path.abspath(os.path.expanduser(logdir))
    try:
        os.makedirs(logdir, exist_ok=True)
        with tempfile.TemporaryFile(dir=logdir):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UsageError(f"log directory {logdir!r} is not writable: {reason}") from None
    return logdir


def _check_name(name: str | None) -> None:
    if name is None:
        return
    if not name or name.strip() != name or name in (".", "..") or "/" in name or (
        os.sep in name or any(ord(c) < 32 for c in name)
    ):
        raise UsageError(f"invalid run name {name!r}: use a single directory name")


def _check_train_args(args: argparse.Namespace) -> None:
    if args.algo == "sac" and args.env not in CONTINUOUS_ENVS:
        raise UsageError(f"sac needs continuous actions; {args.env} has discrete actions "
                         "(use --algo ppo, or --env pendulum)")
    _check_name(args.name)
    args.logdir = _check_logdir(args.logdir)
    if args.total_timesteps is None:
        args.total_timesteps = DEFAULT_TIMESTEPS[(args.algo, args.env)]
    if args.total_timesteps * args.seeds >= 2**31:
        raise UsageError("total timesteps times seeds must stay below 2**31 (int32 steps)")


# --- training ---------------------------------------------------------------------------------


def _make_algo(algo: str, env: str) -> Any:
    from .train import PPO, SAC

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
    from .callbacks import rollout_histograms

    return {"rollout_histograms/" + tag.rpartition("/")[2]: values
            for tag, values in rollout_histograms(ctx).items()}


def _cache_dir(args: argparse.Namespace) -> str | None:
    """Where ``callax train`` keeps compiled programs (``None``: nowhere)."""
    if getattr(args, "no_compilation_cache", False):
        return None
    chosen = getattr(args, "compilation_cache", None)
    if chosen:
        return chosen
    from_env = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if from_env:
        return from_env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "callax", "jax")


@contextlib.contextmanager
def _compilation_cache(directory: str | None) -> Iterator[list[int]]:
    """JAX's persistent compilation cache in ``directory`` while the block compiles (a
    directory that cannot be made: no cache, one line on stderr); the previous settings
    after it. Yields a list that counts the programs loaded from the cache."""
    import jax

    hits: list[int] = []
    if directory is not None:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as error:
            print(f"callax: no compilation cache: {directory!r}: {error.strerror or error}",
                  file=sys.stderr)
            directory = None
    if directory is None:
        yield hits
        return
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    before = {name: getattr(jax.config, name) for name in names}

    def listen(event: str, **kwargs: Any) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            hits.append(1)

    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    # JAX decides once per process whether it uses the cache (at the first compilation, which
    # may have come before): decide again now, and again after the block.
    compilation_cache.reset_cache()
    jax.monitoring.register_event_listener(listen)
    try:
        yield hits
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()
        try:
            from jax._src import monitoring

            monitoring.unregister_event_listener(listen)
        except (ImportError, AttributeError, AssertionError):  # pragma: no cover
            pass


def _train(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    import jax

    from . import envs
    from ._writer import WriteError, _interrupt, flush_all
    from .callbacks import ProgressBarCallback, TensorBoardCallback

    # Ctrl-C that must end the process while it runs no Python code (compiling, a second
    # Ctrl-C during training): status 130 after one line, like a shell's.
    _interrupt.exit_status = 130
    env = envs.make(args.env)
    algo = _make_algo(args.algo, args.env)
    total = args.total_timesteps
    name = args.name or "{}_{}_{}".format(
        args.algo, args.env, datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    )
    writers = tuple(dict.fromkeys(getattr(args, "writers", None) or ("tensorboard",)))
    # SB3's names only (rollout/ep_rew_mean, ...): lerax's moving averages would be a second
    # "return" chart.
    tensorboard = TensorBoardCallback(name=name, log_dir=args.logdir, moving_average=False,
                                      stats_window_size=args.stats_window_size,
                                      writers=writers)
    run_dir = tensorboard.tb_writer.log_dir
    callbacks: list[Any] = [tensorboard]
    # About every 4096 steps, and at least four times in a short run.
    every = max(1, min(4096, total // 4) // (algo.n_envs * algo.n_steps))
    if not args.no_progress:
        per_iteration = algo.n_envs * algo.n_steps
        callbacks.append(ProgressBarCallback(total, every=max(1, 4096 // per_iteration)))
    # The HParams dashboard lists each seed's run with the algorithm's settings.
    from .callbacks import HParamsCallback, hparams_of

    callbacks.append(HParamsCallback(tensorboard.tb_writer,
                                     {**hparams_of(algo), "env": args.env}))
    if not getattr(args, "no_histograms", False):
        from .callbacks import HistogramCallback

        callbacks.append(HistogramCallback(tensorboard.tb_writer, every=every,
                                           select=_histograms))
    if getattr(args, "table", False):
        from .callbacks import ConsoleTableCallback

        callbacks.append(ConsoleTableCallback(every=every,
                                              stats_window_size=args.stats_window_size))
    options: dict[str, Any] = {}
    if args.algo == "sac":
        # HOOK POINT (SAC events): SAC records Maze-style SACEvents through a JIT writer;
        # sharing the TensorBoard callback's writer puts them in the same run (seed_<i>).
        options["events"] = tensorboard.tb_writer

    def learn(key, callbacks, options):
        return algo.learn(env, total_timesteps=total, key=key, callback=callbacks, **options)

    keys = jax.random.split(jax.random.key(args.seed), args.seeds)
    print(f"callax: training {args.algo} on {env.name}, {args.seeds} seed(s) x {total:,} "
          f"steps -> {run_dir}", file=sys.stderr)
    print("callax: compiling...", file=sys.stderr, flush=True)
    if args.seeds == 1:  # several seeds: the seeds run carries the layout
        from .callbacks._seeds import write_layout

        write_layout(int(tensorboard.tb_writer.handle), 0, seeds=False)
    # Callbacks are arguments, not constants: a new callback does not recompile. Its host
    # calls reach Python by a registered name, so the program can come from JAX's cache.
    train = jax.jit(jax.vmap(learn, in_axes=(0, None, None)))
    with _compilation_cache(_cache_dir(args)) as hits:
        compiled = train.lower(keys, callbacks, options).compile()
    compiled_at = time.perf_counter()
    how = "loaded from the compilation cache" if hits else "compiled"
    print(f"callax: {how} in {compiled_at - start:.1f} s", file=sys.stderr, flush=True)
    result = jax.block_until_ready(compiled(keys, callbacks, options))
    trained_at = time.perf_counter()
    jax.effects_barrier()
    write_error = None
    try:
        flush_all()
    except WriteError as error:  # the training is done; its result is kept
        write_error = error

    steps = [int(s) for s in jax.device_get(result.total_timesteps)]
    run_time = trained_at - compiled_at
    print(f"run: {run_dir}")
    for seed in range(args.seeds):
        scalars = read_scalars(os.path.join(run_dir, f"seed_{seed}"))
        points = scalars.get("rollout/ep_rew_mean", [])
        final = f"{points[-1][1]:.1f}" if points else "n/a (no finished episode)"
        print(f"seed {seed}: final ep_rew_mean {final} after {steps[seed]:,} steps")
    print(f"wall time {trained_at - start:.1f} s (compile {compiled_at - start:.1f} s, "
          f"train {run_time:.1f} s), {sum(steps) / max(run_time, 1e-9):,.0f} steps/s")
    print(_view_command(args.logdir))
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


def _view_command(logdir: str) -> str:
    """The shell command that opens ``logdir`` in TensorBoard, with its install if needed."""
    import importlib.util
    import shlex

    view = f"tensorboard --logdir {shlex.quote(logdir)}"
    if importlib.util.find_spec("tensorboard") is None:
        return f"python -m pip install tensorboard && {view}"
    return view


# --- summary ----------------------------------------------------------------------------------


def _event_dirs(root: str) -> list[str]:
    from ._writer._read import is_run_file

    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        if any(is_run_file(f) for f in files):
            found.append(directory)
    return sorted(found)


def read_scalars(directory: str) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of the event files directly in ``directory`` (or, if
    it has none, of its ``metrics.jsonl`` from the JSON lines writer): every
    point TensorBoard's ``EventAccumulator`` would keep, read without TensorBoard (so the core
    install suffices). A truncated last record, as in a file still being written, is not an
    error: the points before it are read. A corrupt record is skipped with a warning."""
    from ._writer._read import read_run

    return read_run(directory)


def summarize(root: str) -> dict[str, dict[str, dict[str, Any]]]:
    """``{run: {tag: {points, last_step, last_value, min, max}}}`` for every directory under
    ``root`` holding event files (``run`` is its path relative to ``root``, ``"."`` for
    ``root`` itself). ``min`` and ``max`` ignore ``NaN`` values."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for directory in _event_dirs(root):
        run = os.path.relpath(directory, root)
        tags = {}
        for tag, points in read_scalars(directory).items():
            if not points:
                continue
            values = [v for _, v in points if not math.isnan(v)]  # NaN: no min/max
            tags[tag] = {
                "points": len(points),
                "last_step": points[-1][0],
                "last_value": points[-1][1],
                "min": min(values) if values else math.nan,
                "max": max(values) if values else math.nan,
            }
        summary[run] = tags
    return summary


def summarize_seeds(root: str, *, reps: int = 2000) -> dict[str, dict[str, dict[str, Any]]]:
    """Over the seeds of each run with several (directories ``<group>/seed_<i>``):
    ``{"<group>/seed_*": {tag: {seeds, iqm, ci95_low, ci95_high}}}`` where ``iqm`` is the
    interquartile mean of the seeds' last values of ``tag`` and ``ci95_*`` its 95 %
    stratified-bootstrap confidence interval (Agarwal et al. 2021; ``reps`` replicates,
    fixed seed). A tag counts the seeds whose last value is not ``NaN``; at least two."""
    import re

    from ._iqm import interquartile_mean, stratified_bootstrap_ci

    groups: dict[str, list[str]] = {}
    for directory in _event_dirs(root):
        parent, name = os.path.split(os.path.relpath(directory, root))
        if re.fullmatch(r"seed_\d+", name):
            groups.setdefault(parent, []).append(directory)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for parent, directories in sorted(groups.items()):
        if len(directories) < 2:
            continue
        last: dict[str, list[float]] = {}
        for directory in directories:
            for tag, points in read_scalars(directory).items():
                if points and not math.isnan(points[-1][1]):
                    last.setdefault(tag, []).append(points[-1][1])
        tags = {}
        for tag, values in sorted(last.items()):
            if len(values) < 2:
                continue
            low, high = stratified_bootstrap_ci(values, reps=reps)
            tags[tag] = {"seeds": len(values), "iqm": interquartile_mean(values),
                         "ci95_low": low, "ci95_high": high}
        out[os.path.join(parent, "seed_*")] = tags
    return out


def _seeds_table(over: dict[str, dict[str, dict[str, Any]]]) -> str:
    header = ("seeds of", "tag", "seeds", "IQM", "95% CI")
    rows = [(group, tag, str(s["seeds"]), _format_value(s["iqm"]),
             f"[{_format_value(s['ci95_low'])}, {_format_value(s['ci95_high'])}]")
            for group, tags in over.items() for tag, s in tags.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    left = (True, True, False, False, True)

    def line(row):
        cells = [c.ljust(w) if is_left else c.rjust(w)
                 for c, w, is_left in zip(row, widths, left, strict=True)]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def _json_safe(obj: Any) -> Any:
    """NaN becomes ``null`` and infinities ``"inf"``/``"-inf"``: the output is strict JSON."""
    if isinstance(obj, dict):
        return {key: _json_safe(value) for key, value in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def _format_value(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
        return f"{value:.4e}"
    return f"{value:.4f}"


def _table(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    header = ("run", "tag", "points", "last step", "last value", "min", "max")
    rows = [
        (run, tag, str(s["points"]), str(s["last_step"]), _format_value(s["last_value"]),
         _format_value(s["min"]), _format_value(s["max"]))
        for run, tags in summary.items() for tag, s in tags.items()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    left = (True, True, False, False, False, False, False)

    def line(row):
        cells = [c.ljust(w) if is_left else c.rjust(w)
                 for c, w, is_left in zip(row, widths, left, strict=True)]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def _summary(args: argparse.Namespace) -> int:
    root = args.dir
    if not os.path.isdir(root):
        raise UsageError(f"no such directory: {root!r}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = summarize(root)
    for warning in caught:  # corrupt records: one line each, not a source listing
        print(f"callax: warning: {warning.message}", file=sys.stderr)
    if not summary:
        raise UsageError(f"no TensorBoard event files under {root!r}")
    over = summarize_seeds(root)
    if args.json:
        print(json.dumps(_json_safe({**summary, **over}), indent=2, allow_nan=False))
    else:
        print(_table(summary))
        if over:
            print("\nOver seeds: interquartile mean of the seeds' last values, 95% "
                  "stratified-bootstrap CI (Agarwal et al. 2021)")
            print(_seeds_table(over))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``callax`` command line with ``argv`` (default: ``sys.argv[1:]``); returns the
    exit status (0 on success, 2 on bad input)."""
    try:
        args = _build_parser().parse_args(argv)
        if args.command == "train":
            _check_train_args(args)
            return _train(args)
        return _summary(args)
    except UsageError as error:
        print(f"callax: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Written what was handed over already (callax's handler); leave at once: Python's
        # teardown while XLA compiles in other threads could crash.
        print("callax: interrupted", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
