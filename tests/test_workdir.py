"""A workdir survives what happens to real ones: a second launch, damaged JSON files, a kill between the final
checkpoint and the final evaluation, a folder where a file should be, a full disk."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import ptft_jax
from ptft_jax.files import WorkdirLock

from conftest import DIGITS, ROOT, Log, copy_run, launch_env, metrics_rows, quiet

RESUME = {"train.steps": 90, "train.checkpoint_every": 30, "train.log_every": 30}  # 30 steps on digits_pretrained


def _config(**extra):
    return ptft_jax.load_config(DIGITS, {**RESUME, **extra})


def test_a_workdir_in_use_is_refused_and_a_stale_lock_taken_over(digits_pretrained, tmp_path):
    workdir = copy_run(digits_pretrained.workdir, tmp_path / "run")
    held = WorkdirLock(workdir)
    held.acquire()
    try:
        with pytest.raises(ptft_jax.UserError, match=rf"in use by PID {os.getpid()} on {socket.gethostname()}"):
            ptft_jax.train(_config(), workdir, log=quiet)
    finally:
        held.release()
    # A killed run's lock (this host, its process gone: no flock held) is taken over.
    with open(os.path.join(workdir, "lock"), "w") as f:
        json.dump({"host": socket.gethostname(), "pid": 2**22 + 1, "started": "yesterday"}, f)
    assert ptft_jax.train(_config(), workdir, log=quiet)["step"] == 90
    assert open(os.path.join(workdir, "lock")).read() == ""  # released


def test_another_hosts_lock_is_reported_not_taken(digits_pretrained, tmp_path):
    workdir = copy_run(digits_pretrained.workdir, tmp_path / "run")
    with open(os.path.join(workdir, "lock"), "w") as f:
        json.dump({"host": "node-7.cluster", "pid": 4242, "started": "today"}, f)
    with pytest.raises(ptft_jax.UserError, match=r"PID 4242 on node-7.cluster .*another host.*delete .*lock"):
        ptft_jax.train(_config(), workdir, log=quiet)
    assert json.load(open(os.path.join(workdir, "lock")))["host"] == "node-7.cluster"


@pytest.mark.slow
def test_a_second_launch_of_a_running_command_is_refused(tmp_path):
    workdir = tmp_path / "run"
    args = [sys.executable, os.path.join(ROOT, "launch.py"), f"--config={DIGITS}", f"--workdir={workdir}",
            "--config.train.steps=100000", "--config.train.log_every=10"]
    first = subprocess.Popen(args, cwd=ROOT, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        path, deadline = workdir / "metrics.jsonl", time.time() + 120
        while not (path.exists() and path.read_text().strip()):  # the first launch holds the lock and trains
            assert first.poll() is None and time.time() < deadline, "the first launch did not start training"
            time.sleep(0.1)
        second = subprocess.run(args, cwd=ROOT, env=launch_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        lines = second.stderr.strip().splitlines()
        assert lines[-1].startswith("error: The workdir") and f"PID {first.pid}" in lines[-1]
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 143


def test_a_damaged_config_json_is_checked_against_the_checkpoints_copy(digits_pretrained, tmp_path):
    workdir = copy_run(digits_pretrained.workdir, tmp_path / "run")
    open(os.path.join(workdir, "config.json"), "w").close()  # what a kill mid-write used to leave
    log = Log()
    assert ptft_jax.train(_config(), workdir, log=log)["step"] == 90
    assert "config.json is damaged; checked this config against the copy in checkpoint step 60" in log.text()
    assert json.load(open(os.path.join(workdir, "config.json")))["train"]["steps"] == 90
    # Against the copy, another config is still told apart.
    open(os.path.join(workdir, "config.json"), "w").write("{\"trunc")
    with pytest.raises(ptft_jax.UserError, match=r"different config \(optim.lr"):
        ptft_jax.train(_config(**{"optim.lr": 0.5, "train.steps": 120}), workdir, log=quiet)


def test_a_damaged_config_json_without_a_copy_is_one_sentence(digits_pretrained, tmp_path, monkeypatch):
    workdir = copy_run(digits_pretrained.workdir, tmp_path / "run")
    open(os.path.join(workdir, "config.json"), "w").write("{")
    monkeypatch.setattr(ptft_jax.checkpoint.Checkpoints, "saved_config", lambda self, step: None)  # an old run
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    with pytest.raises(ptft_jax.UserError, match=r"config.json is damaged .*--allow_config_change"):
        ptft_jax.train(_config(), workdir, log=quiet)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
    assert ptft_jax.train(_config(), workdir, log=quiet, allow_config_change=True)["step"] == 90


def test_damaged_metrics_lines_are_dropped_with_a_warning(digits_pretrained, tmp_path):
    workdir = copy_run(digits_pretrained.workdir, tmp_path / "run")
    path = os.path.join(workdir, "metrics.jsonl")
    good = metrics_rows(workdir)
    lines = open(path).read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join([lines[0], "#garbage", *lines[1:]]) + '\n{"step": 61, "spl')  # and half a line at the end
    log = Log()
    ptft_jax.train(_config(), workdir, log=log)
    warnings = [line for line in log if "is damaged" in line]
    assert len(warnings) == 2 and "line 2" in warnings[0] and "'#garbage'" in warnings[0]
    rows = metrics_rows(workdir)
    assert rows[:len(good)] == good and max(r["step"] for r in rows) == 90


def test_a_kill_before_the_final_evaluation_loses_no_test_row(digits_pretrained, tmp_path):
    """The final checkpoint committed, then a kill before the test row was written: the rerun writes it."""
    workdir = copy_run(digits_pretrained.workdir, tmp_path / "run")
    path = os.path.join(workdir, "metrics.jsonl")
    rows = metrics_rows(workdir)
    final = [r for r in rows if r["split"] == "test" and r["step"] == 60]
    assert final
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows if r not in final)
    result = ptft_jax.train(digits_pretrained.config, workdir, log=quiet)
    again = [r for r in metrics_rows(workdir) if r["split"] == "test" and r["step"] == 60]
    assert len(again) == 1 and again[0]["accuracy"] == final[-1]["accuracy"] == result["accuracy"]


def test_a_file_named_checkpoints_is_refused(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "checkpoints").write_text("not a folder")
    with pytest.raises(ptft_jax.UserError, match=r"checkpoints is a file, not the run's checkpoint folder"):
        ptft_jax.train(_config(), str(workdir), log=quiet)
    assert (workdir / "checkpoints").read_text() == "not a folder"


def _launch_with_file_limit(workdir, limit):
    """launch.py under RLIMIT_FSIZE: every write past `limit` bytes of one file fails (EFBIG), as on a full disk.
    (Set by a small exec wrapper, not preexec_fn: forking this multithreaded JAX process could deadlock.)"""
    wrapper = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2); "
               "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])")
    return subprocess.run([sys.executable, "-c", wrapper, str(limit), os.path.join(ROOT, "launch.py"),
                           f"--config={DIGITS}", f"--workdir={workdir}", "--config.train.steps=20",
                           "--config.train.log_every=10"],
                          cwd=ROOT, env=launch_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("limit,names", [(20_000, "checkpoint of step 20"), (1000, "config.json")],
                         ids=["during-a-save", "at-start"])
def test_a_full_disk_is_one_sentence(tmp_path, limit, names):
    proc = _launch_with_file_limit(tmp_path / "run", limit)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and names in last and "File too large" in last
    assert "done:" not in proc.stdout


def test_a_writer_killed_mid_write_leaves_the_old_file_or_the_new_one(tmp_path):
    """kill -9 of a process while it rewrites a workdir file (as files.write_text does config.json): the file is
    always one whole version, never a cut one (a plain open(path, "w") left 0-byte config.json files)."""
    path = tmp_path / "config.json"
    versions = {"A" * 8_000_000, "B" * 8_000_000}
    writer = ("import itertools, sys; from ptft_jax.files import write_text\n"
              "for c in itertools.cycle('AB'):\n    write_text(sys.argv[1], c * 8_000_000)\n")
    path.write_text("A" * 8_000_000)
    for delay in (0.3, 0.55, 0.8):
        proc = subprocess.Popen([sys.executable, "-c", writer, str(path)], cwd=ROOT, env=launch_env())
        time.sleep(delay)
        proc.kill()
        proc.wait()
        assert path.read_text() in versions
    assert [p.name for p in tmp_path.iterdir() if p.name != "config.json" and not p.name.endswith(".tmp")] == []
