"""Repository checks that belong to the test suite: lint, a strict docs build, benchmarks run."""

import os
import subprocess
import sys
import zipfile

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
OLD_LOOP_EMITTERS = "--xla_cpu_use_fusion_emitters=false"


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "src", "tests", "examples",
                             "benchmarks"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pyright_is_clean():
    # Basic mode, configured in pyproject.toml ([tool.pyright]); this interpreter's packages
    # (the venv running the tests), whatever the venv is called.
    result = subprocess.run([sys.executable, "-m", "pyright", "--pythonpath", sys.executable,
                             "src/callax"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "0 errors" in result.stdout, result.stdout[-6000:]


def test_wheel_ships_py_typed(tmp_path):
    # PEP 561: without the marker, pyright and mypy ignore callax's annotations in user code.
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
         str(tmp_path), ROOT], capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("callax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "callax/py.typed" in names, names
    assert "callax/events/_recorder.py" in names


def test_docs_build_strict(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "tensorboard" / "index.html").exists()


def test_logging_benchmark_runs():
    # A smoke run (tiny shapes, two rounds, one pinned process): the benchmark must keep
    # working and report one host call per flush; its timings are not asserted, so XLA
    # skips its expensive optimization passes (JAX's flag; compiling the PPO-like programs
    # is most of what the run costs), and with XLA:CPU's older loop emitters (faster to build).
    result = subprocess.run(
        [sys.executable, os.path.join("benchmarks", "bench_logging.py"), "--quick",
         "--rounds", "2", "--processes", "1", "--cores", "1", "--cases", "ppo,writer"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1",
                 XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {OLD_LOOP_EMITTERS}"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("ppo ") and "host calls per run 1 for 1 seed(s)" in line
               for line in lines), result.stdout
    assert any("µs/scalar" in line for line in lines)
    assert "Summary" in result.stdout
