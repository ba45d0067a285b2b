"""Checks of run names and run directories, made when a writer is constructed (before
anything is created): what would fail later, in the writer thread, fails at the call."""

from __future__ import annotations

import errno
import os

__all__ = ["FILE_NAME_ROOM", "check_log_dir", "check_run_name"]

# Room a run directory must leave for what callax puts in it: ``/seed_<i>`` and an event
# file name (``events.out.tfevents.<time>.<host>.<pid>.<n>.callax``).
FILE_NAME_ROOM = 1 + len("seed_") + 10 + 1 + len("events.out.tfevents..callax") + 10 + 64 + 30


def _limits(path: str) -> tuple[int, int]:
    """``(NAME_MAX, PATH_MAX)`` of the file system holding ``path`` (or its nearest
    existing ancestor), with the POSIX defaults where the OS does not say."""
    probe = path
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    try:
        return os.pathconf(probe, "PC_NAME_MAX"), os.pathconf(probe, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        return 255, 4096


def check_run_name(name: object) -> str:
    """Check that ``name`` is one directory name: a non-empty str, not ``.`` or ``..``,
    without a path separator or NUL, at most ``NAME_MAX`` bytes. A run name can therefore
    never point outside its parent ``log_dir``.

    **Arguments:**

    - `name`: a run name (a directory under ``log_dir``).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"run name must be a non-empty str, got {name!r}")
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if name in (".", "..") or any(sep in name for sep in separators) or "\0" in name:
        raise ValueError(
            f"invalid run name {name!r}: a run name is one directory under log_dir, without "
            "'/', '..' or an absolute path (put sub-directories into log_dir instead)"
        )
    name_max, _ = _limits(os.getcwd())
    if len(os.fsencode(name)) > name_max:
        raise ValueError(f"run name is {len(os.fsencode(name))} bytes long, more than the "
                         f"file system allows ({name_max}): {name[:40]!r}...")
    return name


def _broken_link(text: str, link: str) -> None:
    """Raise for a symlink on the way to ``log_dir`` that leads nowhere.

    Returns quietly when ``link`` leads somewhere after all: another thread or process (a
    second run opened at the same time) may create the path between the caller's checks.
    """
    where = "" if os.path.abspath(text) == link else f" (on its way: {link!r})"
    try:
        os.stat(link)
        return
    except OSError as error:
        loops = error.errno == errno.ELOOP
    try:
        target = os.readlink(link)
    except OSError:  # no longer a symlink: replaced meanwhile
        return
    if loops:
        raise OSError(errno.ELOOP, f"log_dir {text!r}{where} is a symlink that loops "
                      f"({target!r})") from None
    raise FileNotFoundError(errno.ENOENT, f"log_dir {text!r}{where} is a dangling symlink to "
                            f"{target!r}")


def check_log_dir(path: str | os.PathLike) -> str:
    """Check, without creating anything, that a run directory can be created and written;
    return its absolute path.

    Raises ``FileNotFoundError`` (dangling) or ``OSError`` (``ELOOP``) for a symlink on the
    way that leads nowhere, ``ValueError`` for a path too long for the file system (a component over
    ``NAME_MAX`` bytes, or the whole over ``PATH_MAX`` with room for callax's own files) or
    holding a NUL, ``NotADirectoryError`` if the path or one of its parents is an existing
    file, and ``PermissionError`` if its nearest existing ancestor is not writable by this
    process (a read-only file system included).

    **Arguments:**

    - `path`: the run directory.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"log_dir must be a path, got {path!r}")
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text:
        raise ValueError("log_dir must not be empty")
    if "\0" in text:
        raise ValueError(f"log_dir contains a NUL character: {text!r}")
    directory = os.path.abspath(text)
    name_max, path_max = _limits(directory)
    for part in directory.split(os.sep):
        if len(os.fsencode(part)) > name_max:
            raise ValueError(
                f"log_dir {text!r} has a component of {len(os.fsencode(part))} bytes, more than "
                f"the file system allows ({name_max}): {part[:40]!r}...")
    if len(os.fsencode(directory)) + FILE_NAME_ROOM >= path_max:
        raise ValueError(
            f"log_dir is too long: {len(os.fsencode(directory))} bytes, and its event files "
            f"need about {FILE_NAME_ROOM} more within the system's limit of {path_max} "
            f"(log_dir starts with {directory[:60]!r})")
    probe = directory
    while not os.path.exists(probe):
        if os.path.lexists(probe):  # a symlink whose target is missing or loops
            _broken_link(text, probe)
            continue  # it returned: the path was created meanwhile (the loop's test sees it)
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        what = "is a file" if probe == directory else f"is inside the file {probe!r}"
        raise NotADirectoryError(errno.ENOTDIR, f"log_dir {text!r} {what}, not a directory")
    effective = os.access in os.supports_effective_ids
    if not os.access(probe, os.W_OK | os.X_OK, effective_ids=effective):
        where = "" if probe == directory else f" (its nearest existing parent {probe!r})"
        raise PermissionError(errno.EACCES,
                              f"log_dir {text!r}{where} is not writable by this process")
    return directory

