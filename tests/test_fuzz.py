"""Fuzz: hypothesis-generated tags, values and step sequences round-trip through TensorBoard's
EventAccumulator, callax's own reader and TensorBoard's data server (the Rust server behind
the UI).

Every example writes its own run; the points read back must equal what callax promises to
write: for each tag, every point whose step is above all earlier steps of that tag (callax
drops the others, since TensorBoard's data server would discard earlier points), with the
value as a float32 (NaN and ±Inf included). One data server is started for all runs.
"""

import math
import os
import subprocess
import time
import urllib.parse
import urllib.request
import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from callax import JITSummaryWriter
from callax._summary_writer import check_tag
from callax._writer._read import read_scalars
from conftest import free_port, get_json, read_run, sync, tensorboard_command


def _is_valid_tag(tag: str) -> bool:
    try:
        check_tag(tag)
    except ValueError:
        return False
    return True


# Any Unicode text but control characters and lone surrogates (which check_tag refuses or
# UTF-8 cannot encode), in 1-3 '/'-separated parts.
_part = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=10)
_tag = st.lists(_part, min_size=1, max_size=3).map("/".join).filter(_is_valid_tag)
_value = st.one_of(
    st.floats(width=32),  # NaN, ±Inf, subnormals, -0.0 included
    st.integers(-(2**31), 2**31 - 1),
    st.booleans(),
)
_step = st.one_of(
    st.integers(0, 20),
    st.integers(2**31 - 4, 2**31 + 4),
    st.integers(2**32 - 2, 2**32 + 2),
    st.integers(2**53 - 2, 2**53 + 2),
    st.integers(2**63 - 5, 2**63 - 1),
    st.integers(0, 2**63 - 1),
)


@st.composite
def _cases(draw):
    tags = draw(st.lists(_tag, min_size=1, max_size=3, unique=True))
    row = st.tuples(_step, st.lists(st.one_of(st.none(), _value), min_size=len(tags),
                                    max_size=len(tags)))
    rows = draw(st.lists(row, min_size=1, max_size=8))
    return tags, rows, draw(st.sampled_from(["add_dict", "write_rows"]))


def _expected(tags, rows) -> dict[str, list[tuple[int, float]]]:
    """callax's contract: per tag, keep a point only if its step is above all earlier ones."""
    out: dict[str, list[tuple[int, float]]] = {}
    last: dict[str, int] = {}
    for step, values in rows:
        for tag, value in zip(tags, values, strict=True):
            if value is not None and step > last.get(tag, -1):
                last[tag] = step
                out.setdefault(tag, []).append((step, float(np.float32(value))))
    return out


def _write(directory, tags, rows, method) -> None:
    writer = JITSummaryWriter(directory)
    if method == "add_dict":  # one eager call per row, Python ints as steps
        for step, values in rows:
            present = {t: v for t, v in zip(tags, values, strict=True) if v is not None}
            writer.add_dict("", present, global_step=step)
    else:  # one host call for all rows: int64 steps, a validity mask
        steps = np.array([step for step, _ in rows], np.int64)
        valid = np.array([[v is not None for v in values] for _, values in rows])
        values = np.array([[np.float32(0 if v is None else v) for v in values]
                           for _, values in rows], np.float32)
        writer.write_rows(tuple(tags), steps, values, valid)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (
        a == b and math.copysign(1.0, a) == math.copysign(1.0, b))


def _assert_points(got, expected, context) -> None:
    assert [s for s, _ in got] == [s for s, _ in expected], context
    assert all(_same(a, b) for (_, a), (_, b) in zip(got, expected, strict=True)), (
        context, got, expected)


def _data_server_points(root: str, expected: dict[str, dict[str, list]]):
    """Start TensorBoard's data server on ``root`` once; return ``{run: {tag: [(step,
    value)]}}`` for every run and tag of ``expected``, read from its HTTP scalars API."""
    port = free_port()
    server = subprocess.Popen(
        [*tensorboard_command(), "--logdir", root, "--host", "127.0.0.1", "--port", str(port),
         "--load_fast", "true", "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}/data/plugin/scalars"
    try:
        deadline = time.monotonic() + 90
        tags: dict = {}
        while time.monotonic() < deadline and server.poll() is None:
            try:
                tags = get_json(f"{base}/tags")
            except OSError:
                tags = {}
            if all(set(want) <= set(tags.get(run, {})) for run, want in expected.items()):
                break
            time.sleep(0.5)
        assert server.poll() is None, server.stderr.read()[-2000:]
        out = {}
        for run, want in expected.items():
            assert set(tags.get(run, {})) == set(want), (run, tags.get(run))
            out[run] = {}
            for tag in want:
                query = urllib.parse.urlencode({"run": run, "tag": tag})
                points = get_json(f"{base}/scalars?{query}")  # [[wall_time, step, value], ...]
                out[run][tag] = [(step, float(value)) for _, step, value in points]
        return out
    finally:
        server.kill()
        server.wait()


def test_fuzz_round_trip_through_event_accumulator_and_data_server(tmp_path):
    root = str(tmp_path)
    written: dict[str, dict[str, list]] = {}
    counter = iter(range(10**6))

    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(case=_cases())
    def write_and_read_back(case):
        tags, rows, method = case
        run = f"case_{next(counter):04d}"
        directory = os.path.join(root, run)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # callax reports dropped points
            _write(directory, tags, rows, method)
            sync()
        expected = _expected(tags, rows)
        # (A case with no point at all opens no event file, so no directory.)
        got = read_run(directory) if os.path.isdir(directory) else {}
        assert sorted(got) == sorted(expected), (case, got)
        for tag, points in expected.items():
            _assert_points(got[tag], points, (case, tag))
        # callax's own reader (`callax summary`) agrees with TensorBoard's.
        own = read_scalars(directory) if os.path.isdir(directory) else {}
        assert sorted(own) == sorted(expected), (case, own)
        for tag, points in expected.items():
            _assert_points(own[tag], points, (case, tag, "callax reader"))
        if expected:
            written[run] = expected

    write_and_read_back()
    assert written
    served = _data_server_points(root, written)
    for run, expected in written.items():
        for tag, points in expected.items():
            _assert_points(served[run][tag], points, (run, tag))


@settings(max_examples=200, deadline=None, database=None)
@given(tag=st.text(max_size=12))
def test_fuzz_tags_are_checked_at_trace_time(tag):
    # Any string is either a valid tag (which the round trip above writes and reads) or
    # refused with a ValueError naming it; never anything else.
    try:
        assert check_tag(tag) == tag
    except ValueError as error:
        assert repr(tag) in str(error)
        assert (not tag or tag != tag.strip() or tag[0] == "/" or tag[-1] == "/" or "//" in tag
                or any(ord(c) < 32 for c in tag))
