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
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = path  # a failed write names the file it was for
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


class WorkdirLock:
    """WORKDIR/lock: one training run per workdir at a time (two launches of one command would both write its
    checkpoints and metrics). Kept here rather than taken from `filelock`, which records no holder to name.

    The lock is an `fcntl.flock` on the file, which the kernel drops when its process dies (so a killed run's lock
    is stale at once on its host), and the file names the holder (host, PID, start time) for the message a second
    launch gets. A file naming another host is reported, not taken over: flock is not reliable across hosts on
    every network file system. Released, the file stays, empty (deleting it would let a waiting opener and a new
    one lock two different files)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "lock")
        self._fd = None

    def acquire(self):
        import fcntl
        import socket
        import time

        from ptft_jax.errors import CheckpointError
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            holder = self._holder(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CheckpointError(f"The workdir {os.path.dirname(self.path)} is in use by {_who(holder)}; wait "
                                      f"for that run to end (or stop it), or use another --workdir.") from None
            holder = self._holder(fd)  # re-read under the lock: a run that just started may have written it
            host = socket.gethostname()
            if holder and holder.get("host") != host:
                fcntl.flock(fd, fcntl.LOCK_UN)
                raise CheckpointError(f"The workdir {os.path.dirname(self.path)} is in use by {_who(holder)} (another "
                                      f"host, whose lock this one cannot check); if that run is gone, delete "
                                      f"{self.path} and rerun.")
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"host": host, "pid": os.getpid(), "started": time.strftime(
                "%Y-%m-%d %H:%M:%S")}).encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    @staticmethod
    def _holder(fd) -> dict | None:
        try:
            data = os.pread(fd, 4096, 0)
            return json.loads(data) if data.strip() else None
        except ValueError:  # a lock file cut short: no holder to name
            return None

    def release(self):
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None


def _who(holder: dict | None) -> str:
    if not holder:
        return "another process"
    return f"PID {holder.get('pid')} on {holder.get('host')} (since {holder.get('started')})"
