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
