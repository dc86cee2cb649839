"""Sweeps, reports, TensorBoard event files and plots."""
import json
import os
import re
import shlex

import pytest

import ptft_jax
from ptft_jax import sweep

from conftest import CONFIGS, launch, quiet

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


FINETUNE_SWEEP = '''
import sys
sys.path.insert(0, {configs!r})
from ptft_jax import sweep
from digits_mlp_finetune import get_config as base


def get_config():
    c = base()
    c.init_from = {init_from!r}
    c.train.steps = 6
    c.train.log_every = 6
    return c


def get_sweep():  # the README's backbone-at-a-tenth member
    return sweep.axis("finetune.lr_mults", [[("dense_.*", 0.1)]])
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
        "lr=0.001-strategy=linear_probe"
    assert sweep.member_name({"init_from": "runs/a b/pt"}) == "init_from=runs_a_b_pt"
    assert sweep.member_name({"optim.lr": 0.01, "finetune.lr_mults": [("dense_.*", 0.1)]}) == \
        "lr=0.01-lr_mults=dense_x0.1"
    assert sweep.member_name({"_name": "mine", "optim.lr": 0.1}) == "mine"
    # Keys that end alike keep their full names; names a shell would need quoted, or too long, never come out.
    assert sweep.member_name({"optim.lr": 0.1}, keys=["optim.lr", "finetune.lr"]) == "optim.lr=0.1"
    odd = sweep.member_name({"finetune.lr_mults": [("dense_[0-9]*", 0.1), ("head", 10)], "data.note": "a'b;c$d"})
    assert re.fullmatch(r"[A-Za-z0-9._=+-]+", odd) and shlex.quote(odd) == odd, odd
    long = sweep.member_name({"init_from": "x" * 300})
    assert len(long) <= 100 and long != sweep.member_name({"init_from": "x" * 301})
    names = [n for n, _ in sweep.load_members(os.path.join(CONFIGS, "digits_finetune_sweep.py"))]
    assert names == ["lr=0.01-strategy=full", "lr=0.01-strategy=linear_probe", "lr=0.01-lr_mults=dense_x0.1",
                     "lr=0.001-strategy=full", "lr=0.001-strategy=linear_probe", "lr=0.001-lr_mults=dense_x0.1"]


def test_members_that_read_alike_get_distinct_names(tmp_path):
    path = tmp_path / "alike.py"
    path.write_text("from ptft_jax import sweep\n"
                    "def get_config():\n    from ptft_jax.config import defaults\n    return defaults()\n"
                    "def get_sweep():\n    return sweep.axis('finetune.lr_mults', [[('dense_.*', 0.1)], "
                    "[('dense_.+', 0.1)], [('dense_', 0.1)]])\n")
    members = sweep.load_members(str(path))
    names = [n for n, _ in members]
    assert len(set(names)) == 3 and all(n.startswith("lr_mults=dense_x0.1-") for n in names), names
    assert [m["finetune.lr_mults"][0][0] for _, m in members] == ["dense_.*", "dense_.+", "dense_"]


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
    assert "sweep member 1/4 lr=0.1-seed=0: finished, skipped" in log
    assert len(rows) == 4 and all(r["status"] == "finished" for r in rows)
    accs = [r["test_accuracy"] for r in rows]
    assert accs == sorted(accs, reverse=True)
    assert {r["member"] for r in rows} == {"lr=0.1-seed=0", "lr=0.1-seed1", "lr=0.001-seed=0", "lr=0.001-seed1"}
    assert "The ranking used the test split because no validation split was configured." in log.text()
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


@pytest.mark.slow
def test_a_sweep_of_bracketed_overrides_gets_plain_names_its_members_evaluate_and_old_names_count(
        digits_pretrained, tmp_path, monkeypatch, log):
    spec = tmp_path / "ft_sweep.py"
    spec.write_text(FINETUNE_SWEEP.format(configs=CONFIGS, init_from=digits_pretrained.workdir))
    workdir = tmp_path / "sweep"
    rows = sweep.run(str(spec), str(workdir), log=log)
    names = ["lr_mults=dense_x0.1"]
    assert [r["member"] for r in rows] == names and shlex.quote(names[0]) == names[0]
    assert [m["name"] for m in json.loads((workdir / "sweep.json").read_text())["members"]] == names
    for name, member in sweep.load_members(str(spec)):
        config = ptft_jax.apply_overrides(ptft_jax.load_config(str(spec)), member)
        ev = ptft_jax.evaluate(config, str(workdir / name), log=log)
        assert ev["step"] == 6 and ev["accuracy"] == pytest.approx(
            next(r["test_accuracy"] for r in rows if r["member"] == name))
    # A member finished under the name an older ptft_jax gave it (brackets and all) is found by its overrides.
    old = "finetune.lr_mults=[[dense_._;0.1]]"
    os.rename(workdir / names[0], workdir / old)
    monkeypatch.setattr(ptft_jax, "train", lambda *a, **k: pytest.fail("a finished member ran again"))
    log.clear()
    rows = sweep.run(str(spec), str(workdir), log=log)
    assert f"sweep member 1/1 {names[0]}: finished as {old}, skipped" in log, log
    assert [r["member"] for r in rows] == [old]


def _member(root, name, rows, keep_best=None, finished=True):
    """A sweep member's folder written by hand: metrics.jsonl, config.json, member.json when finished."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "config.json").write_text(json.dumps({"train": {"keep_best": keep_best}}))
    if finished:
        tests = [r for r in rows if r["split"] == "test"]
        (folder / "member.json").write_text(json.dumps({"name": name, "overrides": {}, "result": tests[-1]}))


def _row(step, split, accuracy, loss):
    return {"step": step, "split": split, "loss": loss, "accuracy": accuracy, "macro_f1": accuracy - 0.05,
            "examples": 360}


def test_report_ranks_on_validation_and_gives_the_chosen_members_test_figures(tmp_path, log):
    # a: the best val accuracy, a worse test accuracy than b; c: the best val figures of all, unfinished.
    a = [_row(10, "val", 0.70, 0.9), _row(10, "test", 0.60, 1.0), _row(20, "val", 0.90, 0.5),
         _row(20, "test", 0.80, 0.6)]
    b = [_row(10, "val", 0.85, 0.4), _row(20, "val", 0.80, 0.3), _row(20, "test", 0.95, 0.2)]
    c = [_row(10, "val", 0.99, 0.1), _row(10, "test", 0.97, 0.1)]
    for keep_best, order, col, best in ((None, ["a", "b", "c"], "val_accuracy", 0.90),
                                        ("val/loss", ["b", "a", "c"], "val_loss", 0.3),
                                        ("val/accuracy:min", ["a", "b", "c"], "val_accuracy", 0.70)):
        root = tmp_path / str(keep_best).replace("/", "_").replace(":", "_")
        for name, rows, finished in (("a", a, True), ("b", b, True), ("c", c, False)):
            _member(root, name, rows, keep_best, finished)
        log.clear()
        out = sweep.report(str(root), log=log)
        assert [r["member"] for r in out] == order, (keep_best, out)
        chosen = out[0]
        assert chosen[col] == pytest.approx(best) and [r["status"] for r in out] == ["finished"] * 2 + ["unfinished"]
        assert chosen["test_accuracy"] == {"a": 0.80, "b": 0.95}[chosen["member"]]  # its last test row
        assert chosen["test_step"] == 20 and chosen["test_macro_f1"] == pytest.approx(chosen["test_accuracy"] - 0.05)
        header = (root / "results.csv").read_text().splitlines()[0]
        assert header == f"member,status,{col},test_accuracy,test_macro_f1,test_loss,test_step"
        assert f"best by val {col[4:]}: {chosen['member']} (" in log.text()
        assert "test split" not in log.text() and (root / "sweep.png").stat().st_size > 5000


def test_report_without_validation_ranks_on_test_and_says_so(tmp_path, log):
    _member(tmp_path, "a", [_row(20, "test", 0.7, 0.6)])
    _member(tmp_path, "b", [_row(20, "test", 0.9, 0.3)])
    out = sweep.report(str(tmp_path), log=log)
    assert [r["member"] for r in out] == ["b", "a"] and "val_accuracy" not in out[0]
    assert log.text().splitlines()[-1] == "The ranking used the test split because no validation split was configured."


def test_report_refuses_a_folder_of_plain_runs_and_a_runs_own_workdir(tmp_path):
    plain = tmp_path / "runs"
    _member(plain, "pt", [_row(20, "test", 0.7, 0.6)], finished=False)  # a run: config.json, metrics.jsonl
    own = plain / "pt"
    (own / "checkpoints" / "20").mkdir(parents=True)
    (own / "tb").mkdir()
    for folder in (plain, own):
        with pytest.raises(ptft_jax.ConfigError, match=r"is not a sweep workdir \(no sweep.json, no member.json"):
            sweep.report(str(folder), log=quiet)
        assert not (folder / "results.csv").exists() and not (folder / "sweep.png").exists()
    # sweep.json, which sweep.run writes first, makes a sweep of the members it names, and of no other folder.
    (plain / "sweep.json").write_text(json.dumps({"members": [{"name": "m", "overrides": {}}]}))
    _member(plain, "m", [_row(10, "test", 0.5, 0.9)], finished=False)
    assert [(r["member"], r["status"]) for r in sweep.report(str(plain), log=quiet)] == [("m", "unfinished")]
