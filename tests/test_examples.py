import os
import runpy
import sys

from conftest import read_run, run_dirs

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")


def test_custom_loop_example(logdir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["custom_loop.py", "--iterations", "12",
                                      "--logdir", logdir])
    runpy.run_path(os.path.join(EXAMPLES, "custom_loop.py"), run_name="__main__")
    assert "12 iterations" in capsys.readouterr().out
    (run,) = run_dirs(logdir)
    assert run.endswith("_CartPole-v1_reinforce")
    scalars = read_run(os.path.join(logdir, run))
    assert [s for s, _ in scalars["train/loss"]] == [512 * (i + 1) for i in range(12)]
    assert {"episode/return", "train/entropy", "train/learning_rate"} <= set(scalars)


def test_custom_writer_example(tmp_path, capsys):
    import csv

    import jax

    from callax._writer._read import read_scalars

    namespace = runpy.run_path(os.path.join(EXAMPLES, "custom_writer.py"))
    run = namespace["main"](["--logdir", str(tmp_path / "csv")])
    jax.effects_barrier()
    assert "metrics.csv" in capsys.readouterr().out
    for seed in range(2):
        directory = os.path.join(run, f"seed_{seed}")
        with open(os.path.join(directory, "metrics.csv"), encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
        got: dict = {}
        for row in rows:
            got.setdefault(row["tag"], []).append((int(row["step"]), float(row["value"])))
        # Every point of the event files, in the same order, with the same values.
        assert got == read_scalars(directory)
        assert got["train/x"] == [(s, float((seed + 1) * s)) for s in range(5)]
