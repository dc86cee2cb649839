"""Atomic writes for every file a workdir holds: a reader (or a rerun after a kill) sees the old file or the new
one, never a half-written one.

    with atomic(path) as f:      # a temporary file in the same folder, flushed, fsynced, then os.replace'd
        f.write(...)
    write_text(path, text)
    write_json(path, obj)        # indent=2; other json.dump keywords pass through
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid

_MODES = ("w", "wt", "wb")


@contextlib.contextmanager
def atomic(path: str | os.PathLike, mode: str = "w", **open_kwargs):
    """Yields a file opened with `mode` ("w" or "wb") that replaces `path` when the block ends without an error.

    The temporary file (PATH.<random>.tmp, next to `path` so that os.replace is a rename on one file system) is
    removed when the block raises. The new file's permissions follow the umask, like open(path, "w")."""
    if mode not in _MODES:
        raise ValueError(f"atomic() writes whole files: mode must be one of {', '.join(_MODES)}, not {mode!r}")
    path = os.fspath(path)
    tmp = f"{path}.{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _fsync_dir(folder: str):
    """Makes the rename itself durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8"):
    with atomic(path, "w", encoding=encoding) as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj, indent: int | None = 2, **dump_kwargs):
    with atomic(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, **dump_kwargs)
