"""Preemption, kills, damaged checkpoints, divergence, multi-host and bad input: nothing lost."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import ptft_jax

from conftest import DIGITS, ROOT, checkpoint_of, copy_run, launch, launch_env, params_of, quiet, saved_steps

SMALL = {"model.hidden": (16, 8), "data.batch_size": 32}  # a digits MLP with as many leaves, quicker to run
LONG = ["--config.train.steps=400", "--config.train.log_every=10", "--config.train.checkpoint_every=50",
        "--config.train.eval_every=1000"]


def overrides(args):
    return [a[len("--config."):] for a in args]


def assert_same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) == 6
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run that every interrupted one must reproduce bit for bit."""
    workdir = tmp_path_factory.mktemp("ref") / "run"
    ptft_jax.train(ptft_jax.load_config(DIGITS, overrides(LONG)), str(workdir), log=quiet)
    return params_of(workdir)


def start(workdir, *extra):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), f"--config={DIGITS}",
                             f"--workdir={workdir}", *LONG, *extra], cwd=ROOT, env=launch_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(workdir, step, proc, timeout=120):
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        if os.path.exists(path):
            with open(path) as f:
                steps = [json.loads(x)["step"] for x in f if x.strip()]
            if steps and max(steps) >= step:
                return True
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout}s")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_saves_and_the_rerun_resumes_bit_identical(tmp_path, reference, sig):
    """SIGTERM (a preemption) exits 143, SIGINT (Ctrl-C) 130: both after a checkpoint of the step reached."""
    workdir = tmp_path / "run"
    proc = start(workdir)
    assert wait_for_step(workdir, 70, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert proc.returncode == {signal.SIGTERM: 143, signal.SIGINT: 130}[sig]
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"stopped: Stopped by {sig.name} at step ") and "rerun the same command to resume" in line
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
    stopped_at = int(line.split("at step ")[1].split(";")[0])
    assert 70 <= stopped_at <= 400
    assert str(stopped_at) in os.listdir(workdir / "checkpoints")
    again = launch(f"--config={DIGITS}", f"--workdir={workdir}", *LONG)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming from {workdir / 'checkpoints'}/{stopped_at}" in again.stdout + again.stderr
    assert_same(params_of(workdir), reference)


@pytest.mark.slow
def test_kill_9_at_several_points_then_resume_bit_identical(tmp_path, reference):
    workdir = tmp_path / "run"
    kills = 0
    for delay in (0.0, 0.35, 0.7):  # kill at different moments after training progress appears
        proc = start(workdir)
        target = 20 + 100 * kills
        if not wait_for_step(workdir, target, proc):
            break  # finished before the kill: fine, nothing to kill
        time.sleep(delay)
        proc.kill()
        proc.communicate(timeout=60)
        kills += 1
    assert kills >= 2
    final = launch(f"--config={DIGITS}", f"--workdir={workdir}", *LONG)
    assert final.returncode == 0, final.stderr[-2000:]
    assert_same(params_of(workdir), reference)
    rows = [json.loads(x) for x in open(workdir / "metrics.jsonl")]
    train_steps = [r["step"] for r in rows if r["split"] == "train"]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 400


def test_damaged_latest_checkpoint_is_reported_set_aside_and_skipped(digits_pretrained, tmp_path, log):
    workdir = copy_run(digits_pretrained.workdir, tmp_path / "run")  # checkpoints at 30 and 60
    uninterrupted = params_of(workdir)
    latest = tmp_path / "run" / "checkpoints" / "60"
    for root, _, files in os.walk(latest / "state"):  # damage every data file of the newest checkpoint
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    ptft_jax.train(digits_pretrained.config, workdir, log=log)
    text = log.text()
    assert "warning: checkpoint step 60 is damaged" in text and "resuming from" in text and text.count("/30") >= 1
    assert any(n.startswith("60.damaged-") for n in os.listdir(tmp_path / "run" / "checkpoints"))
    assert_same(params_of(workdir), uninterrupted)  # steps 30..60 again, bit for bit


def test_divergence_stops_at_the_step_and_keeps_the_good_checkpoint(digits_pretrained, tmp_path):
    workdir = copy_run(digits_pretrained.workdir, tmp_path / "run")  # a good run: checkpoints at 30 and 60
    good = params_of(workdir)
    bad = ptft_jax.apply_overrides(digits_pretrained.config, {"train.steps": 120, "optim.lr": 1e30})
    with pytest.raises(ptft_jax.Diverged, match=r"non-finite at step (6[1-9]|[7-8]\d)\b.*last checkpoint is intact"):
        ptft_jax.train(bad, workdir, allow_config_change=True, log=quiet)
    assert saved_steps(workdir) == [30, 60]
    assert_same(params_of(workdir), good)
    skip = ptft_jax.apply_overrides(bad, {**SMALL, "train.steps": 30, "train.on_nonfinite": "skip"})
    ptft_jax.train(skip, str(tmp_path / "skip"), log=quiet)
    rows = [json.loads(x) for x in open(tmp_path / "skip" / "metrics.jsonl")]
    assert max(r.get("skipped_steps", 0) for r in rows) > 0
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params_of(tmp_path / "skip")))


def test_disk_full_during_save_is_clear_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp
    workdir = tmp_path / "run"
    config = ptft_jax.load_config(DIGITS, {**SMALL, "train.steps": 40, "train.checkpoint_every": 20,
                                           "train.log_every": 20})
    real_save, calls = ocp.CheckpointManager.save, []

    def save(self, step, *a, **k):
        calls.append(step)
        if step >= 40:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, step, *a, **k)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(ptft_jax.CheckpointError, match="step 40 .* failed \\(No space left on device\\); the earlier"):
        ptft_jax.train(config, str(workdir), log=quiet)
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    assert checkpoint_of(workdir)[1] == 20
    result = ptft_jax.train(config, str(workdir), log=quiet)
    assert result["step"] == 40


def test_a_workdir_of_another_config_is_refused_unless_allowed(digits_pretrained, tmp_path, log):
    workdir = copy_run(digits_pretrained.workdir, tmp_path / "run")
    before = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
    other = ptft_jax.apply_overrides(digits_pretrained.config, {"train.steps": 70, "optim.lr": 0.5})
    with pytest.raises(ptft_jax.CheckpointError, match=r"holds a run with a different config \(optim.lr differ\)"):
        ptft_jax.train(other, workdir, log=quiet)
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == before
    # a longer duration is a resume, not another run; allow_config_change resumes the other config too
    result = ptft_jax.train(other, workdir, log=log, allow_config_change=True)
    assert result["step"] == 70 and any(line.endswith("checkpoints/60") for line in log if "resuming" in line)


@pytest.mark.slow
def test_a_workdir_of_another_config_is_refused_unless_told(digits_pretrained, tmp_path):
    workdir = copy_run(digits_pretrained.workdir, tmp_path / "run")
    before = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
    out = launch(f"--config={DIGITS}", f"--workdir={workdir}", "--config.train.steps=70", "--config.optim.lr=0.5",
                 "--config.train.checkpoint_every=30", "--config.train.log_every=30")
    assert out.returncode == 2
    assert "holds a run with a different config (optim.lr differ)" in out.stderr.strip().splitlines()[-1]
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == before
    ok = launch(f"--config={DIGITS}", f"--workdir={workdir}", "--config.train.steps=70", "--config.optim.lr=0.5",
                "--config.train.checkpoint_every=30", "--config.train.log_every=30", "--allow_config_change")
    assert ok.returncode == 0, ok.stderr[-1500:]


def test_bad_inputs_raise_one_user_error_in_process(tmp_path):
    """The bad inputs of the command-line test below, through the Python API: each a UserError (which launch.py
    prints as one 'error:' line with exit status 2), raised before any checkpoint is written."""
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module\n")
    (tmp_path / "afile").write_text("x")
    load = lambda *over: ptft_jax.load_config(DIGITS, list(over))  # noqa: E731
    cases = [
        (lambda: ptft_jax.load_config(str(broken)), "failed to import (ModuleNotFoundError"),
        (lambda: ptft_jax.train(load(), str(tmp_path / "afile" / "sub")), "Cannot create the workdir"),
        (lambda: load("optim.lr=abc"), "expects a float"),
        (lambda: ptft_jax.train(load("train.on_nonfinite=ignore"), str(tmp_path / "c")),
         "train.on_nonfinite is 'ignore'; use one of: stop, skip."),
        (lambda: ptft_jax.train(load("model.name=resnet9000"), str(tmp_path / "d")), "Unknown model"),
        (lambda: ptft_jax.train(load("data.source=npz:/nonexistent.npz"), str(tmp_path / "e")), "/nonexistent.npz"),
        (lambda: ptft_jax.train(load(f"init_from={tmp_path / 'afile'}"), str(tmp_path / "f")),
         "neither a run's workdir nor a checkpoint step directory"),
    ]
    for i, (fn, expected) in enumerate(cases):
        with pytest.raises(ptft_jax.UserError) as e:
            fn()
        assert expected in str(e.value), (i, str(e.value))
    for d in "cdef":
        folder = tmp_path / d / "checkpoints"
        assert not folder.exists() or not os.listdir(folder), d


@pytest.mark.slow
def test_bad_inputs_each_get_one_sentence_and_exit_2(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module\n")
    (tmp_path / "afile").write_text("x")
    cases = [
        ([f"--config={broken}", f"--workdir={tmp_path / 'a'}"], "failed to import (ModuleNotFoundError"),
        ([f"--config={DIGITS}", f"--workdir={tmp_path / 'afile' / 'sub'}"], "Cannot create the workdir"),
        ([f"--config={DIGITS}", f"--workdir={tmp_path / 'b'}", "--config.optim.lr=abc"], "expects a float"),
        ([f"--config={DIGITS}", f"--workdir={tmp_path / 'c'}", "--config.train.on_nonfinite=ignore"],
         "train.on_nonfinite is 'ignore'; use one of: stop, skip."),
        ([f"--config={DIGITS}", f"--workdir={tmp_path / 'd'}", "--config.model.name=resnet9000"], "Unknown model"),
        ([f"--config={DIGITS}", f"--workdir={tmp_path / 'e'}", "--config.data.source=npz:/nonexistent.npz"],
         "/nonexistent.npz"),
        ([f"--config={DIGITS}", f"--workdir={tmp_path / 'f'}", f"--config.init_from={tmp_path / 'afile'}"],
         "neither a run's workdir nor a checkpoint step directory"),
        ([f"--config={DIGITS}"], "--workdir"),
        ([f"--config={os.path.join(os.path.dirname(DIGITS), 'digits_mlp_finetune.py')}", f"--workdir={tmp_path / 'g'}",
          f"--config.init_from={tmp_path / 'none'}"], "does not exist"),
    ]
    for args, expected in cases:
        out = launch(*args)
        last = out.stderr.strip().splitlines()[-1]
        assert out.returncode == 2, (args, out.stderr[-1500:])
        assert last.startswith("error: ") and expected in last, (args, last)
        assert "Traceback" not in out.stderr, args


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# MLP: 89 steps an epoch, so the epoch-end checkpoint (its time limit agreed by process 0) falls inside the run.
MLP_ARGS = [f"--config={DIGITS}", "--config.train.steps=100", "--config.train.log_every=10",
            "--config.data.batch_size=16", "--config.data.eval_batch_size=40", "--config.train.checkpoint_min_secs=0"]
# Text, streamed (text/stream.py): every process indexes the same text: corpus, trains the same WordPiece vocabulary
# (checked across processes), reads and masks only its rows' lanes, and gathers all lanes' states at the checkpoint.
MLM_ARGS = [f"--config={os.path.join(ROOT, 'configs', 'pydocs_bert_pretrain.py')}:tiny", "--config.train.steps=6",
            "--config.train.log_every=2", "--config.train.eval_every=6", "--config.train.checkpoint_every=6",
            "--config.data.batch_size=16", "--config.data.eval_batch_size=64", "--config.data.max_len=32",
            "--config.data.vocab_size=500", "--config.optim.warmup_steps=2"]


MULTI = "multi[p]*?"


@pytest.mark.slow
@pytest.mark.parametrize("args", [MLP_ARGS, MLM_ARGS], ids=["mlp", "bert_mlm"])
def test_two_processes_equal_one_process_with_four_devices(tmp_path, args):
    if args is MLM_ARGS:
        rng = np.random.default_rng(0)
        docs = [" ".join(f"w{i}" for i in rng.integers(0, 300, rng.integers(5, 60))) for _ in range(80)]
        (tmp_path / "corpus.txt").write_text("\n\n".join(docs) + "\n")
        args = [*args, f"--config.data.source=text:{tmp_path / 'corpus.txt'}"]
    single = launch(*args, f"--workdir={tmp_path / 'single'}", devices=4)
    assert single.returncode == 0, single.stderr[-2000:]
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    launch_py = os.path.join(ROOT, "launch.py")
    # The multi-process run's workdir holds glob characters: every process hands Orbax the same glob-free link.
    procs = [subprocess.Popen([sys.executable, launch_py, *args, f"--workdir={tmp_path / MULTI}",
                               f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
    assert "4 cpu device(s) (cpu) in 2 process(es)" in outs[0][0] + outs[0][1]
    assert "done:" not in outs[1][0] + outs[1][1], "only process 0 logs"
    rows = lambda d: [json.loads(x) for x in open(tmp_path / d / "metrics.jsonl")]  # noqa: E731
    a, b = rows("single"), rows(MULTI)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-5)
    for x, y in zip(jax.tree.leaves(params_of(tmp_path / "single")), jax.tree.leaves(params_of(tmp_path / MULTI))):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    saved = lambda d: sorted(int(s) for s in os.listdir(tmp_path / d / "checkpoints") if s.isdigit())  # noqa: E731
    assert saved(MULTI) == saved("single") == ([89, 100] if args is MLP_ARGS else [6])
