"""Multi-host runs without jax: the cluster the flags or environment name, checked before jax is imported, and the
supervisor that turns a lost process or a cluster that never assembles into one sentence.

Why a supervising process: on jax 0.10.2 every fatal error of the distributed runtime ends in a C++ LOG(FATAL) (the
client's default missed-heartbeat callback, client.h: an absl stack dump and SIGABRT). The cluster not assembling
within `initialization_timeout` (RegisterTask's deadline) aborts so, on process 0 and on the others; a survivor
whose coordinator went away aborts so from the runtime's error-polling thread, milliseconds after the socket closes
and often before Python sees the failed collective; the coordinator's survivor sees the collective fail (a Python
JaxRuntimeError), then waits out the heartbeat timeout in jax's exit-time shutdown barrier and aborts as well.
`jax.distributed.initialize` offers no way to replace that callback, and the low-level client's Python callback
cannot receive its absl Status argument (std::bad_cast, itself fatal on the polling thread), so no code inside the
process can turn those ends into a sentence. The process launch.py started can: it runs the same command as a
child, forwards the child's stderr line by line, holds back what the runtime prints as it fails (kept in
WORKDIR/crash-PID.log), and names what happened from the child's exit status and those lines. SIGTERM and SIGINT
are passed on to the child, which saves a checkpoint and exits 143 / 130 as a single-process run does; the child
ends itself if the supervisor is killed, so that its peers see the process gone. A survivor learns of the loss from
its next collective (seconds), or, when it waits in Orbax's commit barrier, from jax's heartbeat timeout (100 s).
"""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque

from ptft_jax.errors import ConfigError

DEFAULT_INIT_TIMEOUT = 300  # seconds, jax's own default
LOST = 75  # exit status of a process whose peer was lost (EX_TEMPFAIL: restart all processes to resume)
SUPERVISOR_ENV = "PTFT_SUPERVISOR_PID"  # set for the child: the pid of the process that supervises it
_LOST_MARK = "ptft: a collective failed:"  # the child's last line when a collective failed (see child_setup)


@dataclasses.dataclass(frozen=True)
class Cluster:
    coordinator: str  # HOST:PORT of process 0
    num_processes: int
    process_id: int
    init_timeout: int  # seconds the processes may take to connect


def cluster_from(coordinator=None, num_processes=None, process_id=None, init_timeout=None,
                 env=os.environ) -> Cluster | None:
    """The cluster of a multi-process run, from flags else PTFT_* variables; None for one process. Anything
    inconsistent is a ConfigError naming the flag or variable (checked here, before jax is imported)."""
    coordinator, c_name = _pick("coordinator", coordinator, "PTFT_COORDINATOR", env, str)
    n, n_name = _pick("num_processes", num_processes, "PTFT_NUM_PROCESSES", env, int)
    i, i_name = _pick("process_id", process_id, "PTFT_PROCESS_ID", env, int)
    t, t_name = _pick("init_timeout", init_timeout, "PTFT_INIT_TIMEOUT", env, int)
    if t is not None and t < 1:
        raise ConfigError(f"{t_name} is {t}; use the seconds the processes may take to connect, e.g. 300.")
    if n is None:
        if coordinator is not None or i is not None:
            raise ConfigError(f"{c_name if coordinator is not None else i_name} is given without --num_processes; "
                              "give all three on each process: --coordinator=HOST:PORT --num_processes=N "
                              "--process_id=I.")
        return None
    if n < 1:
        raise ConfigError(f"{n_name} is {n}; use the number of processes, 1 or more.")
    if i is not None and not 0 <= i < n:
        raise ConfigError(f"{i_name} is {i}; with {n} process(es) use 0 to {n - 1}.")
    if n == 1:
        return None
    if coordinator is None:
        raise ConfigError(f"{n_name}={n} needs --coordinator=HOST:PORT, the address of process 0 (or "
                          "PTFT_COORDINATOR); without it each process would run alone.")
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{c_name} is {coordinator!r}; use HOST:PORT of process 0, e.g. 10.0.0.1:1234.")
    if i is None:
        raise ConfigError(f"{n_name}={n} needs --process_id=I (0 to {n - 1}, a different one on each process).")
    return Cluster(coordinator, n, i, DEFAULT_INIT_TIMEOUT if t is None else t)


def _pick(flag, value, var, env, kind):
    """(value, the name to show): the flag when given, else the environment variable (empty counts as unset)."""
    if value is not None:
        return value, f"--{flag}"
    raw = env.get(var, "").strip()
    if not raw:
        return None, var
    if kind is int:
        try:
            return int(raw), var
        except ValueError:
            raise ConfigError(f"{var} is {raw!r}, not a whole number; set it to one (e.g. 2) or unset it.") from None
    return raw, var


def waiting_line(c: Cluster) -> str:
    """What a process prints as it starts waiting for the others."""
    others = f"the other {c.num_processes - 1} process(es) to connect to {c.coordinator}" if c.process_id == 0 \
        else f"process 0 at {c.coordinator}" + (" and the others" if c.num_processes > 2 else "")
    return (f"process {c.process_id} of {c.num_processes}: waiting up to {c.init_timeout} s (--init_timeout) "
            f"for {others}")


# --- the supervisor ----------------------------------------------------------------------------------------------

def supervise(command: list[str], cluster: Cluster, workdir: str | None) -> int:
    """Runs `command` (this launch, as a child), forwarding its output and SIGTERM / SIGINT; its exit status, or
    after a lost peer or a cluster that did not assemble one 'error:' sentence and LOST / 2."""
    if cluster.process_id == 0:
        _check_port(cluster)
    child = subprocess.Popen(command, env=dict(os.environ, **{SUPERVISOR_ENV: str(os.getpid())}),
                             stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1)
    previous = {s: signal.signal(s, lambda signum, _: child.send_signal(signum)) for s in (signal.SIGTERM,
                                                                                         signal.SIGINT)}
    out = _Stderr(sys.stderr)
    try:
        for line in child.stderr:
            out.add(line)
        rc = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    rc = 128 - rc if rc < 0 else rc  # killed by signal N: 128 + N, as a shell reports it
    text = "".join(out.tail)
    init_failed = rc == 128 + signal.SIGABRT and "RegisterTask" in text and "DEADLINE_EXCEEDED" in text
    lost = rc == LOST and _LOST_MARK in text or rc == 128 + signal.SIGABRT and not init_failed and \
        "detected fatal errors" in text
    if not (init_failed or lost):
        out.release()
        return rc
    c = cluster
    me = f"process {c.process_id} of {c.num_processes}"
    if init_failed:
        print(f"error: {me}: the {c.num_processes} processes did not all connect to {c.coordinator} within "
              f"{c.init_timeout} s; start each with --coordinator={c.coordinator} --num_processes={c.num_processes} "
              "and its own --process_id (process 0 on that host), or raise --init_timeout.", file=sys.stderr)
        return 2
    log = _write_log(workdir, child.pid, text)
    print(f"error: {me} stopped because {_missing(text, c)} is gone (it stopped or lost its connection); restart "
          f"all {c.num_processes} processes with the same command to resume {_resume_point(workdir)}; the "
          f"runtime's messages are in {log}.", file=sys.stderr)
    return LOST


def _check_port(c: Cluster):
    """Process 0's coordinator port must be free: jax's service fails on a port in use with an error, at times a
    segmentation fault, after the init timeout has started."""
    port = int(c.coordinator.rpartition(":")[2])
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: a previous run's TIME_WAIT is fine
        try:
            s.bind(("", port))
        except OSError as e:
            raise ConfigError(f"process 0 cannot listen on port {port} of --coordinator={c.coordinator} "
                              f"({e.strerror}); choose a free port, the same on every process.") from None


class _Stderr:
    """Passes the child's stderr on line by line, holding back the runtime's failure output: error and fatal log
    lines (C++, or Orbax's as a save fails) and what follows them (tracebacks, the stack dump, Python's fault
    handler). Held lines are passed on if the child
    keeps going (10 s after an error line with no fatal one) or ends in a way not recognised."""

    _ERROR_LOG = re.compile(r"[EF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+\.(cc|h|cpp|py):\d+\] ")
    _FATAL = ("*** Check failure", "Fatal Python error", "terminate called", _LOST_MARK)

    def __init__(self, stream):
        self.stream = stream
        self.tail = deque(maxlen=2000)  # for the diagnosis and the crash log
        self.held, self.since, self.fatal = [], None, False

    def add(self, line: str):
        self.tail.append(line)
        logged = self._ERROR_LOG.match(line)
        if logged or line.startswith(self._FATAL):
            self.fatal = self.fatal or not logged or line.startswith("F")
            self.since = self.since or time.monotonic()
        elif self.since is not None and not self.fatal and time.monotonic() - self.since > 10:
            self.release()
        if self.since is None:
            self.stream.write(line)
            self.stream.flush()
        else:
            self.held.append(line)

    def release(self):
        self.stream.write("".join(self.held))
        self.stream.flush()
        self.held, self.since, self.fatal = [], None, False


def _missing(text: str, c: Cluster) -> str:
    """The process the runtime's messages say is gone: a task whose heartbeats stopped, the coordinator (process
    0) when its service does not answer, else the other one of two."""
    ids = re.findall(r"Task (\d+) heartbeat timeout", text) + re.findall(r"stopped sending heartbeats\):\s*(\d+)",
                                                                       text)
    if not ids and c.process_id != 0 and ("leader task" in text or "Failed to send RPC to coordination" in text):
        ids = ["0"]
    ids = [int(x) for x in ids if int(x) != c.process_id]
    if ids:
        return f"process {ids[0]}"
    return f"process {1 - c.process_id}" if c.num_processes == 2 else "another process"


def _resume_point(workdir: str | None) -> str:
    """'from its latest checkpoint (step S in DIR)', read from the step folders' names (no Orbax needed)."""
    folder = os.path.join(workdir, "checkpoints") if workdir else None
    if not folder or not os.path.isdir(folder):
        return "from its latest checkpoint"
    steps = [int(s) for s in os.listdir(folder) if s.isdigit()]
    return f"from its latest checkpoint (step {max(steps)} in {folder})" if steps else \
        "from the start (no checkpoint was saved yet)"


def _write_log(workdir: str | None, pid: int, text: str) -> str:
    for folder in (workdir, tempfile.gettempdir()):
        if folder and os.path.isdir(folder):
            path = os.path.join(folder, f"crash-{pid}.log")
            try:
                with open(path, "w") as f:
                    f.write(text)
                return path
            except OSError:
                continue
    return "this process's stderr (not saved)"


# --- the child ---------------------------------------------------------------------------------------------------

def child_setup():
    """In the supervised child: end at once (without jax's exit-time shutdown barrier, which waits out the
    heartbeat timeout for a peer that is gone) when a collective failed, and when the supervisor is gone."""
    previous = sys.excepthook

    def excepthook(kind, value, tb):
        failure = _collective_failure(value)
        if failure:
            print(f"{_LOST_MARK} {failure}", file=sys.stderr, flush=True)
            os._exit(LOST)
        previous(kind, value, tb)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # a peer still running would hold this process in jax's shutdown barrier for minutes

    sys.excepthook = excepthook
    parent = int(os.environ[SUPERVISOR_ENV])
    threading.Thread(target=_end_with, args=(parent,), daemon=True, name="ptft-supervisor-watch").start()


_COLLECTIVE = ("gloo", "coordination service", "heartbeat", "connection reset by peer", "connection closed by peer",
               "socket closed")


def _collective_failure(e: BaseException | None) -> str | None:
    """The first line of an error in `e`'s chain that reports a lost peer (jax raises a failed collective as
    JaxRuntimeError, or as ValueError from inside jit), else None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if any(m in str(e).lower() for m in _COLLECTIVE):
            return (str(e).strip().splitlines() or [""])[0]
        e = e.__cause__ or e.__context__
    return None


def _end_with(parent: int):
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)
