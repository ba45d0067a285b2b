"""Docs that run: every Python block of README.md and docs/ is a complete program, run here
in a fresh process of its own (training blocks with few steps, through
``CALLAX_DOCS_TIMESTEPS``; XLA compiling without its expensive optimizations, see ``DOC_ENV``;
the process forked from tests/doc_runner.py, which has imported JAX, see ``BlockRunner``), or
starts with a ``# fragment:`` line and really is incomplete (it uses names it never defines).
Snippet blocks (``--8<-- "file:section"``) name sections that exist in files the scaling
tests run; ``pycon`` sessions run as doctests."""

from __future__ import annotations

import ast
import builtins
import doctest
import glob
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FENCE = re.compile(r"^(\s*)```(\w+)")
DOC_STEPS = "1000"  # env steps of a training block under test (SAC: one iteration)
# What a block's process sees besides the caller's environment. A block is a program a
# reader runs as shown; the test proves it runs (and its own asserts hold), not how fast it
# trains, so XLA skips its expensive optimization passes: JAX's own flag, read from
# ``JAX_DISABLE_MOST_OPTIMIZATIONS``. XLA:CPU compiling the PPO program of
# docs/sb3-callbacks.md took 53 s with them and 13 s without (machine loaded), most of what
# a training block costs here; the blocks themselves stay plain.
DOC_ENV = {"CALLAX_DOCS_TIMESTEPS": DOC_STEPS, "JAX_PLATFORMS": "cpu",
           "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
# And XLA:CPU emits fused loops with its older emitters, not its MLIR fusion emitters (an
# XLA flag, added to the caller's ``XLA_FLAGS``): the same programs, faster to build. The
# process of docs/trainers.md's first block, compile-bound, took 12-14 s of CPU with it and
# 19-22 s without (interleaved runs, machine loaded).
DOC_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false"


def doc_env() -> dict[str, str]:
    """The environment of a block's process: the caller's, ``DOC_ENV`` and ``DOC_XLA_FLAGS``."""
    xla_flags = f"{os.environ.get('XLA_FLAGS', '')} {DOC_XLA_FLAGS}".strip()
    return dict(os.environ, **DOC_ENV, XLA_FLAGS=xla_flags)


class BlockRunner:
    """Runs a block as ``python -c`` would, with ``DOC_ENV``, in a process forked from
    tests/doc_runner.py (which has imported JAX, Equinox and tensorboardX, not callax)."""

    def __init__(self) -> None:
        self.server: subprocess.Popen | None = None

    def start(self) -> subprocess.Popen:
        if self.server is None or self.server.poll() is not None:
            self.server = subprocess.Popen(
                [sys.executable, os.path.join(ROOT, "tests", "doc_runner.py")],
                env=doc_env(), stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True, start_new_session=True)
        return self.server

    def run(self, source: str, cwd, timeout: float) -> tuple[int, str]:
        """``(exit status, stderr)`` of `source` run in `cwd`."""
        import select

        server = self.start()
        assert server.stdin is not None and server.stdout is not None
        out, err = os.path.join(cwd, ".stdout"), os.path.join(cwd, ".stderr")
        request = {"source": source, "cwd": str(cwd), "stdout": out, "stderr": err}
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        if not select.select([server.stdout], [], [], timeout)[0]:
            self.close()
            pytest.fail(f"the block ran for more than {timeout} s")
        line = server.stdout.readline()
        assert line, "the block runner exited"
        with open(err, encoding="utf-8", errors="replace") as file:
            return int(line), file.read()

    def close(self, kill: bool = True) -> None:
        if self.server is None or self.server.poll() is not None:
            return
        if not kill:
            self.server.stdin.close()  # the runner's loop ends
            try:
                self.server.wait(timeout=60)
                return
            except subprocess.TimeoutExpired:
                pass
        os.killpg(self.server.pid, signal.SIGKILL)  # the runner and a block it forked
        self.server.wait()


@pytest.fixture(scope="module")
def block_runner():
    runner = BlockRunner()
    yield runner
    runner.close(kill=False)


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
def test_a_complete_block_runs(where, source, tmp_path, block_runner):
    missing = free_names(source)
    assert not missing, f"{where} uses {sorted(missing)} without defining them"
    for module in re.findall(r"^import (\w+)|^from (\w+)", source, re.M):
        name = module[0] or module[1]
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{where} needs {name}, not installed here")
    status, stderr = block_runner.run(source, tmp_path, timeout=600)
    assert status == 0, f"{where} failed ({status}):\n{stderr[-3000:]}"


def test_the_block_runner_runs_a_block_as_python_c_would(block_runner, tmp_path):
    """A block starts in a fresh ``__main__`` in its own directory, with ``python -c``'s
    ``sys.argv`` and ``sys.path[0]``, ``DOC_ENV`` and no callax imported yet (each block's
    own import of callax runs); its exit status, output, exceptions and atexit handlers are
    those of a process of its own."""
    source = textwrap.dedent("""
        import atexit, os, sys
        assert "callax" not in sys.modules and "jax" in sys.modules
        assert __name__ == "__main__" and "block_runner" not in globals()
        print(os.getcwd(), sys.argv, repr(sys.path[0]), os.environ["CALLAX_DOCS_TIMESTEPS"],
              os.environ["XLA_FLAGS"].split()[-1])
        atexit.register(lambda: open("atexit", "w").close())
        sys.exit(int(open("code").read()))
    """)
    (tmp_path / "code").write_text("3")
    assert block_runner.run(source, tmp_path, timeout=60) == (3, "")
    assert (tmp_path / ".stdout").read_text().split() == [str(tmp_path), "['-c']", "''",
                                                          DOC_STEPS, DOC_XLA_FLAGS]
    assert (tmp_path / "atexit").exists()
    status, stderr = block_runner.run("x = 1\nraise ValueError('from the block')\n",
                                      tmp_path, timeout=60)
    assert status == 1 and stderr.rstrip().endswith("ValueError: from the block")
    status, _ = block_runner.run("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n",
                                 tmp_path, timeout=60)
    assert status == -signal.SIGTERM


def test_the_block_environment_names_flags_jax_reads():
    """``DOC_ENV``'s JAX variable is a flag of the installed JAX (JAX reads ``JAX_<FLAG>``
    from the environment for each of its flags), so it really applies to the blocks."""
    import jax

    for name in DOC_ENV:
        if name.startswith("JAX_"):
            assert name.lower() in jax.config.values, name


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


# --- shell commands ---------------------------------------------------------------------------
# Every command of a ``bash`` block, and every ``$ `` line of a ``text`` block, of README.md
# and docs/: callax's own commands are parsed by callax's argument parser (and those the
# docs show failing fail with the message shown), the others are checked by what runs them
# (pip's requirement syntax and callax's extras, a benchmark's own parser, TensorBoard's and
# W&B's command lines).


def shell_commands() -> list[tuple[str, str, str | None]]:
    """``[(file:line, command, expected output line or None)]``."""
    found = []
    for where, source in blocks("bash"):
        for line in source.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                found += [(where, part.strip(), None) for part in line.split("&&")]
    for where, source in blocks("text"):
        lines = source.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("$ "):
                after = lines[i + 1] if i + 1 < len(lines) else ""
                error = after if after.startswith("callax: error:") else None
                found += [(where, part.strip(), error) for part in line[2:].split("&&")]
    return found


COMMANDS = shell_commands()


def _extras() -> set[str]:
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as file:
        return set(tomllib.load(file)["project"]["optional-dependencies"])


def check_pip(args: list[str]) -> None:
    from packaging.requirements import Requirement

    assert args[0] == "install", args
    for arg in args[1:]:
        if arg == "-e":
            continue
        requirement = Requirement("callax" + arg[1:] if arg.startswith(".") else arg)
        if requirement.name == "callax":
            assert requirement.extras <= _extras(), (arg, _extras())


def check_callax(argv: list[str], error: str | None, capsys) -> None:
    from callax import cli

    if error is None:
        cli.parse(argv, touch=False)  # raises UsageError on anything callax would refuse
        return
    import jax

    assert cli.main(argv) == 2  # fails before compiling anything
    assert capsys.readouterr().err.strip() == error
    del jax


def check_tensorboard(argv: list[str]) -> None:
    assert argv[:1] == ["--logdir"] and len(argv) == 2, argv  # the one flag the docs use
    if importlib.util.find_spec("tensorboard") is None:
        pytest.skip("tensorboard is not installed here")
    from tensorboard import program

    program.TensorBoard().configure(argv=["tensorboard", *argv])


def check_wandb(argv: list[str], where: str) -> None:
    """W&B's own command line parses `argv` (in `where`, a scratch directory holding every
    path the command names: ``wandb sync`` checks that they exist)."""
    if importlib.util.find_spec("wandb") is None:
        pytest.skip("wandb is not installed here")
    from wandb.cli.cli import cli as wandb_cli

    for arg in argv[1:]:
        if not arg.startswith("-"):
            os.makedirs(os.path.join(where, arg), exist_ok=True)

    with wandb_cli.make_context("wandb", list(argv)) as ctx:
        command = wandb_cli.get_command(ctx, argv[0])
        command.make_context(argv[0], list(argv[1:]), parent=ctx)


def check_script(argv: list[str]) -> None:
    path = os.path.join(ROOT, argv[0])
    assert os.path.isfile(path), argv[0]
    done = subprocess.run([sys.executable, path, *argv[1:], "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("where, command, error", COMMANDS,
                         ids=[f"{w}:{c}" for w, c, _ in COMMANDS])
def test_a_shell_command_parses(where, command, error, capsys, tmp_path, monkeypatch):
    import shlex

    argv = shlex.split(command.replace("<", "").replace(">", ""))
    if argv[:3] == ["python", "-m", "pip"]:
        argv = argv[2:]
    if argv[:3] == ["python", "-m", "callax"]:
        argv = ["callax", *argv[3:]]
    program, args = argv[0], argv[1:]
    if program == "callax":
        check_callax(args, error, capsys)
    elif program == "pip":
        check_pip(args)
    elif program == "tensorboard":
        check_tensorboard(args)
    elif program == "wandb":
        monkeypatch.chdir(tmp_path)
        check_wandb(args, str(tmp_path))
    elif argv[:3] == ["python", "-m", "pytest"]:
        assert importlib.util.find_spec("pytest")
    elif program == "python" and args and args[0].endswith(".py"):
        check_script(args)
    else:
        pytest.fail(f"{where}: no check for the command {command!r}")


def test_the_shell_commands_are_found():
    programs = {c.split()[0] for _, c, _ in COMMANDS}
    assert {"callax", "python", "tensorboard"} <= programs
    assert any(error for _, _, error in COMMANDS)
    assert sum(c.startswith("callax train") for _, c, _ in COMMANDS) >= 4
