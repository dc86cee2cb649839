"""Sweeps, reports, TensorBoard event files and plots."""
import os

import pytest

import ptft_jax
from ptft_jax import sweep

from conftest import CONFIGS, launch

SWEEP_CONFIG = '''
import sys
sys.path.insert(0, {configs!r})
from ptft_jax import sweep
from digits_mlp_pretrain import get_config as base


def get_config():
    c = base()
    c.train.steps = 12
    c.train.log_every = 6
    c.train.checkpoint_every = 12
    c.train.eval_every = 6
    return c


def get_sweep():
    return sweep.product(sweep.axis("optim.lr", [0.1, 0.001]),
                         [{{"train.seed": 0}}, {{"_name": "seed1", "train.seed": 1}}])
'''


@pytest.fixture
def sweep_file(tmp_path):
    path = tmp_path / "tiny_sweep.py"
    path.write_text(SWEEP_CONFIG.format(configs=CONFIGS))
    return str(path)


def test_expansion_and_naming():
    g = sweep.grid({"optim.lr": [0.1, 0.01], "train.seed": [0, 1, 2]})
    assert len(g) == 6 and g[0] == {"optim.lr": 0.1, "train.seed": 0} and g[-1] == {"optim.lr": 0.01, "train.seed": 2}
    assert sweep.zip_({"optim.lr": [0.1, 0.01], "train.epochs": [5, 10]}) == [
        {"optim.lr": 0.1, "train.epochs": 5}, {"optim.lr": 0.01, "train.epochs": 10}]
    with pytest.raises(ptft_jax.ConfigError, match="one length"):
        sweep.zip_({"a": [1], "b": [1, 2]})
    assert sweep.member_name({"optim.lr": 0.001, "finetune.strategy": "linear_probe"}) == \
        "optim.lr=0.001,finetune.strategy=linear_probe"
    assert sweep.member_name({"init_from": "runs/a b/pt"}) == "init_from=runs_a_b_pt"
    assert sweep.member_name({"finetune.lr_mults": [("dense_.*", 0.1)]}) == "finetune.lr_mults=[[dense_._;0.1]]"
    names = [n for n, _ in sweep.load_members(os.path.join(CONFIGS, "digits_finetune_sweep.py"))]
    assert len(names) == 6 and "optim.lr=0.001,finetune.strategy=linear_probe" in names


@pytest.mark.slow
def test_interrupted_sweep_skips_finished_members_and_reports(sweep_file, tmp_path, monkeypatch, log):
    workdir = tmp_path / "sweep"
    real_train, calls = ptft_jax.train, []

    def flaky(config, wd, **kw):
        calls.append(wd)
        if len(calls) == 2:
            raise ptft_jax.Interrupted("stopped for the test", 15)
        return real_train(config, wd, **kw)

    monkeypatch.setattr(ptft_jax, "train", flaky)
    with pytest.raises(ptft_jax.Interrupted):
        sweep.run(sweep_file, str(workdir), log=log)
    monkeypatch.setattr(ptft_jax, "train", real_train)
    rows = sweep.run(sweep_file, str(workdir), log=log)
    assert "sweep member 1/4 optim.lr=0.1,train.seed=0: finished, skipped" in log
    assert len(rows) == 4 and all(r["status"] == "finished" for r in rows)
    accs = [r["test_accuracy"] for r in rows]
    assert accs == sorted(accs, reverse=True)
    assert {r["member"] for r in rows} == {"optim.lr=0.1,train.seed=0", "optim.lr=0.1,seed1",
                                           "optim.lr=0.001,train.seed=0", "optim.lr=0.001,seed1"}
    csv_lines = (workdir / "results.csv").read_text().splitlines()
    assert csv_lines[0] == "member,status,test_accuracy,test_macro_f1,test_loss,test_step" and len(csv_lines) == 5
    assert all(0 < r["test_macro_f1"] <= 1 for r in rows)  # 10 digit classes: macro-F1 beside accuracy
    assert (workdir / "sweep.png").stat().st_size > 5000
    out = launch("--mode=report", f"--workdir={workdir}")
    assert out.returncode == 0 and out.stdout.count("| finished |") == 4, out.stderr[-1000:]
    printed = launch(f"--config={sweep_file}", f"--workdir={workdir}", "--sweep_print")
    commands = printed.stdout.strip().splitlines()
    assert printed.returncode == 0 and len(commands) == 4
    assert all("launch.py" in c and f"--workdir={workdir}/" in c for c in commands)


def test_tensorboard_events_and_curves(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    config = ptft_jax.load_config(os.path.join(CONFIGS, "digits_mlp_pretrain.py"),
                                  {"train.steps": 40, "train.log_every": 10, "train.eval_every": 20})
    ptft_jax.train(config, str(tmp_path / "run"))
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/accuracy", "test/loss", "test/accuracy"} <= set(tags)
    assert [e.step for e in acc.Scalars("train/loss")] == [10, 20, 30, 40]
    assert [e.step for e in acc.Scalars("test/accuracy")] == [20, 40]
    png = tmp_path / "run" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
