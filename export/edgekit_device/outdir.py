"""Output directories: edgekit replaces only what it wrote itself.

Every directory edgekit writes (a bundle, a checkpoint, a run directory...) holds a small marker,
``.edgekit-written.json``: ``{"written_by": "edgekit", "kind": ..., "entries": [...], "open": ...}``.
A directory written in one go (a bundle, a checkpoint) is sealed when complete (``open: false``)
and ``entries`` lists every path in it; a run directory, written step by step, is ``open`` and
``entries`` are the top-level names added as they are written (``claim``).

The rule every command follows (``check_out_dir``): a missing or empty ``--out`` is written; a
non-empty one is refused unless its marker says it is an earlier output of the same kind, and
even then it is replaced only when asked (``--overwrite``) and only if everything in it is
edgekit's (nested directories with their own marker are checked the same way). A file edgekit did
not write is never deleted: its presence refuses the replacement, naming it.

This module is the device runtime's (``unpack``); ``edgekit.io`` reuses it for every command.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from .errors import BundleError

MARKER = ".edgekit-written.json"
WRITTEN_BY = "edgekit"
# What edgekit's atomic writes name their temporary files and directories (``.NAME.tmp-XXXX``) and
# an earlier output moved aside before deletion (``.NAME.old-XXXX``); a kill can leave them behind.
_TEMP_NAME = re.compile(r"\..+\.(tmp|old)-[A-Za-z0-9_-]+")


def is_temp_name(name: str) -> bool:
    """True for the hidden temporary names of edgekit's own atomic writes."""
    return bool(_TEMP_NAME.fullmatch(name))


def describe(kind: str) -> str:
    """'a bundle', 'an int8 model', 'a distill run'... for messages."""
    words = kind.replace("-", " ")
    return ("an " if words[:1] in "aeiou" else "a ") + words


def read_marker(directory) -> dict | None:
    """The marker of ``directory``, or None when edgekit did not write it (or the marker is unreadable)."""
    path = Path(directory) / MARKER
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if (not isinstance(data, dict) or data.get("written_by") != WRITTEN_BY or not isinstance(data.get("kind"), str)
            or not isinstance(data.get("entries"), list)):
        return None
    return data


def write_marker(directory, kind: str, entries=(), open_: bool = False) -> None:
    """Write the marker atomically (temporary file, then rename)."""
    directory = Path(directory)
    data = {"written_by": WRITTEN_BY, "kind": kind, "open": bool(open_),
            "entries": sorted({str(e) for e in entries if e != MARKER and not is_temp_name(str(e))})}
    fd, tmp = tempfile.mkstemp(prefix=f".{MARKER}.tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, directory / MARKER)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def seal(directory, kind: str) -> None:
    """Mark a finished directory: its marker lists every path in it now (all edgekit's)."""
    directory = Path(directory)
    paths = [p.relative_to(directory).as_posix() for p in directory.rglob("*")
             if not _skipped(p.name) and not any(_skipped(q) for q in p.relative_to(directory).parts)]
    write_marker(directory, kind, paths, open_=False)


def _skipped(name: str) -> bool:
    return name == MARKER or is_temp_name(name)


def claim(path) -> None:
    """Record ``path`` (about to be or just written by edgekit) in the nearest enclosing open marker.

    The top-level name under that directory is added to its ``entries``. Stops at the first marked
    ancestor: a sealed directory already lists what it holds."""
    path = Path(path).absolute()
    for parent in path.parents:
        marker = read_marker(parent)
        if marker is None:
            continue
        if marker.get("open"):
            name = path.relative_to(parent).parts[0]
            if name not in marker["entries"] and name != MARKER and not is_temp_name(name):
                write_marker(parent, marker["kind"], [*marker["entries"], name], open_=True)
        return


def foreign_entries(directory) -> list[str]:
    """Paths (relative to ``directory``) edgekit did not write; ``["."]`` if it wrote none of it.

    A sealed directory must hold exactly the paths its marker lists. A run directory (open marker)
    must hold only the top-level names it claimed; inside those, directories with their own marker
    are checked the same way, and the rest (a run's ``checkpoints``, ``vocab``) is the run's."""
    directory = Path(directory)
    marker = read_marker(directory)
    if marker is None:
        return ["."]
    entries = set(marker["entries"])
    found = []
    if marker.get("open"):
        for child in sorted(directory.iterdir()):
            if _skipped(child.name):
                continue
            if child.name not in entries:
                found.append(child.name)
            elif _real_dir(child):
                found += [f"{child.name}/{p}" for p in _inside_run_entry(child)]
        return found

    def walk(d: Path, prefix: str) -> None:
        for child in sorted(d.iterdir()):
            if _skipped(child.name):
                continue
            rel = prefix + child.name
            if rel not in entries:
                found.append(rel)
            elif _real_dir(child):
                walk(child, rel + "/")

    walk(directory, "")
    return found


def _real_dir(p: Path) -> bool:
    return p.is_dir() and not p.is_symlink()


def _inside_run_entry(d: Path) -> list[str]:
    if read_marker(d) is not None:
        return foreign_entries(d)
    found = []
    for child in sorted(d.iterdir()):
        if _real_dir(child) and not _skipped(child.name):
            found += [f"{child.name}/{p}" for p in _inside_run_entry(child)]
    return found


def is_empty_dir(path) -> bool:
    with os.scandir(path) as it:
        return next(it, None) is None


def check_out_dir(out, kind: str, overwrite: bool, error=BundleError, flag: str = "--overwrite") -> bool:
    """Decide whether ``out`` may be written; True when it holds an earlier output to replace.

    Raises ``error`` with one sentence when ``out`` is a file, is not empty and was not written by
    edgekit as ``kind``, holds such an output but ``overwrite`` is false, or holds files edgekit did
    not write beside it."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return False
    if not out.is_dir():
        raise error(f"'{out}' exists and is not a directory; choose another output directory.")
    try:
        if is_empty_dir(out):
            return False
    except OSError as e:
        raise error(f"cannot read the output directory '{out}' ({e.strerror or e}); choose another one.") from None
    marker = read_marker(out)
    if marker is None:
        first = sorted(p.name for p in out.iterdir())[0]
        raise error(f"'{out}' is not empty (it holds '{first}') and was not written by edgekit; choose a new or "
                    f"empty output directory, edgekit never replaces files it did not write.")
    if marker["kind"] != kind:
        raise error(f"'{out}' holds {describe(marker['kind'])} written by edgekit, not {describe(kind)}; choose "
                    f"another output directory.")
    if not overwrite:
        raise error(f"'{out}' already exists and holds {describe(kind)} edgekit wrote earlier; pass {flag} to "
                    f"replace it, or choose another output directory.")
    foreign = foreign_entries(out)
    if foreign:
        raise error(f"'{out}' holds {describe(kind)} edgekit wrote earlier but also '{foreign[0]}', which edgekit did "
                    f"not write; move it away or choose another output directory (edgekit never deletes it).")
    return True


def remove_own(directory, error=BundleError) -> None:
    """Delete ``directory``, which edgekit wrote, after checking that nothing in it is someone else's."""
    directory = Path(directory)
    if not directory.exists():
        return
    foreign = foreign_entries(directory)
    if foreign:
        what = "was not written by edgekit" if foreign == ["."] else f"holds '{foreign[0]}', which edgekit did not write"
        raise error(f"'{directory}' {what}; move it away or choose another output directory (edgekit never "
                    f"deletes it).")
    _remove_aside(directory)


def clear_own(directory, error=BundleError) -> None:
    """Delete every entry of ``directory`` that edgekit wrote, keeping the directory and its marker
    (an open marker starts over); refuses, deleting nothing, if anything in it is someone else's."""
    directory = Path(directory)
    marker = read_marker(directory)
    foreign = foreign_entries(directory)
    if foreign:
        what = "was not written by edgekit" if foreign == ["."] else f"holds '{foreign[0]}', which edgekit did not write"
        raise error(f"'{directory}' {what}; move it away or choose another output directory (edgekit never "
                    f"deletes it).")
    for child in directory.iterdir():
        if child.name == MARKER:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    write_marker(directory, marker["kind"], [], open_=marker.get("open", False))


def _remove_aside(directory: Path) -> None:
    """Rename first, then delete: an interrupted deletion leaves a hidden ``.NAME.old-*`` directory,
    never a half-deleted one under the real name."""
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}-{time.time_ns()}")
    os.replace(directory, old)
    shutil.rmtree(old, ignore_errors=True)


def replace_dir(tmp, final, kind: str, overwrite: bool, error=BundleError, flag: str = "--overwrite") -> None:
    """Seal the finished temporary directory ``tmp`` and move it to ``final``.

    ``final`` is checked again (``check_out_dir``), since it may have changed while ``tmp`` was
    written; an earlier output is moved aside, then deleted. On failure ``tmp`` is left to the caller."""
    tmp, final = Path(tmp), Path(final)
    seal(tmp, kind)
    replacing = check_out_dir(final, kind, overwrite, error, flag)
    old = None
    if not replacing and final.is_dir() and not final.is_symlink():
        # An empty directory is replaced: rmdir, which fails (deleting nothing) if a file appeared since the check.
        try:
            final.rmdir()
        except OSError:
            raise error(f"'{final}' is no longer empty; choose another output directory (edgekit never deletes "
                        "files it did not write).") from None
    elif replacing:
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)  # put the earlier output back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
