"""The ``callax`` argument parser and the checks made before JAX is imported."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from typing import NoReturn

__all__ = ["ALGOS", "CONTINUOUS_ENVS", "DEFAULT_TIMESTEPS", "ENVS", "UsageError",
           "build_parser", "check_train_args", "parse"]

ALGOS = ("ppo", "sac")
ENVS = ("cartpole", "pendulum")
# (algo, env) -> default total timesteps per seed.
DEFAULT_TIMESTEPS = {
    ("ppo", "cartpole"): 150_000,
    ("ppo", "pendulum"): 300_000,
    ("sac", "pendulum"): 20_000,
}
CONTINUOUS_ENVS = ("pendulum",)
DEFAULT_LOGDIR = "runs"


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


# The hyperparameters ``--sweep`` takes, per algorithm (the trainers' ``SWEEPABLE``; kept
# here so that the parser checks them before JAX is imported; tests compare the two).
SWEEPABLE = {
    "ppo": ("learning_rate", "clip_range", "ent_coef", "vf_coef", "gamma", "gae_lambda",
            "max_grad_norm"),
    "sac": ("learning_rate", "gamma", "tau"),
}


def _sweep_arg(text: str) -> tuple[str, tuple[float, ...]]:
    name, sep, values = text.partition("=")
    if not sep or not name or not values:
        raise argparse.ArgumentTypeError(f"expected NAME=V1,V2,..., got {text!r}")
    try:
        numbers = tuple(float(v) for v in values.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers after {name}=, got {values!r}"
                                         ) from None
    return name, numbers


def _add_train(sub) -> None:
    train = sub.add_parser("train", help="train PPO or SAC; one run per seed")
    train.add_argument("--algo", required=True, choices=ALGOS, help="the algorithm")
    train.add_argument("--env", required=True, choices=ENVS, help="the environment")
    train.add_argument("--total-timesteps", type=_positive_int, default=None, metavar="N",
                       help="env steps per seed (default: " + ", ".join(
                           f"{a}/{e} {n:,}" for (a, e), n in DEFAULT_TIMESTEPS.items()) + ")")
    train.add_argument("--seeds", type=_positive_int, default=1, metavar="K",
                       help="seeds trained at once with jax.vmap (default: 1)")
    train.add_argument("--seed", type=int, default=0, help="base random seed (default: 0)")
    train.add_argument("--sweep", action="append", type=_sweep_arg, default=None,
                       metavar="NAME=V1,V2,...",
                       help="sweep a hyperparameter (the trainer's field name); repeat for a "
                       "grid: every combination x --seeds seeds in one compiled program, "
                       "one run per configuration and seed")
    train.add_argument("--logdir", default=DEFAULT_LOGDIR, metavar="DIR",
                       help=f"parent directory of runs (default: {DEFAULT_LOGDIR})")
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
                       "configuration (any --total-timesteps) loads the compiled program "
                       "instead of compiling it (default: $JAX_COMPILATION_CACHE_DIR, else "
                       "~/.cache/callax/jax)")
    cache.add_argument("--no-compilation-cache", action="store_true",
                       help="compile every time")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``callax``; its ``error`` raises :class:`UsageError`."""
    parser = _Parser(prog="callax", description="Train reference agents with callax callbacks "
                     "and inspect what they wrote (event files, JSON lines).")
    sub = parser.add_subparsers(dest="command", metavar="{train,summary}")
    sub.required = True
    _add_train(sub)
    summary = sub.add_parser("summary", help="summarise the scalars of the runs in DIR")
    summary.add_argument("dir", metavar="DIR", nargs="?", default=DEFAULT_LOGDIR,
                         help="a run, or a directory of runs (default: "
                         f"{DEFAULT_LOGDIR}, where callax train writes)")
    summary.add_argument("--json", action="store_true", help="print JSON instead of a table")
    summary.add_argument("--rank-tag", metavar="TAG", default=None,
                         help="rank a sweep's configurations by the final value of TAG "
                              "(default: rollout/ep_rew_mean, else episode/return)")
    return parser


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


def check_train_args(args: argparse.Namespace, *, touch: bool = True) -> None:
    """What argparse cannot check of ``callax train``; fills in the default budget. With
    `touch`, the log directory is made and checked for writing (made absolute)."""
    if args.algo == "sac" and args.env not in CONTINUOUS_ENVS:
        raise UsageError(f"sac needs continuous actions; {args.env} has discrete actions "
                         "(use --algo ppo, or --env pendulum)")
    _check_name(args.name)
    if touch:
        args.logdir = _check_logdir(args.logdir)
    if args.total_timesteps is None:
        args.total_timesteps = DEFAULT_TIMESTEPS[(args.algo, args.env)]
    sweep = dict(args.sweep or [])
    if len(sweep) != len(args.sweep or []):
        raise UsageError("--sweep names a hyperparameter twice")
    unknown = sorted(set(sweep) - set(SWEEPABLE[args.algo]))
    if unknown:
        raise UsageError(f"{args.algo} cannot sweep {', '.join(unknown)}; it sweeps "
                         f"{', '.join(SWEEPABLE[args.algo])}")
    if any(not math.isfinite(v) for values in sweep.values() for v in values):
        raise UsageError("--sweep values must be finite numbers")
    if args.total_timesteps * args.seeds >= 2**31:
        raise UsageError("total timesteps times seeds must stay below 2**31 (int32 steps)")


def parse(argv, *, touch: bool = True) -> argparse.Namespace:
    """Parse and check ``argv`` as ``callax`` does (raises :class:`UsageError`); with
    ``touch=False`` nothing on disk is made or looked at (docs' commands are checked so)."""
    args = build_parser().parse_args(argv)
    if args.command == "train":
        check_train_args(args, touch=touch)
    return args
