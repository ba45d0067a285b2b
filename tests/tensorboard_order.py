"""The order in which TensorBoard's frontend shows tags, re-implemented from TensorBoard 2.21's
``webfiles.zip`` (``index.js``), to check what a user sees first without a browser.

*Time Series* (the Angular app): every card (a scalar tag; a histogram tag per run) is sorted
by its tag with a natural compare, then grouped by the part before the first ``/``, groups in
the order of their first card. The compare walks both strings: two digits start two numbers
compared by value (``Number``); otherwise ``/`` or a digit sorts before any other character,
and other characters compare by code (so ``A-Z`` before ``a-z``).

*Scalars* (the Polymer dashboard, ``categorizeTags``): the union of the runs' tags sorted with
the older compare (``vz_sorting.compareTagNames``: ``_`` is a break character too, numbers by
``parseFloat``), then grouped by prefix in the order of first appearance.

``python tests/tensorboard_order.py`` checks both against the functions in the installed
frontend bundle with Node.js (when ``node`` is on the path).
"""

from __future__ import annotations

import functools
import math
import re

__all__ = ["compare_scalars_tab", "compare_time_series", "groups", "scalars_tab_groups",
           "time_series_groups"]

_FLOAT_PREFIX = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _number_end(s: str, i: int) -> int:
    """The end of the number starting at ``s[i - 1]`` (TensorBoard's state machine: digits,
    one ``.``, an exponent)."""
    state = "natural"
    while i < len(s):
        c = s[i]
        if state == "natural":
            if c == ".":
                state = "real"
            elif c in "eE":
                state = "exponent_sign"
            elif not c.isdigit() or not c.isascii():
                break
        elif state == "real":
            if c in "eE":
                state = "exponent_sign"
            elif not c.isdigit() or not c.isascii():
                break
        elif state == "exponent_sign":
            if (c.isdigit() and c.isascii()) or c in "+-":
                state = "exponent"
            else:
                break
        elif not (c.isdigit() and c.isascii()):
            break
        i += 1
    return i


def _js_number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _js_parse_float(text: str) -> float:
    match = _FLOAT_PREFIX.match(text)
    return float(match.group(0)) if match else math.nan


def _digit(c: str) -> bool:
    return "0" <= c <= "9"


def _natural_compare(a: str, b: str, breaks: str, number) -> int:
    i = j = 0
    while True:
        if i == len(a):
            return 0 if j == len(b) else -1
        if j == len(b):
            return 1
        if _digit(a[i]) and _digit(b[j]):
            i0, j0 = i, j
            i, j = _number_end(a, i + 1), _number_end(b, j + 1)
            x, y = number(a[i0:i]), number(b[j0:j])
            if x < y:
                return -1
            if x > y:
                return 1
            continue
        a_break = a[i] in breaks or _digit(a[i])
        b_break = b[j] in breaks or _digit(b[j])
        if a_break:
            if not b_break:
                return -1
        elif b_break:
            return 1
        elif a[i] < b[j]:
            return -1
        elif a[i] > b[j]:
            return 1
        i += 1
        j += 1


def compare_time_series(a: str, b: str) -> int:
    """The Time Series tab's tag compare (breaks: ``/`` and digits)."""
    return _natural_compare(a, b, "/", _js_number)


def compare_scalars_tab(a: str, b: str) -> int:
    """The Scalars tab's tag compare (breaks: ``/``, ``_`` and digits)."""
    return _natural_compare(a, b, "/_", _js_parse_float)


def groups(tags: list[str], compare) -> list[tuple[str, list[str]]]:
    """``[(group, [tag, ...]), ...]``: ``tags`` (one per card, repeats allowed) sorted with
    ``compare`` (a stable sort) and grouped by the part before the first ``/``."""
    found: dict[str, list[str]] = {}
    for tag in sorted(tags, key=functools.cmp_to_key(compare)):
        found.setdefault(tag.split("/", 1)[0], []).append(tag)
    return list(found.items())


def time_series_groups(cards: list[str]) -> list[tuple[str, list[str]]]:
    """The Time Series tab's groups of cards (each card given by its tag)."""
    return groups(cards, compare_time_series)


def scalars_tab_groups(run_tags: dict[str, list[str]]) -> list[tuple[str, list[str]]]:
    """The Scalars tab's categories: the union of the runs' scalar tags."""
    union = sorted({tag for tags in run_tags.values() for tag in tags})
    return groups(union, compare_scalars_tab)


_SAMPLES = ["rollout/ep_rew_mean", "rollout/ep_len_mean", "SACEvents/buffer_size", "time/fps",
            "train/actor_loss", "train/value_loss", "trainer/critic_value/0",
            "trainer/critic_value/10", "trainer/critic_value/2", "train_x/a",
            "rollout_histograms/a",
            "a1.5e3b", "a1.5e+3c", "a20", "a3", "Z/z", "x/y_1", "x/y/1", "x/y1e", "x/y1e5"]


def _check_with_node() -> None:  # pragma: no cover - a developer's check
    """Compare with the minified functions of the installed frontend bundle (Node.js)."""
    import json
    import os
    import subprocess
    import zipfile

    import tensorboard

    bundle = os.path.join(os.path.dirname(tensorboard.__file__), "webfiles.zip")
    with zipfile.ZipFile(bundle) as z:
        js = z.read("index.js").decode()
    # The two compares, found by their shape (names are minified).
    series = re.search(r"function (\w+)\(t,e\)\{let n=0,i=0;for\(;;\)\{if\(n===t\.length\)"
                       r"return i===e\.length\?0:-1", js)
    scalars = re.search(r"function (\w+)\(e,t\)\{let r=0,n=0;for\(;;\)\{if\(r===e\.length\)"
                        r"return n===t\.length\?0:-1", js)
    assert series and scalars, "the compare functions were not found in the bundle"

    def functions_near(start: int) -> str:
        # The compare and its helpers are defined next to each other (minified names repeat
        # elsewhere in the bundle): every whole function defined within 2,500 characters.
        found = []
        for match in re.finditer(r"function \w+\(", js[start:start + 2500]):
            begin = start + match.start()
            depth, i = 0, js.index("{", begin)
            while True:
                depth += {"{": 1, "}": -1}.get(js[i], 0)
                i += 1
                if depth == 0:
                    break
            found.append(js[begin:i])
        return "\n".join(found)

    pairs = [(a, b) for a in _SAMPLES for b in _SAMPLES]
    for found, mine in ((series, compare_time_series), (scalars, compare_scalars_tab)):
        name = found[1]
        program = (functions_near(found.start()) +
                   f"\nconst pairs={json.dumps(pairs)};"
                   f"console.log(JSON.stringify(pairs.map(([a,b])=>Math.sign({name}(a,b)))));")
        theirs = json.loads(subprocess.run(["node", "-e", program], capture_output=True,
                                           text=True, check=True).stdout)
        ours = [mine(a, b) for a, b in pairs]
        wrong = [(p, t, o) for p, t, o in zip(pairs, theirs, ours) if t != o]
        assert not wrong, wrong[:5]
        print(f"{mine.__name__}: {len(pairs)} pairs agree with the bundle's {name}")


if __name__ == "__main__":  # pragma: no cover
    _check_with_node()
