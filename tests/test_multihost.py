"""Multi-host start and failure: bad flags refused before jax, a cluster that never assembles, a lost process, each
one sentence, never a hang or a C++ dump (two local processes on 127.0.0.1 only)."""
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from ptft_jax import multihost
from ptft_jax.errors import ConfigError

from conftest import DIGITS, ROOT, launch, launch_env, metrics_rows, saved_steps

CPP_DUMP = re.compile(r"^([EF]\d{4} \d\d:\d\d|\*\*\* Check failure|Fatal Python error|\s+@\s+0x)", re.M)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_error_line(out):
    assert "Traceback" not in out.stderr and not CPP_DUMP.search(out.stderr), out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and out.stderr.strip().splitlines()[-1] == errors[0], out.stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize("args, env, expected", [
    (["--num_processes=2", "--process_id=1"], {}, "--num_processes=2 needs --coordinator=HOST:PORT"),
    (["--coordinator=nonsense", "--num_processes=2", "--process_id=0"], {}, "--coordinator is 'nonsense'; use HOST"),
    (["--coordinator=127.0.0.1:1234", "--num_processes=2", "--process_id=2"], {}, "--process_id is 2; with 2 process"),
    ([], {"PTFT_NUM_PROCESSES": "two"}, "PTFT_NUM_PROCESSES is 'two', not a whole number"),
    (["--num_processes=0"], {}, "--num_processes is 0; use the number of processes, 1 or more"),
    (["--num_processes=-2"], {}, "--num_processes is -2; use the number of processes"),
    (["--coordinator=127.0.0.1:1234", "--num_processes=2"], {}, "--num_processes=2 needs --process_id=I"),
    (["--coordinator=127.0.0.1:1234", "--num_processes=2", "--process_id=0", "--init_timeout=0"], {},
     "--init_timeout is 0"),
], ids=["no_coordinator", "coordinator_nonsense", "process_id_out_of_range", "env_not_an_integer",
        "zero_processes", "negative_processes", "no_process_id", "zero_init_timeout"])
def test_bad_multihost_flags_get_one_sentence_and_exit_2_before_jax(tmp_path, args, env, expected):
    out = launch(f"--config={DIGITS}", f"--workdir={tmp_path / 'run'}", *args, env=env)
    assert out.returncode == 2, out.stderr[-2000:]
    assert expected in _one_error_line(out)
    assert not (tmp_path / "run").exists()


def test_a_coordinator_port_in_use_is_refused_before_jax(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = launch(f"--config={DIGITS}", f"--workdir={tmp_path / 'run'}", f"--coordinator=127.0.0.1:{port}",
                     "--num_processes=2", "--process_id=0")
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"process 0 cannot listen on port {port} of --coordinator=127.0.0.1:{port}" in _one_error_line(out)


def test_the_cluster_comes_from_flags_else_the_environment():
    env = {"PTFT_COORDINATOR": "10.0.0.1:1234", "PTFT_NUM_PROCESSES": "4", "PTFT_PROCESS_ID": "3",
           "PTFT_INIT_TIMEOUT": "20"}
    assert multihost.cluster_from(env=env) == multihost.Cluster("10.0.0.1:1234", 4, 3, 20)
    assert multihost.cluster_from("[::1]:99", 2, 0, env=env) == multihost.Cluster("[::1]:99", 2, 0, 20)
    assert multihost.cluster_from("h:1", 2, 1, env={}).init_timeout == multihost.DEFAULT_INIT_TIMEOUT
    assert multihost.cluster_from(env={}) is None  # one process: nothing to start
    assert multihost.cluster_from(num_processes=1, env={"PTFT_COORDINATOR": "h:1"}) is None
    with pytest.raises(ConfigError, match="PTFT_PROCESS_ID is 3; with 2 process"):
        multihost.cluster_from(num_processes=2, env=env)


# --- the supervisor, with a stand-in child: what it passes on, holds back, names and returns ---------------------

def _supervise(child_code, tmp_path, cluster=("127.0.0.1:1", 2, 0, 5), signal_after=None):
    """Runs multihost.supervise in a subprocess (it installs signal handlers) over `python -c child_code`."""
    code = textwrap.dedent(f"""
        import sys
        from ptft_jax import multihost
        sys.exit(multihost.supervise([sys.executable, "-c", {child_code!r}], multihost.Cluster(*{cluster!r}),
                                     {str(tmp_path)!r}))""")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=launch_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    if signal_after:
        time.sleep(signal_after[1])
        p.send_signal(signal_after[0])
    out, err = p.communicate(timeout=60)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


ABORT_AFTER_PEER_LOSS = """
import os, sys
print("step 10/100 | loss 2.0", file=sys.stderr, flush=True)
print("I1202 00:00:00.000000   7 foo.cc:1] informational, passed on", file=sys.stderr, flush=True)
print("E1202 00:36:24.097017    4851 coordination_service.cc:1520] Barrier failed because: task is set to ERROR: "
      "UNAVAILABLE: Task 1 heartbeat timeout.", file=sys.stderr, flush=True)
print("F1202 00:36:24.097252    4829 client.h:80] Terminating process because the JAX distributed service detected "
      "fatal errors.", file=sys.stderr, flush=True)
print("*** Check failure stack trace: ***\\n    @     0x7fd78f68cb80  xla::CoordinationServiceAgent::SetError()",
      file=sys.stderr, flush=True)
os.abort()
"""


def test_the_supervisor_turns_an_abort_after_a_lost_peer_into_one_sentence(tmp_path):
    for step in ("30", "60", "90.orbax-checkpoint-tmp-1"):  # the last one unfinished
        os.makedirs(tmp_path / "checkpoints" / step)
    out = _supervise(ABORT_AFTER_PEER_LOSS, tmp_path)
    assert out.returncode == multihost.LOST == 75
    line = _one_error_line(out)
    assert line.startswith("error: process 0 of 2 stopped because process 1 is gone"), line
    assert f"resume from its latest checkpoint (step 60 in {tmp_path / 'checkpoints'})" in line
    log = re.search(r"messages are in (\S+)\.$", line).group(1)
    assert os.path.dirname(log) == str(tmp_path) and "Task 1 heartbeat timeout" in open(log).read()
    assert "step 10/100 | loss 2.0" in out.stderr and "informational, passed on" in out.stderr


def test_the_supervisor_passes_other_ends_and_stop_signals_through(tmp_path):
    bug = _supervise("import sys\nprint('E1202 00:00:00.000000 1 x.cc:2] held back, then shown', file=sys.stderr)"
                     "\nraise ValueError('a bug')", tmp_path)
    assert bug.returncode == 1 and "ValueError: a bug" in bug.stderr and "held back, then shown" in bug.stderr
    assert "error:" not in bug.stderr
    stop = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *_: (print('stopped: saved', file=sys.stderr), sys.exit(143)))\n"
            "print('ready', file=sys.stderr, flush=True)\n"
            "time.sleep(30)")
    out = _supervise(stop, tmp_path, signal_after=(signal.SIGTERM, 2))
    assert out.returncode == 143 and out.stderr.splitlines() == ["ready", "stopped: saved"], out.stderr
    assert not [f for f in os.listdir(tmp_path) if f.startswith("crash-")]


# --- real processes --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_lone_process_says_what_it_waits_for_and_stops_after_init_timeout(tmp_path):
    port = _free_port()
    t0 = time.time()
    out = launch(f"--config={DIGITS}", f"--workdir={tmp_path / 'run'}", f"--coordinator=127.0.0.1:{port}",
                 "--num_processes=2", "--process_id=0", "--init_timeout=5", timeout=120)
    elapsed = time.time() - t0
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.splitlines()[0] == (f"process 0 of 2: waiting up to 5 s (--init_timeout) for the other 1 "
                                          f"process(es) to connect to 127.0.0.1:{port}")
    line = _one_error_line(out)
    assert f"the 2 processes did not all connect to 127.0.0.1:{port} within 5 s" in line and "--init_timeout" in line
    assert elapsed < 5 + 45, elapsed  # jax's deadline plus the imports of two interpreters on a loaded machine


# A checkpoint each epoch (89 steps), so that the kill, once the first is written, falls between two saves: a loss
# during a save's commit is seen only at jax's heartbeat timeout (100 s), the survivor waiting in Orbax's barrier.
LONG_RUN = [f"--config={DIGITS}", "--config.train.steps=100000", "--config.train.log_every=10",
            "--config.train.checkpoint_min_secs=0", "--config.data.batch_size=16"]


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0], ids=["worker_killed", "coordinator_killed"])
def test_a_survivor_names_the_lost_process_and_the_checkpoint_to_resume_from(tmp_path, victim):
    port, workdir = _free_port(), tmp_path / "run"
    env = launch_env(devices=1)
    procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), *LONG_RUN, f"--workdir={workdir}",
                               f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        deadline = time.time() + 180
        while not (os.path.exists(workdir / "metrics.jsonl") and metrics_rows(workdir) and
                   os.path.isdir(workdir / "checkpoints") and saved_steps(workdir)):
            assert time.time() < deadline and all(p.poll() is None for p in procs), "no progress"
            time.sleep(0.2)
        procs[victim].kill()  # kill -9 of the launched process: its training child follows it at once
        t0 = time.time()
        survivor = procs[1 - victim]
        out, err = survivor.communicate(timeout=100)
        elapsed = time.time() - t0
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    result = subprocess.CompletedProcess(survivor.args, survivor.returncode, out, err)
    assert survivor.returncode == multihost.LOST, err[-3000:]
    line = _one_error_line(result)
    assert line.startswith(f"error: process {1 - victim} of 2 stopped because process {victim} is gone"), line
    step = max(saved_steps(workdir))
    assert f"restart all 2 processes with the same command to resume from its latest checkpoint (step {step} " \
           f"in {workdir / 'checkpoints'})" in line, line
    log = re.search(r"messages are in (\S+)\.$", line).group(1)
    assert os.path.dirname(log) == str(workdir) and os.path.getsize(log) > 0
    # seconds when a collective fails; up to jax's 100 s heartbeat timeout when the loss falls in a checkpoint's commit
    assert elapsed < 120, elapsed
