"""The console of a run: few lines without a terminal, a notice while compiling, speed and ETA from the steady
training rate, the learning rate logged, the graft table grouped, a long graft error kept to one short sentence."""
import importlib
import io
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ptft_jax
from ptft_jax import metrics, models
from ptft_jax.graft import GraftError, flatten, graft
from ptft_jax.metrics import Console, SteadyRate

from conftest import DIGITS, Log, metrics_rows

PROGRESS = re.compile(r"^step (\d+)/(\d+) \| ")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_eta_and_speed_come_from_the_steady_rate_only():
    clock, out = FakeClock(), io.StringIO()
    rate, console = SteadyRate(clock), Console(total=1000, start=0, stream=out, lines=10)
    clock.now += 30.0  # the first call (steps 0-100) compiles: the clock is paused, its steps not counted
    console.update(100, rate.rate(), loss=2.0)  # nothing measured yet: no speed, no ETA
    rate.resume()
    for step in range(200, 501, 100):  # 100 steps a second
        clock.now += 1.0
        rate.count(100)
        if step == 300:
            rate.pause()
            clock.now += 20.0  # evaluating and saving
            rate.resume()
        console.update(step, rate.rate(), loss=1.0)
    lines = out.getvalue().splitlines()
    assert lines[0] == "step 100/1000 | loss 2.0000 | eta ?"
    assert lines[-1] == "step 500/1000 | loss 1.0000 | 100.0 steps/s | eta 5s"  # 500 steps at 100/s
    assert rate.rate() == pytest.approx(100.0)
    # a terminal gets a bar whose speed and ETA are the same, not tqdm's (which would count the compile)
    tty = Tty()
    bar = Console(total=1000, start=0, stream=tty)
    bar.update(500, rate.rate(), loss=1.0)
    bar.close()
    assert "loss 1.0000 | 100.0 steps/s | eta 5s" in tty.getvalue() and "it/s" not in tty.getvalue()


def test_without_a_terminal_a_run_prints_about_twenty_lines():
    out = io.StringIO()
    console = Console(total=1000, start=100, stream=out)  # a resumed run: 900 steps left, a line each 45
    for step in range(102, 1001, 2):
        console.update(step, 50.0, loss=1.0)
    steps = [int(PROGRESS.match(line).group(1)) for line in out.getvalue().splitlines()]
    assert 18 <= len(steps) <= 21 and steps[-1] == 1000
    assert all(b - a >= 44 for a, b in zip(steps, steps[1:-1]))


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """200 steps of the digits recipe logged every 2 (100 train rows), warmup + cosine, evaluated at step 100 and
    the end, one checkpoint."""
    counted = []

    class Recording(SteadyRate):
        def count(self, steps):
            counted.append(steps)
            super().count(steps)

    workdir = str(tmp_path_factory.mktemp("console") / "run")
    config = ptft_jax.load_config(DIGITS, {"train.steps": 200, "train.log_every": 2, "train.eval_every": 100,
                                           "train.checkpoint_every": 200, "optim.schedule": "cosine",
                                           "optim.warmup_steps": 20, "optim.min_lr_ratio": 0.1, "optim.lr": 0.05})
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(importlib.import_module("ptft_jax.train"), "SteadyRate", Recording)
        mp.setattr("sys.stderr", err)  # where Console writes
        log = Log()
        ptft_jax.train(config, workdir, log=log)
    return workdir, config, err.getvalue().splitlines(), log, counted


def test_a_short_run_says_it_compiles_and_prints_few_lines(short_run):
    workdir, config, console, log, counted = short_run
    progress = [line for line in console if PROGRESS.match(line)]
    assert 15 <= len(progress) <= 22 and progress[-1].startswith("step 200/200 | ")
    assert len(metrics_rows(workdir, "train")) == 100  # metrics.jsonl keeps every log_every row
    assert console.index("compiling the train step...") < console.index(progress[0])
    evals = [i for i, line in enumerate(console) if line.startswith("step 100: test loss")]
    assert len(evals) == 1 and console[evals[0] - 1] == "compiling the evaluation..."
    assert sum(counted) == 200 - 2  # calls of 2 steps: the first compiles, and is not counted
    speed = float(re.search(r"\| ([\d.]+) steps/s \| eta", progress[-1]).group(1))
    done = float(re.search(r"\| ([\d.]+) steps/s training, [\d.]+s in all \|", log[-1]).group(1))
    assert done == pytest.approx(speed, rel=0.05)


def test_the_learning_rate_is_logged_as_optax_schedules_it(short_run, monkeypatch):
    workdir, config, *_ = short_run
    expected = optax.warmup_cosine_decay_schedule(0.0, 0.05, warmup_steps=20, decay_steps=200, end_value=0.005)
    rows = metrics_rows(workdir, "train")
    steps = [r["step"] for r in rows]
    np.testing.assert_allclose([r["lr"] for r in rows], [float(expected(s)) for s in steps], rtol=1e-5)
    assert max(r["lr"] for r in rows) > 0.049 and rows[-1]["lr"] == pytest.approx(0.005)
    # curves.png: a third panel, the learning rate
    import matplotlib.pyplot as plt
    figures = []
    subplots = plt.subplots
    monkeypatch.setattr(plt, "subplots", lambda *a, **k: figures.append(subplots(*a, **k)) or figures[-1])
    metrics.plot_curves(os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "curves_again.png"))
    axes = figures[0][1]
    assert [ax.get_title() for ax in axes] == ["loss", "accuracy", "learning rate"]
    np.testing.assert_allclose(axes[2].lines[0].get_ydata(), [r["lr"] for r in rows])


def _resnet_variables(classes: int, width: int = 8):
    """The tiny ResNet-18's variables as zeros of their shapes (jax.eval_shape: nothing runs)."""
    model = models.build(dict(name="resnet18", width=width, stem="cifar"), num_classes=classes)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1))))
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


@pytest.fixture(scope="module")
def resnets():
    return _resnet_variables(2), _resnet_variables(10), _resnet_variables(2, width=16)


def test_the_graft_table_groups_leaves_by_module_and_action(resnets):
    fresh, ckpt, _ = resnets
    _, report = graft(fresh, ckpt)  # the default rules: head init, the rest load
    table = report.table().splitlines()
    assert len(table) <= 10
    paths = list(flatten(fresh))
    blocks = sum(p.split("/")[1].startswith("block_") for p in paths)
    assert re.search(rf"^\s+block_0\.\.7/\*\*\s+load\s+{blocks} leaves", report.table(), re.M)
    # the head twice, told apart: the new model's 2-class head (init), the checkpoint's 10-class one (unused)
    new, unused = (i for i, line in enumerate(table) if "head/**" in line)
    assert "init" in table[new] and "unused" in table[unused]
    assert table.index("  the new model's leaves:") < new < unused
    assert "checkpoint's leaves left unused" in table[unused - 1]
    assert len(report.table(verbose=True).splitlines()) >= len(paths) + 2  # every leaf, one a line


def test_a_long_graft_error_names_a_few_paths_and_writes_them_all(resnets, tmp_path):
    fresh, ckpt, wide = resnets
    errors = tmp_path / "graft_errors.txt"
    with pytest.raises(GraftError) as e:
        graft(wide, ckpt, errors_file=str(errors))
    msg = str(e.value)
    ck = flatten(ckpt)
    bad = [p for p, v in flatten(wide).items() if p in ck and np.shape(v) != np.shape(ck[p])
           and not p.startswith("params/head/")]
    assert len(bad) > 50 and msg.count(" vs checkpoint ") == 5 and "\n" not in msg and len(msg) < 800
    assert f"and {len(bad) - 5} more; all {len(bad)} are listed in {errors}" in msg
    assert set(re.findall(r"^  (\S+): fresh", errors.read_text(), re.M)) == set(bad)
    with pytest.raises(GraftError) as e:  # no file given: a temporary one, named
        graft(wide, ckpt)
    named = re.search(r"are listed in (\S+)\)", str(e.value)).group(1)
    assert os.path.dirname(named) != str(tmp_path) and len(open(named).read().splitlines()) == len(bad) + 1
    os.remove(named)

