"""Docs that run: every Python block of README.md and docs/ is a complete program, run here
(training blocks with few steps, through ``CALLAX_DOCS_TIMESTEPS``), or starts with a
``# fragment:`` line and really is incomplete (it uses names it never defines). Snippet
blocks (``--8<-- "file:section"``) name sections that exist in files the scaling tests run;
``pycon`` sessions run as doctests."""

from __future__ import annotations

import ast
import builtins
import doctest
import glob
import importlib.util
import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FENCE = re.compile(r"^(\s*)```(\w+)")
DOC_STEPS = "2048"  # env steps of a training block under test


def blocks(language: str) -> list[tuple[str, str]]:
    """``[(file:line, source)]`` of every fenced block of `language`."""
    found = []
    for path in ["README.md", *sorted(glob.glob("docs/*.md", root_dir=ROOT))]:
        lines = open(os.path.join(ROOT, path), encoding="utf-8").read().splitlines()
        i = 0
        while i < len(lines):
            match = FENCE.match(lines[i])
            if match and match.group(2) == language:
                indent, start = match.group(1), i
                i += 1
                body = []
                while lines[i].strip() != "```":
                    body.append(lines[i][len(indent):] if lines[i].startswith(indent)
                                else lines[i])
                    i += 1
                found.append((f"{path}:{start + 1}", "\n".join(body) + "\n"))
            i += 1
    return found


def is_snippet(source: str) -> bool:
    return all(line.startswith("--8<--") for line in source.splitlines() if line.strip())


def is_fragment(source: str) -> bool:
    first = next(line for line in source.splitlines() if line.strip())
    return first.startswith("# fragment:")


def free_names(source: str) -> set[str]:
    """Names the block reads but never binds (assignment, def, class, argument, import,
    comprehension, ``with``/``except`` target) and that are not builtins."""
    tree = ast.parse(textwrap.dedent(source))
    bound = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    used = {node.id for node in ast.walk(tree)
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    return used - bound


PYTHON = [b for b in blocks("python") if not is_snippet(b[1])]
COMPLETE = [b for b in PYTHON if not is_fragment(b[1])]
FRAGMENTS = [b for b in PYTHON if is_fragment(b[1])]
SNIPPETS = [b for b in blocks("python") if is_snippet(b[1])]


def test_every_block_is_classified():
    assert len(COMPLETE) >= 10 and len(FRAGMENTS) >= 5 and SNIPPETS
    assert len(COMPLETE) + len(FRAGMENTS) + len(SNIPPETS) == len(blocks("python"))


@pytest.mark.parametrize("where, source", FRAGMENTS, ids=[w for w, _ in FRAGMENTS])
def test_a_fragment_is_really_incomplete(where, source):
    assert free_names(source), f"{where} is marked as a fragment but is a complete program"


@pytest.mark.parametrize("where, source", COMPLETE, ids=[w for w, _ in COMPLETE])
def test_a_complete_block_runs(where, source, tmp_path):
    missing = free_names(source)
    assert not missing, f"{where} uses {sorted(missing)} without defining them"
    for module in re.findall(r"^import (\w+)|^from (\w+)", source, re.M):
        name = module[0] or module[1]
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{where} needs {name}, not installed here")
    env = dict(os.environ, CALLAX_DOCS_TIMESTEPS=DOC_STEPS, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", source], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{where} failed:\n{done.stderr[-3000:]}"


def test_free_names_finds_what_a_block_lacks():
    assert free_names("import jax\nx = jnp.zeros(3)\n") == {"jnp"}
    assert free_names("def f(a):\n    return [b for b in a]\n") == set()


@pytest.mark.parametrize("where, source", SNIPPETS, ids=[w for w, _ in SNIPPETS])
def test_snippets_name_existing_sections(where, source):
    for line in filter(str.strip, source.splitlines()):
        path, section = re.fullmatch(r'--8<-- "([^":]+):(\w+)"', line.strip()).groups()
        text = open(os.path.join(ROOT, path), encoding="utf-8").read()
        assert f"--8<-- [start:{section}]" in text and f"--8<-- [end:{section}]" in text


SESSIONS = blocks("pycon")


@pytest.mark.parametrize("where, source", SESSIONS, ids=[w for w, _ in SESSIONS])
def test_sessions_run_as_doctests(where, source):
    test = doctest.DocTestParser().get_doctest(source, {}, where, where, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.failures == 0 and runner.tries > 0
