"""A writer of one's own: CSV files, next to TensorBoard's event files.

A writer implements ``callax.writers.AbstractWriter`` for one seed of one run (its
``Destination``): ``write_scalars`` receives the rows the run kept (steps increasing per
tag, AUTO steps filled in, points whose step went back dropped), ``close`` releases the
file. callax makes one per seed directory at its first write, calls it from its writer
thread (never inside jit), and reports its errors like any write error.

    python examples/custom_writer.py [--logdir runs/csv_example]
    cat runs/csv_example/seed_0/metrics.csv
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp

import callax
from callax.writers import AbstractWriter, Destination


# --8<-- [start:CsvWriter]
class CsvWriter(AbstractWriter):
    """``<directory>/metrics.csv``: ``step,tag,value,wall_time`` per point."""

    def __init__(self, destination: Destination):
        os.makedirs(destination.directory, exist_ok=True)
        self.path = os.path.join(destination.directory, "metrics.csv")
        new = not os.path.exists(self.path)
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        if new:
            self.file.write("step,tag,value,wall_time\n")

    def write_scalars(self, tags, steps, values, valid, wall_times):
        for step, row, ok, wall in zip(steps.tolist(), values.tolist(), valid.tolist(),
                                       wall_times.tolist(), strict=True):
            for tag, value, present in zip(tags, row, ok, strict=True):
                if present:
                    self.file.write(f"{step},{tag},{value!r},{wall!r}\n")
        self.file.flush()  # readable at once, like the event files

    def close(self):
        self.file.close()
# --8<-- [end:CsvWriter]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default=os.path.join("runs", "csv_example"))
    args = parser.parse_args(argv)
    writer = callax.JITSummaryWriter(args.logdir, writers=("tensorboard", CsvWriter))

    @jax.jit
    def train(seeds):
        def one(seed):
            def body(x, step):
                writer.add_dict("train", {"x": x, "x2": x * x}, global_step=step)
                return x + seed, None

            return jax.lax.scan(body, 0.0, jnp.arange(5))[0]

        return jax.vmap(one)(seeds)

    train(jnp.arange(1.0, 3.0)).block_until_ready()
    writer.close()
    print(f"wrote {writer.log_dir}/seed_<i>/metrics.csv")
    return writer.log_dir


if __name__ == "__main__":
    main()
