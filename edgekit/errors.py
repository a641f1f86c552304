"""Errors a user can cause.

A ``UserError`` carries one sentence that says what is wrong and how to fix it. The CLI prints
it without a traceback and exits with status 2; every other exception is a bug and still raises.
"""


class UserError(Exception):
    """A problem with the user's input (path, format, value), not a bug in edgekit."""


# What a full disk reports through libraries that do not raise OSError (safetensors' Rust writer,
# tokenizers): the OS's own text.
_DISK_FULL_TEXT = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def environment_error(e: BaseException) -> str | None:
    """One sentence for a failure the user's machine causes (a full disk, a read-only or forbidden
    place), or None for anything else, which is a bug and keeps its traceback."""
    import errno

    where = f" '{e.filename}'" if isinstance(e, OSError) and e.filename else ""
    code = e.errno if isinstance(e, OSError) else None
    if code in (errno.ENOSPC, errno.EDQUOT) or any(t in str(e) for t in _DISK_FULL_TEXT):
        return f"no space left on device while writing{where}; free some space or choose an --out on another disk."
    if code == errno.EROFS:
        return f"cannot write{where}: the file system is read-only; choose an --out on a writable disk."
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied for{where}; check its permissions or choose another path."
    return None
