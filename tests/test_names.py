"""Run names and paths: bad ones fail at construction and write nothing anywhere; writers
sharing a name (in one process or in two) never share an event file or lose points."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import pytest

import callax
from callax._host import open_run
from callax._writer import _event_file
from callax._writer._read import read_records
from conftest import read_run

HERE = os.path.dirname(__file__)
NAME_MAX = os.pathconf("/", "PC_NAME_MAX")
PATH_MAX = os.pathconf("/", "PC_PATH_MAX")

CONSTRUCTORS = {
    "JITSummaryWriter": lambda path: callax.JITSummaryWriter(path),
    "TensorBoardCallback": lambda path: callax.TensorBoardCallback(
        name=os.path.basename(path), log_dir=os.path.dirname(path)),
    "open_run": lambda path: open_run(path),
}


def _tree(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, dirs, files in os.walk(root) for f in dirs + files)


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../escape", "/tmp/absolute",
                                  "x" * (NAME_MAX + 1)])
def test_bad_run_name_fails_at_construction_and_writes_nothing(tmp_path, name):
    log_dir = tmp_path / "runs"
    log_dir.mkdir()
    with pytest.raises(ValueError, match="run name"):
        callax.TensorBoardCallback(name=name, log_dir=str(log_dir))
    assert _tree(tmp_path) == ["runs"]  # nothing inside log_dir, nothing next to it
    assert not os.path.exists("/tmp/absolute")


def test_bad_run_name_fails_when_traced(tmp_path):
    def build():
        callax.TensorBoardCallback(name="../up", log_dir=str(tmp_path))
        return 0

    with pytest.raises(ValueError, match="run name"):
        jax.jit(build)()
    assert _tree(tmp_path) == []


@pytest.mark.parametrize("constructor", CONSTRUCTORS)
def test_log_dir_that_is_a_file(tmp_path, constructor):
    file = tmp_path / "file"
    file.write_text("not a directory")
    for path in (file, file / "run"):
        with pytest.raises(NotADirectoryError, match="file"):
            CONSTRUCTORS[constructor](str(path))
    assert file.read_text() == "not a directory" and _tree(tmp_path) == ["file"]


def _unwritable(tmp_path, kind: str, monkeypatch) -> str:
    if kind == "read-only directory":
        directory = tmp_path / "locked"
        directory.mkdir()
        directory.chmod(0o500)
        if os.access(directory, os.W_OK):
            # Root writes anyway (CI runs as root): give the check the answer the kernel gives
            # every other user for mode 0o500, so the error path is still proven.
            real_access = os.access

            def access(path, mode, *args, **kwargs):
                if os.path.realpath(path) == str(directory) and mode & os.W_OK:
                    return False
                return real_access(path, mode, *args, **kwargs)

            monkeypatch.setattr(os, "access", access)
            assert not os.access(directory, os.W_OK)
        return str(directory / "run")
    # A read-only file system: unwritable even for root.
    if os.access("/proc/sys", os.W_OK) or not os.path.isdir("/proc/sys"):
        pytest.skip("no read-only file system at /proc/sys here")
    return "/proc/sys/callax_run"


@pytest.mark.parametrize("kind", ["read-only directory", "read-only file system"])
@pytest.mark.parametrize("constructor", CONSTRUCTORS)
def test_unwritable_log_dir(tmp_path, constructor, kind, monkeypatch):
    path = _unwritable(tmp_path, kind, monkeypatch)
    with pytest.raises(PermissionError, match="not writable"):
        CONSTRUCTORS[constructor](path)
    assert not os.path.exists(path)


@pytest.mark.parametrize("constructor", CONSTRUCTORS)
def test_too_long_paths(tmp_path, constructor):
    long_component = os.path.join(str(tmp_path), "c" * (NAME_MAX + 1), "run")
    deep = os.path.join(str(tmp_path), *["d" * 200] * (PATH_MAX // 200), "run")
    for path, match in ((long_component, "the file system allows"), (deep, "too long")):
        with pytest.raises(ValueError, match=match):
            CONSTRUCTORS[constructor](path)
    assert _tree(tmp_path) == []


def test_a_path_near_the_limit_is_written(tmp_path):
    # The check leaves room for callax's own names, and no more than that.
    parts = ["p" * 200] * ((PATH_MAX - len(str(tmp_path)) - 400) // 201)
    path = os.path.join(str(tmp_path), *parts, "n" * (NAME_MAX - 10))
    writer = callax.JITSummaryWriter(path)
    writer.add_scalar("x", 1.0, 0)
    assert read_run(path) == {"x": [(0, 1.0)]}


def test_same_name_twice_in_one_process(tmp_path):
    callbacks = [callax.TensorBoardCallback(name="run", log_dir=str(tmp_path)) for _ in range(2)]
    writers = [callax.JITSummaryWriter(str(tmp_path / "w")) for _ in range(2)]
    for k, writer in enumerate([cb.tb_writer for cb in callbacks] + writers):
        for step in range(5):
            writer.add_scalar("x", 10.0 * k + step, step)
    expected = {"run": 0, "run_1": 1, "w": 2, "w_1": 3}
    for directory, k in expected.items():
        assert read_run(str(tmp_path / directory)) == {
            "x": [(s, 10.0 * k + s) for s in range(5)]}


def test_event_file_names_never_collide(tmp_path, monkeypatch):
    # A file of the chosen name already exists (another writer, a reused process id): the
    # writer takes the next name instead of appending to it.
    names = iter(["events.out.tfevents.taken", "events.out.tfevents.free"])
    monkeypatch.setattr(_event_file, "event_file_name", lambda: next(names))
    (tmp_path / "events.out.tfevents.taken").write_bytes(b"someone else's")
    writer = callax.JITSummaryWriter(str(tmp_path))
    writer.add_scalar("x", 1.0, 0)
    writer.flush()
    assert (tmp_path / "events.out.tfevents.taken").read_bytes() == b"someone else's"
    assert len(list(read_records(tmp_path / "events.out.tfevents.free"))) == 2


def test_two_processes_on_one_run_directory(tmp_path):
    """Two processes write one run directory at the same time: one file each, every point
    of both read back."""
    run = str(tmp_path / "shared")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "reliability_child.py"),
                               "shared", run, tag], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for tag in ("p0", "p1")]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
    files = sorted(f for f in os.listdir(run) if ".tfevents." in f)  # (and metrics.jsonl)
    assert len(files) == 2 and len({f.split(".")[-3] for f in files}) == 2  # one per pid
    for file in files:  # each file holds one process's tags only
        text = b"".join(read_records(os.path.join(run, file)))
        assert (b"p0" in text) != (b"p1" in text)
    rows = 22  # reliability_child.END
    expected = {}
    for tag in ("p0", "p1"):
        expected[tag] = [(i, float(i)) for i in range(rows)]
        expected[tag + "_neg"] = [(i, -float(i)) for i in range(rows)]
    assert read_run(run) == expected
