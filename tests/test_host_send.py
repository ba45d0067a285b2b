"""``callax._host.send`` and ``callax._host.clock``: the generic batched host call and the
host clock read that events and the progress bar use (one numbering of seeds with ``emit``)."""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import callax
from callax import _host, _writer as host
from conftest import read_run, run_dirs


class Calls:
    """Host function recording every call it gets."""

    def __init__(self):
        self.calls: list[tuple[np.ndarray, ...]] = []
        self.lock = threading.Lock()

    def __call__(self, seed, when, *arrays):
        with self.lock:
            self.calls.append((seed.copy(), when.copy(), *(a.copy() for a in arrays)))

    def collect(self):
        jax.effects_barrier()
        return self.calls


def test_eager_call_has_one_row_with_no_seed():
    calls = Calls()
    _host.send(calls, jnp.arange(3.0), 7)
    (seed, when, values, scalar), = calls.collect()
    assert seed.tolist() == [host.NO_SEED] and when.tolist() == [True]
    assert values.shape == (1, 3) and values.tolist() == [[0.0, 1.0, 2.0]]
    assert scalar.tolist() == [7]


def test_when_false_makes_no_call_inside_jit_scan():
    calls = Calls()

    @jax.jit
    def run(xs):
        def body(c, x):
            _host.send(calls, x, when=x % 2 == 0)
            return c, None

        jax.lax.scan(body, 0, xs)

    run(jnp.arange(5))
    assert [int(c[2][0]) for c in calls.collect()] == [0, 2, 4]


def test_vmap_makes_one_call_with_seed_positions_and_when_rows():
    calls = Calls()

    @jax.jit
    @jax.vmap
    def run(x):
        _host.send(calls, x, 2.0 * x, when=x != 1)

    run(jnp.arange(4.0))
    (seed, when, x, y), = calls.collect()  # one host call for the batch of 4
    assert seed.tolist() == [0, 1, 2, 3]
    assert when.tolist() == [True, False, True, True]
    assert x.tolist() == [0.0, 1.0, 2.0, 3.0] and y.tolist() == [0.0, 2.0, 4.0, 6.0]

    calls.calls.clear()
    jax.jit(jax.vmap(lambda x: _host.send(calls, x, when=x < 0)))(jnp.arange(4.0))
    assert calls.collect() == []  # no row asked: no host call


def test_unbatched_arguments_are_broadcast_to_every_row():
    calls = Calls()
    jax.vmap(lambda x: _host.send(calls, x, jnp.ones(2)))(jnp.arange(3))
    (seed, _, x, ones), = calls.collect()
    assert seed.tolist() == [0, 1, 2] and ones.shape == (3, 2)


def test_nested_vmap_numbers_seeds_like_emit(tmp_path):
    """The same nested vmap, once through ``send`` and once through the writer's ``emit``:
    every seed position carries the same value in both."""
    calls = Calls()
    writer = callax.JITSummaryWriter(str(tmp_path))

    @jax.jit
    def run(x):
        _host.send(calls, x)
        writer.add_scalar("x", x, 1)

    jax.vmap(jax.vmap(run))(jnp.arange(6.0).reshape(2, 3) * 10)
    callax.flush_all()
    (seed, _, x), = calls.collect()
    sent = dict(zip(seed.tolist(), x.tolist(), strict=True))
    assert sorted(sent) == list(range(6))
    written = {int(d.removeprefix("seed_")): read_run(str(tmp_path / d))["x"][0][1]
               for d in run_dirs(str(tmp_path))}
    assert written == sent
    assert sent == {i: 10.0 * i for i in range(6)}  # row-major: outer axis slowest


def test_send_inside_while_loop_with_batched_predicate():
    calls = Calls()

    def run(n):
        def body(i):
            _host.send(calls, i, when=i % 2 == 1)
            return i + 1

        return jax.lax.while_loop(lambda i: i < n, body, jnp.int32(0))

    jax.jit(jax.vmap(run))(jnp.array([2, 4]))
    rows = [(s.tolist(), w.tolist(), i.tolist()) for s, w, i in calls.collect()]
    # Iteration 1 (i = 1 for both seeds), then i = 3 for seed 1 (seed 0's row is inactive
    # there and its `when` is false, since its loop has stopped).
    assert ([0, 1], [True, True], [1, 1]) in rows
    assert any(r[2][1] == 3 and r[1][1] for r in rows)


def test_clock_reads_are_unbatched_and_increase():
    @jax.jit
    def stamps(x):
        t0 = _host.clock(jnp.sum(x))
        y = jnp.sin(x) @ jnp.cos(x).T + t0[1].astype(jnp.float32) * 0.0
        t1 = _host.clock(jnp.sum(y))
        return t0, t1

    t0, t1 = jax.vmap(stamps)(jnp.ones((3, 64, 64)))
    t0, t1 = np.asarray(t0, np.int64), np.asarray(t1, np.int64)
    assert t0.shape == (3, 2) and (t0 == t0[0]).all()  # one read for the batch
    ns = lambda t: t[..., 0] * 1_000_000_000 + t[..., 1]  # noqa: E731
    assert (ns(t1) >= ns(t0)).all()


def test_send_rejects_non_arrays_early():
    with pytest.raises(TypeError):
        _host.send(Calls(), "not an array")


# --------------------------------------------------------------------------------------------
# One host path by construction: no module outside the package ``callax/_host/`` makes a host
# call.

# Names whose use makes a device-to-host call: JAX's callbacks, their primitives and
# lowering.
_CROSSING_NAMES = frozenset({
    "io_callback", "pure_callback", "emit_python_callback",
    "host_callback", "callback_p", "io_callback_p", "pure_callback_p", "debug_callback_p",
    "debug_callback_lowering", "debug_effect", "ffi_call", "register_ffi_target",
    "build_ffi_lowering_function",
})
# ``jax.debug.<these>`` call the host.
_DEBUG_CALLS = frozenset({"callback", "print", "breakpoint"})
# JAX modules that hold the host-call machinery.
_CROSSING_MODULES = ("jax.debug", "jax._src.callback", "jax._src.debugging",
                     "jax.experimental.host_callback", "jax.ffi", "jax.extend.ffi")
# ``callax._host``'s own host-call primitive and unbatched helpers: other modules use its
# public, seed-numbering functions (``emit``, ``send``, ``clock``, ``flush``, ...) instead.
_HOST_INTERNALS = frozenset({"callback", "host_call_p", "direct_host_call", "_host_call", "_emit",
                             "_sender", "_make_host_call", "read_clock", "read_stop",
                             "_primitives", "_ffi"})


# A custom batching rule decides how a host call under vmap is batched (one call for the
# batch, each row's seed position): written around a host call outside ``_host`` it could
# call once per element or renumber the seeds. It counts as a crossing in a module that
# reaches the host at all (any crossing, or any use of ``_host``); a module that never does
# (e.g. ``callbacks/_episodes.py``: a ring of episodes shared out over the envs by a
# custom_vmap rule that only computes) makes no transfer with it.
_BATCHING_NAMES = frozenset({"custom_vmap", "custom_batching"})


def _crossings(source: str) -> list[str]:
    """``line: what`` for every host-call crossing in a module's source."""
    import ast

    found, batching = [], []
    reaches_host = False

    def flag(node, what):
        found.append(f"{node.lineno}: {what}")

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(_CROSSING_MODULES):
                    flag(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            for alias in node.names:
                full = f"{module}.{alias.name}"
                host_internal = ("_host" in module.split(".")
                                 and alias.name in _HOST_INTERNALS)
                if (module.startswith(_CROSSING_MODULES) or full.startswith(_CROSSING_MODULES)
                        or alias.name in _CROSSING_NAMES or host_internal):
                    flag(node, f"from {module} import {alias.name}")
        elif isinstance(node, ast.Attribute):
            owner = node.value
            owner_name = getattr(owner, "id", getattr(owner, "attr", None))
            if node.attr in _CROSSING_NAMES:
                flag(node, f".{node.attr}")
            elif node.attr in _DEBUG_CALLS and owner_name == "debug":
                flag(node, f"debug.{node.attr}")
            elif node.attr in _HOST_INTERNALS and owner_name == "_host":
                flag(node, f"_host.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in _CROSSING_NAMES:
            flag(node, node.id)
        reaches_host |= _uses_host(node)
        batching += _batching(node)
    return found + batching if found or reaches_host else found


def _uses_host(node) -> bool:
    """Whether ``node`` imports or names callax's ``_host`` package."""
    import ast

    if isinstance(node, ast.ImportFrom):
        return ("_host" in (node.module or "").split(".")
                or any(alias.name == "_host" for alias in node.names))
    if isinstance(node, ast.Import):
        return any("_host" in alias.name.split(".") for alias in node.names)
    return isinstance(node, ast.Name) and node.id == "_host"


def _batching(node) -> list[str]:
    """``line: what`` for a custom batching rule's name at ``node``."""
    import ast

    names = []
    if isinstance(node, ast.ImportFrom):
        names = [f"from {node.module} import {a.name}" for a in node.names
                 if a.name in _BATCHING_NAMES or (node.module or "").endswith("custom_batching")]
    elif isinstance(node, ast.Attribute) and node.attr in _BATCHING_NAMES:
        names = [f".{node.attr}"]
    elif isinstance(node, ast.Name) and node.id in _BATCHING_NAMES:
        names = [node.id]
    return [f"{node.lineno}: {name}" for name in names]


def test_crossing_detector_finds_every_kind_of_host_call():
    # The detector itself: it must see the host calls that ``_host/`` really makes, and
    # the other spellings a future module could use.
    import pathlib

    host = pathlib.Path(callax.__file__).parent / "_host"
    found = " ".join(c for path in host.glob("*.py") for c in _crossings(path.read_text()))
    for what in ("from jax.experimental import io_callback", "custom_batching", "custom_vmap",
                 "pure_callback", "emit_python_callback", "register_ffi_target",
                 "build_ffi_lowering_function"):
        assert what in found
    snippets = [
        "import jax\njax.debug.print('{}', x)",
        "from jax import debug as d\nd.callback(f, x)",
        "from jax.experimental import io_callback as cb",
        "import jax\njax.pure_callback(f, shape, x)",
        "from jax import custom_batching\nfrom .. import _host\n_host.send(f, x)",
        "import jax\nfrom .._host import send\n@jax.custom_batching.custom_vmap\ndef f(x): ...",
        "from .. import _host\n_host.callback(f, x)",
        "from .._host import callback",
        "from .._host._primitives import read_clock",
        "from jax._src.debugging import debug_effect",
    ]
    for snippet in snippets:
        assert _crossings(snippet), snippet
    assert _crossings("from .. import _host\n_host.send(f, x)\n_host.clock(t)") == []
    # A custom batching rule in a module that never reaches the host transfers nothing.
    assert _crossings("import jax\nfrom jax import custom_batching\n"
                      "@custom_batching.custom_vmap\ndef f(x): ...") == []


def test_only_the_host_module_crosses_to_the_host():
    """Every device-to-host transfer of the package goes through ``callax/_host/`` (so its
    seed numbering holds for every host call)."""
    import pathlib

    root = pathlib.Path(callax.__file__).parent
    offenders = [
        f"{path.relative_to(root)}:{crossing}"
        for path in sorted(root.rglob("*.py")) if root / "_host" not in path.parents
        for crossing in _crossings(path.read_text())
    ]
    assert offenders == []
