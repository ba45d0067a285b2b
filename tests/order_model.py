"""Random jitted programs of writes, and a plain-Python model of what they must write.

Shared by tests/test_order.py (one device, hypothesis) and tests/order_script.py (four host
devices). A program is a JSON-able tree of nodes (dicts); `build` turns it into a JAX
function, `model` interprets the same tree in plain Python.

State threaded through every node: ``counter`` (int32, unbatched; every write adds its
site's increment ``d >= 1`` to it first), ``idx`` (the innermost loop index) and ``seed``
(float32: 0 outside ``vmap``, else the flat row-major seed position). A write at counter
``c`` writes, for the j-th tag of its site, the value ``seed * 8192 + 4 * c + j`` at step
``c`` (explicit) or, with ``global_step=None``, one more than the largest last step of its
tags in that (run, seed). ``c`` strictly increases over the writes in program order and an
automatic step never exceeds it, so every tag's steps strictly increase in program order:
nothing may be dropped, and every value is distinct, so any reordering shows.

Nodes:
  {"t": "write", "w": writer, "kind": "scalar"|"dict", "prefix": str, "keys": [str],
   "auto": bool, "d": int}
  {"t": "seq", "body": [node, ...]}          Python statements one after the other
  {"t": "pyloop", "n": n, "body": node}      Python for-loop (unrolled at trace time)
  {"t": "scan", "n": n, "unroll": u, "body": node}
  {"t": "fori", "n": n, "body": node}        lax.fori_loop with static bounds
  {"t": "while", "n": n, "body": node}       lax.while_loop counting to n
  {"t": "cond", "on": "idx"|"counter", "m": m, "r": r, "then": node, "else": node|None}
                                             lax.cond((on % m) == r, ...), predicate unbatched
  {"t": "vmap", "b": b, "body": node}        jax.vmap over b seeds
  {"t": "ad", "how": how, "body": node}      the body differentiated (see AD_KINDS): its
                                             writes' values depend on the differentiated
                                             variable x (forward value 0), its loops and
                                             conds are differentiated; the model is the
                                             body's (every write once, the forward value)
"""

from __future__ import annotations

import math
import random

SEED_SCALE = 8192  # value = seed * SEED_SCALE + 4 * counter + j (exact in float32)
MAX_COUNTER = SEED_SCALE // 4
KEYS = ("a", "b", "x/y")
PREFIXES = ("", "p")
INCREMENTS = (1, 1, 1, 2, 3, 7)
UNROLLS = (1, 2, 3, 8, True)
# How an "ad" node differentiates its body (issue 24): reverse mode (with and without
# jax.checkpoint, and through custom derivatives) and forward mode.
AD_KINDS = ("grad", "value_and_grad", "checkpoint", "custom_vjp", "custom_jvp", "linearize")


# ------------------------------------------------------------------------------------------
# Generation, from any source of choices (hypothesis' draw, or random.Random).


class RandomChoices:
    """The choice interface of `generate`, backed by `random.Random(seed)`."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, options):
        return self.rng.choice(list(options))

    def boolean(self) -> bool:
        return self.rng.random() < 0.5


def _copies(n: int, unroll) -> int:
    """How many copies of a loop body the compiled program holds (an upper bound)."""
    u = n if unroll is True else unroll
    trips, remainder = divmod(n, u)  # as jax's _scan_impl splits the loop
    if u == 1:
        return 1
    return (u if trips else 0) + remainder


def generate(choices, *, writers: int, max_writes: int = 120, max_sites: int = 16,
             max_seeds: int = 12, max_depth: int = 3, ad: bool = True) -> dict:
    """A random program of at most `max_writes` host calls per execution (per seed) and at
    most `max_sites` write sites in the compiled program, nested vmaps at most `max_seeds`
    seeds in all, writing to up to `writers` writers per seed space (see `write`); writers
    are numbered 0, 1, ... in order of first use. `ad`: whether "ad" nodes may appear."""
    ids: dict[tuple[int, tuple[int, ...]], int] = {}

    def write(path):
        # A writer serves one seed space (one path of vmap sizes): a run's seed_<i> then
        # always means the same batch element, written by one device in program order.
        # (Under pmap, the writes of device 1 outside a vmap and those of device 0's second
        # vmap element would share seed_1 with no order between them.)
        writer = ids.setdefault((choices.integer(0, writers - 1), path), len(ids))
        kind = choices.choice(("scalar", "dict"))
        if kind == "scalar":
            prefix, keys = "", [choices.choice(KEYS)]
        else:
            prefix = choices.choice(PREFIXES)
            count = choices.integer(1, len(KEYS))
            start = choices.integer(0, len(KEYS) - 1)
            keys = [KEYS[(start + k) % len(KEYS)] for k in range(count)]
        node = {"t": "write", "w": writer, "kind": kind,
                "prefix": prefix, "keys": keys, "auto": choices.boolean(),
                "d": choices.choice(INCREMENTS)}
        return node, 1, 1

    def node(depth, writes, sites, path):
        """(node, host calls per execution, write sites in the program)."""
        seeds = math.prod(path)
        kinds = ["write"]
        if depth < max_depth and writes >= 2 and sites >= 2:
            kinds += ["seq", "pyloop", "scan", "fori", "while", "cond"]
            if seeds * 2 <= max_seeds:
                kinds.append("vmap")
            if ad:
                kinds.append("ad")
        if depth == 0 and len(kinds) > 1:
            kinds.remove("write")  # a program is more than one write
        kind = choices.choice(kinds)
        if kind == "write":
            return write(path)
        if kind == "seq":
            body, used_writes, used_sites = [], 0, 0
            for _ in range(choices.integer(2, 3)):
                if writes - used_writes < 1 or sites - used_sites < 1:
                    break
                child, w, s = node(depth + 1, writes - used_writes, sites - used_sites, path)
                body.append(child)
                used_writes, used_sites = used_writes + w, used_sites + s
            return {"t": "seq", "body": body}, used_writes, used_sites
        if kind in ("pyloop", "scan", "fori", "while"):
            n = choices.integer(1, min(4 if kind == "pyloop" else 12, writes))
            unroll = choices.choice(UNROLLS) if kind == "scan" else 1
            copies = n if kind == "pyloop" else _copies(n, unroll) if kind == "scan" else 1
            while copies > sites:  # a shorter loop fits
                n -= 1
                copies = n if kind == "pyloop" else _copies(n, unroll)
            child, w, s = node(depth + 1, writes // n, sites // copies, path)
            out = {"t": kind, "n": n, "body": child}
            if kind == "scan":
                out["unroll"] = unroll
            return out, n * w, copies * s
        if kind == "cond":
            m = choices.integer(2, 3)
            then, w1, s1 = node(depth + 1, writes, sites // 2, path)
            other, w2, s2 = None, 0, 0
            if choices.boolean():
                other, w2, s2 = node(depth + 1, writes, sites // 2, path)
            return ({"t": "cond", "on": choices.choice(("idx", "counter")), "m": m,
                     "r": choices.integer(0, m - 1), "then": then, "else": other},
                    max(w1, w2), s1 + s2)
        if kind == "ad":
            child, w, s = node(depth + 1, writes, sites, path)
            return {"t": "ad", "how": choices.choice(AD_KINDS), "body": child}, w, s
        b = choices.integer(1, min(3, max_seeds // seeds))
        child, w, s = node(depth + 1, writes, sites, (*path, b))
        return {"t": "vmap", "b": b, "body": child}, w, s

    return node(0, max_writes, max_sites, ())[0]


def show(node) -> str:
    """A compact one-line rendering of a program, for failure messages."""
    t = node["t"]
    if t == "write":
        tags = ",".join(tags_of(node))
        step = "None" if node["auto"] else f"+{node['d']}"
        call = "add_scalar" if node["kind"] == "scalar" else "add_dict"
        return f"w{node['w']}.{call}({tags}; step={step}, d={node['d']})"
    if t == "seq":
        return "[" + "; ".join(show(c) for c in node["body"]) + "]"
    if t == "cond":
        other = "" if node["else"] is None else f" else {show(node['else'])}"
        return (f"cond({node['on']}%{node['m']}=={node['r']}: {show(node['then'])}"
                f"{other})")
    if t == "vmap":
        return f"vmap({node['b']})({show(node['body'])})"
    if t == "ad":
        return f"{node['how']}({show(node['body'])})"
    extra = f",unroll={node['unroll']}" if t == "scan" else ""
    return f"{t}({node['n']}{extra})({show(node['body'])})"


def tags_of(node) -> list[str]:
    return [f"{node['prefix']}/{k}" if node["prefix"] else k for k in node["keys"]]


def kinds_of(node) -> set[str]:
    """The node types a program uses."""
    if node is None:
        return set()
    if node["t"] == "write":
        return {"write", node["kind"], "auto" if node["auto"] else "explicit"}
    if node["t"] == "seq":
        return {"seq"}.union(*(kinds_of(c) for c in node["body"]))
    if node["t"] == "cond":
        return {"cond"} | kinds_of(node["then"]) | kinds_of(node["else"])
    if node["t"] == "ad":
        return {"ad", node["how"]} | kinds_of(node["body"])
    return {node["t"]} | kinds_of(node["body"])


def writers_of(node) -> set[int]:
    if node is None:
        return set()
    if node["t"] == "write":
        return {node["w"]}
    if node["t"] == "seq":
        return set().union(*(writers_of(c) for c in node["body"]))
    if node["t"] == "cond":
        return writers_of(node["then"]) | writers_of(node["else"])
    return writers_of(node["body"])


# ------------------------------------------------------------------------------------------
# The model: what every (run, seed, tag) must hold.


def model(program, counter0: int, top_seeds: list[int] | None = None
          ) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{run: {tag: [(step, value), ...]}}``, ``run`` being ``w<k>`` or ``w<k>/seed_<i>``.

    `top_seeds`: the seed positions of the whole program (pmap / a vmapped entry point),
    ``None`` when it runs unbatched.
    """
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    last: dict[tuple[int, int | None, str], int] = {}

    def run(node, counter, idx, seeds):
        t = node["t"]
        if t == "write":
            counter += node["d"]
            assert counter < MAX_COUNTER, "program too long for exact values"
            tags = tags_of(node)
            for seed in seeds if seeds is not None else [None]:
                keys = [(node["w"], seed, tag) for tag in tags]
                if node["auto"]:
                    step = max(last.get(k, -1) for k in keys) + 1
                else:
                    step = counter
                assert all(step > last.get(k, -1) for k in keys)  # the generator's promise
                name = f"w{node['w']}" if seed is None else f"w{node['w']}/seed_{seed}"
                for j, (key, tag) in enumerate(zip(keys, tags, strict=True)):
                    last[key] = step
                    value = (seed or 0) * SEED_SCALE + 4 * counter + j
                    out.setdefault(name, {}).setdefault(tag, []).append((step, float(value)))
            return counter
        if t == "seq":
            for child in node["body"]:
                counter = run(child, counter, idx, seeds)
            return counter
        if t in ("pyloop", "scan", "fori", "while"):
            for i in range(node["n"]):
                counter = run(node["body"], counter, i, seeds)
            return counter
        if t == "cond":
            on = idx if node["on"] == "idx" else counter
            branch = node["then"] if on % node["m"] == node["r"] else node["else"]
            return counter if branch is None else run(branch, counter, idx, seeds)
        if t == "ad":  # differentiating changes nothing the host sees
            return run(node["body"], counter, idx, seeds)
        assert t == "vmap"
        b = node["b"]
        inner = [j for j in range(b)] if seeds is None else [s * b + j for s in seeds
                                                               for j in range(b)]
        return run(node["body"], counter, idx, inner)

    run(program, counter0, 0, top_seeds)
    return out


# ------------------------------------------------------------------------------------------
# The same program in JAX.


def differentiated(body, how: str, traced):
    """An "ad" node: ``body`` (``(state, idx, seed) -> state``) run as part of a loss of a
    float ``x`` and differentiated by ``how`` (one of `AD_KINDS`). ``x`` is 0 and is added
    to the seed, so that every write inside depends on the differentiated variable with its
    forward value unchanged; the loss is the body's counter times ``x`` plus ``sin(x)``.
    Every input of the loss is an argument (custom_vjp refuses closures over tracers of an
    enclosing transformation); the counter comes back as the loss's aux output."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    def loss(x, seed, counter, idx):
        out = traced(body((counter, 0), idx, seed + x))
        return out.astype(jnp.float32) * x + jnp.sin(x), out

    def no_tangent(value):
        return np.zeros(np.shape(value), jax.dtypes.float0)

    def custom_vjp():
        f = jax.custom_vjp(loss)
        f.defvjp(lambda x, seed, c, i: (loss(x, seed, c, i), (x, seed, c, i)),
                 lambda res, ct: (ct[0] * jnp.cos(res[0]), jnp.zeros_like(res[1]),
                                  no_tangent(res[2]), no_tangent(res[3])))
        return f

    def custom_jvp():
        f = jax.custom_jvp(loss)

        @f.defjvp
        def f_jvp(primals, tangents):
            out = loss(*primals)
            return out, (tangents[0] * jnp.cos(primals[0]), no_tangent(out[1]))

        return f

    def node(state, idx, seed):
        args = (jnp.float32(0.0), jnp.asarray(seed, jnp.float32), traced(state),
                jnp.asarray(idx, jnp.int32))
        if how == "linearize":  # and the linear function applied once
            (_, out), f_jvp = jax.linearize(lambda x: loss(x, *args[1:]), args[0])
            loss_dot, _ = f_jvp(jnp.float32(1.0))
            return out + (loss_dot * 0).astype(jnp.int32), 0
        if how == "value_and_grad":
            return jax.value_and_grad(loss, has_aux=True)(*args)[0][1], 0
        f = {"grad": loss, "checkpoint": jax.checkpoint(loss), "custom_vjp": custom_vjp(),
             "custom_jvp": custom_jvp()}[how]
        return jax.grad(f, has_aux=True)(*args)[1], 0

    return node


def build(program, writers, counter0: int):
    """``f(seed) -> counter``: the program as a traceable JAX function (``seed``: a float,
    or the traced seed position of a pmapped/vmapped entry point).

    The counter is kept static (a Python int) as long as it can be: outside loops and conds
    writes get Python-int steps and constant values, as a user's unrolled Python loop does,
    and inside a loop body every write depends only on the loop carry, not on the write
    before it. Nothing but program order relates the writes, as in the issue's examples.
    A loop, a cond and a vmap that holds either return the counter as a traced value."""
    import jax
    import jax.numpy as jnp

    def traced(state):
        base, offset = state
        return jnp.int32(offset) if base is None else base + offset

    def value_of(state):
        base, offset = state
        return offset if base is None else base + offset

    def compile_node(node):
        t = node["t"]
        if t == "write":
            writer, d, auto = writers[node["w"]], node["d"], node["auto"]
            tags, kind, prefix, keys = tags_of(node), node["kind"], node["prefix"], node["keys"]

            def write(state, idx, seed):
                state = (state[0], state[1] + d)
                counter = value_of(state)
                if isinstance(counter, int):
                    base = seed * SEED_SCALE + 4.0 * counter
                else:
                    base = seed * SEED_SCALE + 4.0 * counter.astype(jnp.float32)
                step = None if auto else counter
                if kind == "scalar":
                    writer.add_scalar(tags[0], base, global_step=step)
                else:
                    writer.add_dict(prefix, {k: base + j for j, k in enumerate(keys)},
                                    global_step=step)
                return state

            return write
        if t == "seq":
            children = [compile_node(c) for c in node["body"]]

            def seq(state, idx, seed):
                for child in children:
                    state = child(state, idx, seed)
                return state

            return seq
        if t == "pyloop":
            body, n = compile_node(node["body"]), node["n"]

            def pyloop(state, idx, seed):
                for i in range(n):
                    state = body(state, i, seed)
                return state

            return pyloop
        if t == "scan":
            body, n, unroll = compile_node(node["body"]), node["n"], node["unroll"]

            def scan(state, idx, seed):
                step = lambda c, i: (traced(body((c, 0), i, seed)), None)  # noqa: E731
                return jax.lax.scan(step, traced(state), jnp.arange(n, dtype=jnp.int32),
                                    unroll=unroll)[0], 0

            return scan
        if t == "fori":
            body, n = compile_node(node["body"]), node["n"]

            def fori(state, idx, seed):
                return jax.lax.fori_loop(0, n, lambda i, c: traced(body((c, 0), i, seed)),
                                         traced(state)), 0

            return fori
        if t == "while":
            body, n = compile_node(node["body"]), node["n"]

            def while_(state, idx, seed):
                def step(carry):
                    c, i = carry
                    return traced(body((c, 0), i, seed)), i + 1

                return jax.lax.while_loop(lambda carry: carry[1] < n, step,
                                          (traced(state), jnp.int32(0)))[0], 0

            return while_
        if t == "cond":
            then = compile_node(node["then"])
            other = None if node["else"] is None else compile_node(node["else"])
            on, m, r = node["on"], node["m"], node["r"]

            def cond(state, idx, seed):
                pred = (jnp.asarray(idx if on == "idx" else traced(state)) % m) == r
                return jax.lax.cond(
                    pred, lambda: traced(then(state, idx, seed)),
                    lambda: traced(state if other is None else other(state, idx, seed))), 0

            return cond
        if t == "ad":
            return differentiated(compile_node(node["body"]), node["how"], traced)
        assert t == "vmap"
        body, b = compile_node(node["body"]), node["b"]

        def vmap(state, idx, seed):
            inner = []

            def one(j):
                inner.append(body(state, idx, seed * b + j))
                return traced(inner[-1])

            out = jax.vmap(one, out_axes=None)(jnp.arange(b, dtype=jnp.float32))
            # A body without loops or conds leaves the counter static (the same base).
            return inner[0] if inner[0][0] is state[0] else (out, 0)

        return vmap

    f = compile_node(program)
    return lambda seed: traced(f((None, counter0), 0, seed))


# ------------------------------------------------------------------------------------------
# Comparing what was read back with the model.


def differences(got: dict, want: dict) -> list[str]:
    """Every difference between two ``{run: {tag: [(step, value)]}}``, one line each, with
    the counts (expected vs got); empty when equal."""
    lines = []
    for run in sorted(set(got) | set(want)):
        g, w = got.get(run, {}), want.get(run, {})
        for tag in sorted(set(g) | set(w)):
            gp = [(int(s), float(v)) for s, v in g.get(tag, [])]
            wp = [(int(s), float(v)) for s, v in w.get(tag, [])]
            if gp != wp:
                first = next((k for k, (a, b) in enumerate(zip(gp, wp)) if a != b),
                             min(len(gp), len(wp)))
                lines.append(
                    f"{run} {tag!r}: expected {len(wp)} points, got {len(gp)}; first "
                    f"difference at #{first}: expected {wp[first:first + 3]}, "
                    f"got {gp[first:first + 3]}")
    return lines


def count_points(runs: dict) -> int:
    return sum(len(p) for tags in runs.values() for p in tags.values())
