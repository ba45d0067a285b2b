"""Faults cost logs, never the training (issue 17): one test per row of the issue's table,
each on real data read back with TensorBoard's EventAccumulator (``read_run``).

A full disk is a real 64 KiB tmpfs where the machine allows mounting one (root), skipped
with the reason otherwise; other faults are real (files and directories deleted, symlinks)
or injected ``OSError``s. Exit paths and forked workers run real child processes.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import traceback
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import callax
from callax import _writer as host
from callax._writer import _registry
from callax._writer._event_file import EventFile
from conftest import child_env, read_run
from minimal_loop import drive

HERE = os.path.dirname(__file__)
ENOSPC = os.strerror(errno.ENOSPC)  # "No space left on device"


# --------------------------------------------------------------------------------------------
# Helpers.


@pytest.fixture
def small_fs(tmp_path):
    """A real 64 KiB file system (tmpfs), unmounted afterwards."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("a 64 KiB tmpfs needs root (mount -t tmpfs); this process is not root")
    if shutil.which("mount") is None:
        pytest.skip("no mount command on this machine")
    mount_point = tmp_path / "small_fs"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs",
                           str(mount_point)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {done.stderr.strip()}")
    try:
        yield str(mount_point)
    finally:
        # Close this test's files on it (the test took its errors already), then unmount.
        for run in _registry._all_runs():
            if run.log_dir.startswith(str(mount_point)):
                host.close(run.handle, report=False)
                run.take_error()
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(directory: str) -> str:
    """Fill the file system holding ``directory`` with one file; return its path."""
    path = os.path.join(directory, "dummy")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    chunk = b"\0" * 4096
    try:
        while True:
            try:
                if os.write(fd, chunk) == 0:
                    break
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
                break
        # The last page may hold a few bytes more.
        while True:
            try:
                if os.write(fd, b"\0") == 0:
                    break
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
                break
    finally:
        os.close(fd)
    return path


def event_files(directory: str) -> list[str]:
    return sorted(f for f in os.listdir(directory) if f.startswith("events.out.tfevents"))


def warned(record, *parts: str) -> list[str]:
    """Messages of the RuntimeWarnings in ``record`` containing every one of ``parts``."""
    return [str(w.message) for w in record
            if issubclass(w.category, RuntimeWarning)
            and all(part in str(w.message) for part in parts)]


def wait_written() -> None:
    """Every host call made, every queued batch written (without reporting errors)."""
    jax.effects_barrier()
    host._queue.wait_idle()


def points(run: dict) -> int:
    return sum(len(p) for p in run.values())


def assert_subsequence(got: list, expected: list) -> None:
    """``got`` is ``expected`` with some points left out, in order, values exact."""
    it = iter(expected)
    assert all(point in it for point in got), (got[:5], expected[:5])


# A jitted training loop (tests/minimal_loop.py) driving a TensorBoardCallback: no episode
# ends (dones all false), so each iteration writes exactly two points, train/loss = i and
# train/iteration = i, at global step i + 1 (one env, one step per iteration).
ITERATIONS = 2_000
REWARDS = np.ones((ITERATIONS, 1, 1), np.float32)
DONES = np.zeros((ITERATIONS, 1, 1), bool)
TRAIN_TAGS = ("train/iteration", "train/loss")
_drive = jax.jit(drive)


def expected_training() -> dict[str, list[tuple[int, float]]]:
    return {tag: [(i + 1, float(i)) for i in range(ITERATIONS)] for tag in TRAIN_TAGS}


def run_training(callback):
    state, _, iterations = _drive(callback, REWARDS, DONES, jax.random.key(0))
    jax.block_until_ready(state)
    return int(iterations)


# --------------------------------------------------------------------------------------------
# Row 1: disk full under the log dir, in a jitted training.


@pytest.mark.parametrize("report", ["flush", "close", "flush_all"])
def test_disk_full_in_jitted_training_returns_and_reports_lost_points(small_fs, report):
    callback = callax.TensorBoardCallback(name="full", log_dir=os.path.join(small_fs, "runs"),
                                          flush_every=32)
    log_dir = callback.tb_writer.log_dir
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        # The jitted training returns its result: no exception, whatever the disk does.
        assert run_training(callback) == ITERATIONS
        wait_written()
    # One warning when writing first failed, naming the run, the file and the OS error.
    (message,) = warned(record, "failed", ENOSPC)
    match = re.search(r"writing '([^']+)' failed", message)
    assert match and repr(log_dir) in message, message
    assert os.path.dirname(match.group(1)) == log_dir
    assert os.path.basename(match.group(1)).startswith("events.out.tfevents")

    # The run's flush/close (or flush_all) raises, counting exactly the points not on disk.
    raise_it = {"flush": callback.tb_writer.flush, "close": callback.tb_writer.close,
                "flush_all": callax.flush_all}[report]
    with pytest.raises(callax.WriteError, match=ENOSPC) as info:
        raise_it()
    assert info.value.run == log_dir and isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    run = read_run(log_dir)  # (reported once: reading flushes again without an error)
    expected = expected_training()
    for tag in TRAIN_TAGS:
        assert_subsequence(run.get(tag, []), expected[tag])
    on_disk = points(run)
    assert 0 < on_disk < 2 * ITERATIONS
    assert info.value.lost == 2 * ITERATIONS - on_disk


# --------------------------------------------------------------------------------------------
# Row 2: disk full, then space freed: the run goes on in a new file; the error is its own.


def test_disk_full_then_space_freed_continues_in_a_new_file_and_error_stays_with_its_run(
        small_fs, tmp_path):
    writer = callax.JITSummaryWriter(os.path.join(small_fs, "a"))
    other = callax.JITSummaryWriter(str(tmp_path / "b"))  # another run, on a healthy disk
    before, during, after = 10, 400, 100  # points written before, while and after full

    def write(start, stop):
        for i in range(start, stop):
            writer.add_scalar("x", float(i), i)
            other.add_scalar("y", float(i), i)
        wait_written()

    write(0, before)
    writer.flush()
    (first,) = event_files(writer.log_dir)
    dummy = fill(small_fs)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        write(before, before + during)
        # The failed write is warned about once, naming run, file and OS error.
        found = warned(record, "failed", ENOSPC)
        assert len(found) == 1, ([str(w.message) for w in record], os.listdir(writer.log_dir),
                                 os.path.getsize(os.path.join(writer.log_dir, first)))
        (message,) = found
        assert repr(writer.log_dir) in message and first in message
        other.flush()  # writer A's error is never reported by writer B
        os.remove(dummy)
        write(before + during, before + during + after)
    # The run continues in a second event file ...
    files = event_files(writer.log_dir)
    assert len(files) == 2 and files[0] == first
    # ... and the prefix that fitted before the disk was full reads back, then every point
    # written after space was freed.
    total = before + during + after
    (again,) = warned(record, "writing again")
    assert files[1] in again
    lost = int(re.search(r"(\d+) point\(s\) were not written", again).group(1))
    # The error is raised once, by this run's flush, with the same count.
    with pytest.raises(callax.WriteError, match=ENOSPC) as info:
        writer.flush()
    assert info.value.lost == lost and info.value.run == writer.log_dir
    writer.flush()  # once
    other.flush()
    callax.flush_all()
    run = read_run(writer.log_dir)
    kept = total - after - lost
    assert before <= kept < before + during
    assert run == {"x": [(i, float(i)) for i in range(kept)]
                   + [(i, float(i)) for i in range(before + during, total)]}
    assert read_run(other.log_dir) == {"y": [(i, float(i)) for i in range(total)]}


# --------------------------------------------------------------------------------------------
# Row 3: the event file or the run directory deleted mid-run.


@pytest.mark.parametrize("delete", ["event_file", "run_directory"])
def test_deleted_event_file_or_run_directory_is_replaced_at_the_next_write(tmp_path, delete):
    writer = callax.JITSummaryWriter(str(tmp_path / "run"))
    for i in range(10):
        writer.add_scalar("x", float(i), i)
    writer.flush()
    (first,) = event_files(writer.log_dir)
    if delete == "event_file":
        os.remove(os.path.join(writer.log_dir, first))
    else:
        shutil.rmtree(writer.log_dir)
    with pytest.warns(RuntimeWarning, match="was deleted; writing goes on in a new file"):
        for i in range(10, 30):
            writer.add_scalar("x", float(i), i)
        wait_written()
    writer.flush()  # no error: nothing was lost after the deletion
    (second,) = event_files(writer.log_dir)
    assert second != first
    # Every point written after the deletion reads back.
    assert read_run(writer.log_dir) == {"x": [(i, float(i)) for i in range(10, 30)]}


@jax.jit
def _write_in_jit(writer, start):
    def body(value, i):
        writer.add_scalar("z", value, start + i)
        return value + 1.0, None

    return jax.lax.scan(body, start.astype(jnp.float32), jnp.arange(8))[0]


def test_writes_and_flush_leave_the_warning_state_to_the_writer_thread(tmp_path, monkeypatch):
    """The warnings above come from the writer thread while the caller goes on writing.
    ``warnings.catch_warnings`` is process-wide: one entered by another thread meanwhile
    (``record=True``) takes the writer thread's warning and drops it. Under an import hook
    that type-checks callax (this suite's ``--jaxtyping-packages``, beartype), every
    function *defined* while writing is decorated, and beartype's decoration enters one.
    Eager writes, the host calls of a jitted program (on XLA's threads) and ``flush`` define
    none, so they enter none (the two tests above lost their warning about 1 time in 80
    when ``write_row`` defined two functions per call)."""
    from callax._writer import _registry as registry

    if not hasattr(registry.write_row, "__wrapped__"):
        pytest.skip("callax is not type-checked by an import hook in this run")
    writer = callax.JITSummaryWriter(str(tmp_path / "run"))
    writer.add_scalar("x", 0.0, 0)
    writer.add_dict("d", {"a": 0.0, "b": 0.0}, global_step=0)
    jax.block_until_ready(_write_in_jit(writer, jnp.int32(0)))
    writer.flush()  # first calls: compiled, and any one-time set-up done
    entered = []
    enter = warnings.catch_warnings.__enter__

    def counting_enter(self):  # whichever thread enters one
        entered.append("".join(traceback.format_stack(limit=14)))
        return enter(self)

    monkeypatch.setattr(warnings.catch_warnings, "__enter__", counting_enter)
    for i in range(1, 50):
        writer.add_scalar("x", float(i), i)
        writer.add_scalar("y", jnp.float32(i), jnp.int32(i))
        writer.add_dict("d", {"a": float(i), "b": 2.0 * i}, global_step=i)
    for start in range(8, 40, 8):
        jax.block_until_ready(_write_in_jit(writer, jnp.int32(start)))
    writer.flush()
    monkeypatch.undo()
    assert entered == [], entered[0]
    run = read_run(writer.log_dir)
    assert run["x"] == [(i, float(i)) for i in range(50)]
    assert run["d/b"] == [(i, 2.0 * i) for i in range(50)]
    assert run["z"] == [(i, float(i)) for i in range(40)]


# --------------------------------------------------------------------------------------------
# Row 4: a failed close() leaves the run usable; its error is that run's.


def test_failed_close_raises_for_its_run_and_the_run_stays_usable(tmp_path, monkeypatch):
    writer = callax.JITSummaryWriter(str(tmp_path / "a"))
    other = callax.JITSummaryWriter(str(tmp_path / "b"))
    for i in range(5):
        writer.add_scalar("x", float(i), i)
        other.add_scalar("y", float(i), i)
    writer.flush()
    other.flush()

    def broken_close(self):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(EventFile, "close", broken_close)
    with pytest.warns(RuntimeWarning, match=re.escape(os.strerror(errno.EIO))):
        with pytest.raises(callax.WriteError, match=os.strerror(errno.EIO)) as info:
            writer.close()
    assert info.value.run == writer.log_dir and info.value.lost == 0
    monkeypatch.undo()
    other.flush()  # the other run's flush does not report it
    callax.flush_all()  # nor does flush_all: it was raised once, by its run
    for i in range(5, 10):
        writer.add_scalar("x", float(i), i)
    writer.flush()
    assert len(event_files(writer.log_dir)) == 2  # a new file after the failed close
    assert read_run(writer.log_dir) == {"x": [(i, float(i)) for i in range(10)]}
    assert read_run(other.log_dir) == {"y": [(i, float(i)) for i in range(5)]}


# --------------------------------------------------------------------------------------------
# Row 5: forked workers (multiprocessing) that write and return without close().

WORKER_POINTS = 200
WORKERS = 2


@pytest.mark.parametrize("method, pool, origin", [
    ("fork", False, "child"),
    ("fork", False, "parent"),
    ("fork", True, "child"),
    ("fork", True, "parent"),
    ("forkserver", False, "child"),
])
def test_forked_workers_write_every_point_without_close(tmp_path, method, pool, origin):
    import multiprocessing

    import fault_workers

    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method on this platform")
    context = multiprocessing.get_context(method)
    processes: list = []
    parent = callax.JITSummaryWriter(str(tmp_path / "parent"))
    for i in range(WORKER_POINTS):
        parent.add_scalar("parent", float(i), i)
    fault_workers.WRITER = parent if origin == "parent" else None
    jobs = [(None if origin == "parent" else str(tmp_path / f"worker_{k}"), f"w{k}",
             WORKER_POINTS) for k in range(WORKERS)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # JAX: "os.fork() was called"
            warnings.simplefilter("ignore", DeprecationWarning)
            if pool:
                workers = context.Pool(WORKERS)
                processes = list(workers._pool)
                result = workers.starmap_async(fault_workers.write_points, jobs)
                pids = result.get(timeout=120)  # eager writes in a forked child never hang
                workers.close()
            else:
                processes = [context.Process(target=fault_workers.write_points, args=job)
                             for job in jobs]
                for process in processes:
                    process.start()
                pids = [process.pid for process in processes]
            for process in processes:
                process.join(timeout=120)
            if pool:
                workers.join()
    finally:
        fault_workers.WRITER = None
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
    assert [process.exitcode for process in processes] == [0] * len(processes)
    assert len(pids) == WORKERS
    # Every point of every worker is on disk (the workers returned without close()).
    expected = [(i, float(i)) for i in range(WORKER_POINTS)]
    if origin == "parent":
        for i in range(WORKER_POINTS, 2 * WORKER_POINTS):  # the parent's run goes on
            parent.add_scalar("parent", float(i), i)
        run = read_run(parent.log_dir)
        assert run == {"parent": [(i, float(i)) for i in range(2 * WORKER_POINTS)],
                       **{f"w{k}": expected for k in range(WORKERS)}}
    else:
        for k in range(WORKERS):
            assert read_run(str(tmp_path / f"worker_{k}")) == {f"w{k}": expected}
        assert read_run(parent.log_dir) == {"parent": expected}  # the parent's unaffected


# --------------------------------------------------------------------------------------------
# Row 6: bad input fails where it is written.

LONE_SURROGATE = "\ud800"


def test_lone_surrogate_tag_fails_at_the_call_naming_the_tag(tmp_path):
    writer = callax.JITSummaryWriter(str(tmp_path / "run"))
    named = re.escape(repr(LONE_SURROGATE))
    writer.add_scalar("ok", 0.0, 0)
    with pytest.raises(ValueError, match=named):
        writer.add_scalar(LONE_SURROGATE, 1.0, 1)
    with pytest.raises(ValueError, match=re.escape(repr("loss/" + LONE_SURROGATE))):
        writer.add_dict("loss", {"ok": 1.0, LONE_SURROGATE: 2.0}, global_step=1)
    with pytest.raises(ValueError, match=named):
        writer.add_dict("", {"ok": 1.0, LONE_SURROGATE: 2.0}, global_step=1)

    # Inside jit: at trace time (nothing compiled, nothing sent).
    @jax.jit
    def scalar(writer, x):
        writer.add_scalar(LONE_SURROGATE, x, 1)
        return x

    @jax.jit
    def mapping(writer, x):
        writer.add_dict("", {"ok": x, LONE_SURROGATE: x}, global_step=1)
        return x

    for fn in (scalar, mapping):
        with pytest.raises(ValueError, match=named):
            fn(writer, jnp.float32(1.0))
    writer.add_scalar("ok", 1.0, 1)
    writer.flush()  # nothing failed later
    # No valid tag of a refused call was written, none of the accepted calls was lost.
    assert read_run(writer.log_dir) == {"ok": [(0, 0.0), (1, 1.0)]}


def _constructors():
    return {
        "JITSummaryWriter": lambda path: callax.JITSummaryWriter(path),
        "TensorBoardCallback": lambda path: callax.TensorBoardCallback(
            name=os.path.basename(path), log_dir=os.path.dirname(path)),
    }


@pytest.mark.parametrize("constructor", list(_constructors()))
@pytest.mark.parametrize("where", ["log_dir", "parent"])
@pytest.mark.parametrize("link", ["dangling", "looping"])
def test_dangling_or_looping_symlink_log_dir_fails_at_construction(tmp_path, constructor,
                                                                   where, link):
    bad = tmp_path / "link"
    if link == "dangling":
        os.symlink(tmp_path / "missing", bad)
        error, match = FileNotFoundError, "dangling symlink"
    else:
        os.symlink(tmp_path / "other", bad)
        os.symlink(bad, tmp_path / "other")
        error, match = OSError, "symlink that loops"
    path = str(bad) if where == "log_dir" else str(bad / "runs" / "run")
    with pytest.raises(error, match=match) as info:
        _constructors()[constructor](path)
    assert info.value.errno == (errno.ENOENT if link == "dangling" else errno.ELOOP)
    assert str(bad) in str(info.value)
    assert sorted(os.listdir(tmp_path)) == (["link"] if link == "dangling"
                                            else ["link", "other"])  # nothing created


def test_a_run_directory_created_by_another_opener_meanwhile_is_not_a_broken_link(
        tmp_path, monkeypatch):
    # Seen in CI: two seeds' runs opened at once; the second saw the directory missing, then
    # present (created by the first) and read it as a symlink leading nowhere.
    from callax._writer import _paths

    run = tmp_path / "run"
    real_lexists = os.path.lexists

    def created_meanwhile(path):
        if os.fspath(path) == str(run):
            run.mkdir(exist_ok=True)
        return real_lexists(path)

    monkeypatch.setattr(_paths.os.path, "lexists", created_meanwhile)
    assert _paths.check_log_dir(run) == str(run)
    assert _paths.check_log_dir(run / "seed_0") == str(run / "seed_0")


# --------------------------------------------------------------------------------------------
# Row 7: every exit wait is bounded, atexit included.


def test_exit_wait_is_bounded_when_writes_hang(tmp_path):
    import time

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, os.path.join(HERE, "fault_child.py"), "hang",
                               str(tmp_path / "run")], env=env, capture_output=True,
                              text=True, timeout=120)
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"the child did not exit within 120 s: {error.stderr}") from None
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-3000:]
    assert "written" in done.stdout
    # The exit gave up on the hanging write after EXIT_FLUSH_TIMEOUT (the message says so)
    # instead of waiting for it: without the bound the child would hang to the 120 s timeout.
    print(f"exit with a hanging write took {elapsed:.1f} s")
    assert (f"not all written within {host.EXIT_FLUSH_TIMEOUT:g} s" in done.stderr), \
        done.stderr[-3000:]


# --------------------------------------------------------------------------------------------
# Row 8: a write error never raises inside a jitted program.


def _failing_write(self, data):
    raise OSError(errno.EIO, os.strerror(errno.EIO))


def _failing_flush(self):
    raise OSError(errno.EIO, os.strerror(errno.EIO))


@pytest.mark.parametrize("fails", ["write", "flush"])
def test_write_error_in_a_synchronous_buffer_flush_inside_jit_returns_normally(
        tmp_path, monkeypatch, fails):
    writer = callax.JITSummaryWriter(str(tmp_path / "run"))
    rows = 3

    @jax.jit
    def train(writer, x):
        buffer = callax.ScalarBuffer.empty(4, 2)
        for i in range(rows):
            buffer = buffer.append(writer, ("a", "b"), i, jnp.stack([x + i, -x - i]),
                                   jnp.ones(2, bool))
        buffer.flush(writer, sync=True)  # written and flushed by this very host call
        return 2 * x

    if fails == "write":
        monkeypatch.setattr(EventFile, "write", _failing_write)
    else:
        monkeypatch.setattr(EventFile, "flush", _failing_flush)
    with pytest.warns(RuntimeWarning, match=re.escape(os.strerror(errno.EIO))):
        assert float(train(writer, jnp.float32(1.5))) == 3.0
        wait_written()
    monkeypatch.undo()
    with pytest.raises(callax.WriteError, match=os.strerror(errno.EIO)) as info:
        writer.flush()
    assert info.value.run == writer.log_dir
    if fails == "write":  # every point lost, counted
        assert info.value.lost == 2 * rows
        assert read_run(writer.log_dir) == {}
    else:  # written, then the flush failed: nothing lost
        assert info.value.lost == 0
        assert read_run(writer.log_dir) == {"a": [(i, 1.5 + i) for i in range(rows)],
                                            "b": [(i, -1.5 - i) for i in range(rows)]}


def test_write_error_in_on_training_end_inside_jit_returns_normally(tmp_path, monkeypatch):
    callback = callax.TensorBoardCallback(name="run", log_dir=str(tmp_path), flush_every=32)
    monkeypatch.setattr(EventFile, "write", _failing_write)
    with pytest.warns(RuntimeWarning, match=re.escape(os.strerror(errno.EIO))):
        assert run_training(callback) == ITERATIONS
        wait_written()
    monkeypatch.undo()
    with pytest.raises(callax.WriteError) as info:
        callax.flush_all()
    assert info.value.lost == 2 * ITERATIONS and info.value.run == callback.tb_writer.log_dir
    assert read_run(callback.tb_writer.log_dir) == {}


def test_callax_train_on_a_full_disk_finishes_and_prints_one_line(small_fs, tmp_path):
    # `callax train` (two seeds) whose log directory is a 64 KiB file system with 16 KiB
    # left: the training runs to its end and reports its result, then one line says what
    # was not written; exit status 1, no traceback. (tests/test_cli.py's options, progress
    # on, XLA's expensive optimizations off: its program, loaded from the session's
    # compilation cache.)
    with open(os.path.join(small_fs, "other"), "wb") as other:
        other.write(b"\0" * 48 * 1024)
    done = subprocess.run(
        [sys.executable, "-m", "callax", "train", "--algo", "ppo", "--env", "cartpole",
         "--seeds", "2", "--total-timesteps", "8192",
         "--logdir", os.path.join(small_fs, "runs")],
        capture_output=True, text=True, timeout=900, cwd=str(tmp_path), env=child_env())
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("callax: error:")]
    assert len(errors) == 1, done.stderr
    assert "No space left on device" in errors[0]
    assert re.search(r"; [1-9]\d* point\(s\) not written", errors[0]), errors[0]
    assert "seed 1: final ep_rew_mean" in done.stdout  # the result was reported
