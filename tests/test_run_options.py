"""Run options and modes that had no test of their own: train.steps_per_call, train.keep, init_step,
and --mode=evaluate (data.in_memory is in test_foundation.py, beside the TFDS mock data; predict from an image
folder is in test_predict.py). Tiny runs: a (16,) MLP on digits, a few dozen steps."""
import json
import os

import numpy as np
import pytest

import ptft_jax

from conftest import DIGITS, FINETUNE, launch, params_of, quiet, saved_steps


def tiny(**over):
    """The digits recipe with a (16,) MLP, batch 32 and 28 steps."""
    base = {"model.hidden": (16,), "data.batch_size": 32, "train.steps": 28, "train.log_every": 14}
    return ptft_jax.load_config(DIGITS, {**base, **over})


def input_line(log):
    lines = [line for line in log if line.startswith("input: ")]
    assert len(lines) == 1, log
    return lines[0]


def test_steps_per_call_gives_the_same_params_and_is_logged(digits_pretrained, tmp_path, log):
    # The shared run made calls of its log_every (30) steps; the same run one step a call ends where it did.
    assert input_line(digits_pretrained.log).endswith("| 30 step(s) per call"), digits_pretrained.log
    one = ptft_jax.apply_overrides(digits_pretrained.config, {"train.steps_per_call": 1})
    ptft_jax.train(one, str(tmp_path / "k1"), log=log)
    assert input_line(log).endswith("| 1 step(s) per call"), log
    a, b = params_of(tmp_path / "k1"), params_of(digits_pretrained.workdir)
    for x, y in zip(*(sorted(_flat(p).items()) for p in (a, b))):
        assert x[0] == y[0]
        np.testing.assert_allclose(x[1], y[1], rtol=1e-6, atol=1e-7, err_msg=x[0])
    # The same metrics at the same steps, whatever the calls.
    rows = lambda d: [(r["step"], r["split"]) for r in map(json.loads, open(os.path.join(d, "metrics.jsonl")))]  # noqa
    assert rows(tmp_path / "k1") == rows(digits_pretrained.workdir) and (60, "test") in rows(tmp_path / "k1")


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = np.asarray(v)
    return out


def test_keep_leaves_only_the_newest_checkpoints(tmp_path):
    workdir = tmp_path / "run"
    ptft_jax.train(tiny(**{"train.steps": 20, "train.checkpoint_every": 5, "train.log_every": 5, "train.keep": 2}),
                   str(workdir), log=quiet)
    # Steps 15 and 20 both saved, a fraction of a second apart: checkpoint_every has no time limit
    # (train.checkpoint_min_secs is for epoch-end saves).
    assert saved_steps(workdir) == [15, 20]
    entries = sorted(os.listdir(workdir / "checkpoints"))
    assert entries == ["15", "20"], entries  # nothing else left behind (no temporary or older step folders)


def test_init_step_picks_the_checkpoint_and_graft_json_records_it(digits_pretrained, tmp_path):
    pt = digits_pretrained.workdir
    assert saved_steps(pt) == [30, 60]
    over = {"init_from": pt, "init_step": 30, "train.steps": 4, "train.log_every": 2,
            "finetune.lr_mults": [("dense_.*", 0.0)]}  # the loaded layers stay as loaded
    ptft_jax.train(ptft_jax.load_config(FINETUNE, over), str(tmp_path / "ft"), log=quiet)
    report = json.load(open(tmp_path / "ft" / "graft.json"))
    assert report["step"] == 30 and report["source"].endswith(os.path.join("checkpoints", "30")), report
    at30, at60, ft = params_of(pt, 30), params_of(pt, 60), params_of(tmp_path / "ft")
    for layer in ("dense_0", "dense_1"):
        np.testing.assert_array_equal(ft[layer]["kernel"], at30[layer]["kernel"])
        assert not np.array_equal(ft[layer]["kernel"], at60[layer]["kernel"])
    with pytest.raises(ptft_jax.CheckpointError, match=r"no checkpoint at step 45; it has steps \[30, 60\]"):
        ptft_jax.train(ptft_jax.load_config(FINETUNE, {**over, "init_step": 45}), str(tmp_path / "missing"),
                       log=quiet)
    assert not os.path.exists(tmp_path / "missing" / "graft.json")


def test_evaluate_mode_on_the_command_line(digits_pretrained, tmp_path):
    pt = digits_pretrained.workdir
    out = launch(f"--config={DIGITS}", f"--workdir={pt}", "--mode=evaluate", "--config.train.steps=60",
                 "--config.train.checkpoint_every=30", "--config.train.log_every=30")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("evaluate: ")]
    assert len(lines) == 1, out.stdout + out.stderr
    assert lines[0].startswith("evaluate: step 60 | test loss ")
    assert f"test accuracy {digits_pretrained.result['accuracy']:.4f}" in lines[0], (lines, digits_pretrained.result)
    assert saved_steps(pt) == [30, 60]
    with pytest.raises(ptft_jax.CheckpointError, match="No checkpoint in .*; train first"):
        ptft_jax.evaluate(digits_pretrained.config, str(tmp_path / "empty"), log=quiet)


@pytest.mark.slow
def test_evaluate_mode_on_an_empty_workdir_is_one_error_line(tmp_path):
    empty = launch(f"--config={DIGITS}", f"--workdir={tmp_path / 'empty'}", "--mode=evaluate")
    assert empty.returncode == 2, empty.stderr[-2000:]
    errors = [line for line in empty.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "No checkpoint in" in errors[0] and "train first" in errors[0], empty.stderr
    assert "Traceback" not in empty.stderr
