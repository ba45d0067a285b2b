"""The ``callax`` command line: ``callax train`` and ``callax summary``.

``callax train --algo ppo --env cartpole --seeds 2`` trains with every seed vmapped in one
jitted program and writes one run per seed (``<logdir>/<name>/seed_<i>``) to the chosen
writers (``--writer``: TensorBoard by default, JSON lines, Weights & Biases), and with
several seeds their mean, min and max as runs ``<name>/seeds/{mean,min,max}``. The step
budget is an argument of the compiled program: a run with another ``--total-timesteps``
loads it from JAX's persistent compilation cache.

``callax summary [DIR]`` (default ``runs``) prints what the runs under ``DIR`` hold (event
files or JSON lines) and, for runs with several seeds, each outcome's interquartile mean over
seeds with a 95 % stratified-bootstrap confidence interval. Neither needs TensorBoard: event
files are read back with callax's own reader (``callax._writer._read``).

Arguments are checked before JAX is even imported: bad input fails in milliseconds with a
one-line error and exit status 2.

Modules: :mod:`._parser` (arguments and checks), :mod:`._train` (the training),
:mod:`._cache` (the compilation cache), :mod:`._closing` (the closing lines),
:mod:`._summary` (``callax summary``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ._closing import next_steps as next_steps, view_command as view_command
from ._parser import (
    ALGOS as ALGOS,
    DEFAULT_TIMESTEPS as DEFAULT_TIMESTEPS,
    ENVS as ENVS,
    UsageError as UsageError,
    build_parser as build_parser,
    parse as parse,
)
from ._summary import (
    is_outcome as is_outcome,
    read_scalars as read_scalars,
    summarize as summarize,
    summarize_seeds as summarize_seeds,
)

__all__ = ["main", "parse", "read_scalars", "summarize", "summarize_seeds"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``callax`` command line with ``argv`` (default: ``sys.argv[1:]``); returns the
    exit status (0 on success, 2 on bad input)."""
    try:
        args = parse(argv)
        if args.command == "train":
            from ._train import train_command

            return train_command(args)
        from ._summary import summary_command

        return summary_command(args)
    except UsageError as error:
        print(f"callax: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Written what was handed over already (callax's handler); leave at once: Python's
        # teardown while XLA compiles in other threads could crash.
        print("callax: interrupted", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)
