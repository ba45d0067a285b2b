#!/usr/bin/env bash
# The device check (issue 24): callax on the newest JAX, on CPU and on a GPU.
#
# For the lent accelerator machine: Python 3.12 with JAX 0.11 and its CUDA plugin, equinox,
# optax, jaxtyping, tensorboard, pytest and hypothesis installed, no network. What it lacks
# comes as Python 3.12 wheels in wheels/py312 (git-ignored; pass it as `carry`), downloaded
# on a machine with the package index:
#
#   pip download --python-version 3.12 --only-binary=:all: --no-deps -d wheels/py312 \
#     tensorboardX==2.6.5 crc32c==2.9.post0 beartype==0.23.1 pytest-xdist==3.8.0 execnet \
#     hatchling pathspec trove-classifiers pluggy packaging tomlkit
#
# (tensorboardX and crc32c: callax's own dependencies; beartype: the suite's type-checking
# hook; pytest-xdist and execnet: parallel workers; hatchling and the rest: building callax.)
#
# Run from the repository root:   OUT=<results dir> bash benchmarks/device_check.sh
#
# Steps, each with its own time limit (7 min 40 s in all at most):
#   1. a venv that sees the image's packages (--system-site-packages); the wheels and callax
#      installed into it without dependencies (callax built from this tree, no index);
#   2. the host, order, grad, AOT, compilation-cache, interrupt and FFI tests on CPU
#      (JAX_PLATFORMS=cpu: JAX 0.11 on Python 3.12), then the same tests on the GPU;
#   3. benchmarks/bench_logging.py and benchmarks/bench_step_cost.py on the GPU (the second
#      is skipped if this tree does not have it).
# Results under $OUT: versions.txt, pytest-{cpu,gpu}.{log,xml}, bench_*.txt, summary.txt
# (one line per step: its exit status and seconds). A failing step does not stop the next.
#
# Settings (environment): PYTHON (python3), WHEELS (wheels/py312), OUT, CPU_WORKERS (8),
# GPU (1; 0 runs the CPU half only), EXTRA_SITE (a site-packages directory the venv also
# sees: for a dry run where the "image's packages" live in another venv).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device_check_out}
WHEELS=${WHEELS:-wheels/py312}
PYTHON=${PYTHON:-python3}
CPU_WORKERS=${CPU_WORKERS:-8}
GPU=${GPU:-1}
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: > "$summary"
start=$SECONDS

step() {  # step <name> <seconds> <command...>: run it with a time limit, record its status
  local name=$1 limit=$2 t0=$SECONDS
  shift 2
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - t0)) (limit $limit)" | tee -a "$summary"
  return 0
}

venv=$(mktemp -d)/venv
V=$venv/bin/python
t0=$SECONDS
{
  "$PYTHON" -m venv --system-site-packages "$venv" &&
  if [ -n "${EXTRA_SITE:-}" ]; then
    echo "$EXTRA_SITE" > "$("$V" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/extra.pth"
  fi &&
  timeout 40 "$V" -m pip install --no-index --no-deps -q "$WHEELS"/tensorboard[xX]-*.whl \
    "$WHEELS"/crc32c-*.whl "$WHEELS"/beartype-*.whl "$WHEELS"/pytest_xdist-*.whl \
    "$WHEELS"/execnet-*.whl &&
  # callax itself, without dependencies; its build backend (hatchling) from the wheels
  timeout 40 "$V" -m pip install --no-index --find-links "$WHEELS" --no-deps -q .
} > "$OUT/install.log" 2>&1
echo "install rc=$? seconds=$((SECONDS - t0))" | tee -a "$summary"

{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  timeout 40 "$V" - <<'PY'
import importlib.metadata as md, platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "equinox", "optax",
             "jaxtyping", "tensorboard", "tensorboardX", "crc32c", "numpy", "protobuf",
             "pytest", "hypothesis", "beartype", "callax"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        pass
import jax, callax
from callax._host import _ffi
print("callax from", callax.__file__)
print("devices", jax.devices())
print("host calls on CPU:", _ffi.REASON)
PY
  nvidia-smi -L 2>/dev/null
} > "$OUT/versions.txt" 2>&1
cat "$OUT/versions.txt"

tests=()
for f in test_host test_host_send test_order test_host_autodiff test_host_aot \
         test_compilation_cache test_interrupt test_ffi; do
  if [ -f "tests/$f.py" ]; then tests+=("tests/$f.py"); else echo "absent: tests/$f.py" | tee -a "$summary"; fi
done
# The suite's own options less pytest-xdist's default worker count (set per run below);
# -v: a line per finished test, so a run cut by its time limit still says what passed.
opts="--jaxtyping-packages=callax,beartype.beartype -p no:cacheprovider"

# CPU: JAX 0.11 on Python 3.12 without the GPU.
step tests-cpu 140 env JAX_PLATFORMS=cpu "$V" -m pytest -o addopts="$opts" -n "$CPU_WORKERS" \
  -m "not slow" -v -rs --junitxml="$OUT/pytest-cpu.xml" "${tests[@]}" \
  > "$OUT/pytest-cpu.log" 2>&1
if [ "$GPU" = 1 ]; then
  # GPU: JAX's default device; 4 workers sharing the GPU (no preallocation).
  step tests-gpu 140 env -u JAX_PLATFORMS XLA_PYTHON_CLIENT_PREALLOCATE=false "$V" -m pytest \
    -o addopts="$opts" -n 4 -m "not slow" -v -rs --junitxml="$OUT/pytest-gpu.xml" \
    "${tests[@]}" > "$OUT/pytest-gpu.log" 2>&1

  step bench-logging 55 env -u JAX_PLATFORMS "$V" benchmarks/bench_logging.py --quick \
    --cores all --processes 1 --rounds 9 --cases ppo,tiny \
    > "$OUT/bench_logging.txt" 2>&1
  if [ -f benchmarks/bench_step_cost.py ]; then
    step bench-step-cost 40 env -u JAX_PLATFORMS "$V" benchmarks/bench_step_cost.py \
      --envs 16,2048 --rounds 7 --iteration-rounds 50 > "$OUT/bench_step_cost.txt" 2>&1
  else
    echo "absent: benchmarks/bench_step_cost.py" | tee -a "$summary"
  fi
fi
echo "total seconds=$((SECONDS - start))" | tee -a "$summary"
tail -n 3 "$OUT"/pytest-*.log
