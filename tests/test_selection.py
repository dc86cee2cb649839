"""Honest model selection: a validation split carved out of the training data, evaluations during training on it,
the best checkpoint kept, early stopping, and one test evaluation at the end, across resumes."""
import collections
import importlib
import os

import numpy as np
import pytest

import ptft_jax
from ptft_jax.dataset import Dataset, Split, carve_val

from conftest import DIGITS, Log, digits_images, launch, metrics_rows, quiet

# lr 0.5 on the digits MLP: the validation loss falls, rises at step 100 and falls again; evaluated every 20 steps.
SELECT = {"train.steps": 100, "train.eval_every": 20, "train.log_every": 20, "train.checkpoint_every": 20,
          "data.val_fraction": 0.2, "train.keep_best": "val/loss", "optim.lr": 0.5}


def _digits_dataset():
    x, y = digits_images()
    return Dataset("digits", Split(len(y), {"image": x, "label": y.astype(np.int32)}), Split(0, {}), 10)


def test_the_validation_split_is_stratified_seeded_and_disjoint():
    x, y = digits_images()
    ds = carve_val(_digits_dataset(), 0.2, seed=3)
    assert len(ds.val) == round(0.2 * len(y)) and len(ds.train) + len(ds.val) == len(y)
    # every class keeps its share in both parts (within one example)
    have = collections.Counter(y.tolist())
    val = collections.Counter(ds.val.arrays["label"].tolist())
    assert all(abs(val[c] - 0.2 * n) <= 1 for c, n in have.items())
    # disjoint, together the training split, each part in its original order
    seen = {x[i].tobytes() for i in range(len(y))}
    tr, va = ({im.tobytes() for im in s.arrays["image"]} for s in (ds.train, ds.val))
    assert not tr & va and tr | va == seen
    same, other = carve_val(_digits_dataset(), 0.2, seed=3), carve_val(_digits_dataset(), 0.2, seed=4)
    np.testing.assert_array_equal(same.val.arrays["image"], ds.val.arrays["image"])
    assert not np.array_equal(other.val.arrays["image"], ds.val.arrays["image"])


def test_a_class_too_small_to_stratify_gives_a_random_split_and_says_so():
    ds = _digits_dataset()
    keep = np.flatnonzero(ds.train.arrays["label"] != 3).tolist() + [int(np.argmax(ds.train.arrays["label"] == 3))]
    ds.train = Split(len(keep), {k: v[keep] for k, v in ds.train.arrays.items()})
    log = Log()
    ds = carve_val(ds, 0.2, seed=0, log=log)
    assert len(ds.val) == round(0.2 * len(keep)) and len(ds.train) + len(ds.val) == len(keep)
    assert "too few to stratify a validation split" in log.text() and "at random (seeded)" in log.text()
    with pytest.raises(ptft_jax.UserError, match="leaves 0 for validation"):
        carve_val(_digits_dataset(), 0.0001, seed=0)


def test_selection_needs_a_validation_split():
    with pytest.raises(ptft_jax.UserError, match="train.keep_best selects on a validation split"):
        ptft_jax.load_config(DIGITS, {"train.keep_best": "val/accuracy"})
    with pytest.raises(ptft_jax.UserError, match="train.early_stop selects on a validation split"):
        ptft_jax.load_config(DIGITS, {"train.early_stop": 3})
    with pytest.raises(ptft_jax.UserError, match="is not a validation metric"):
        ptft_jax.load_config(DIGITS, {"train.keep_best": "test/accuracy", "data.val_fraction": 0.1})


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    """The uninterrupted run: validation every 20 steps, the best by val/loss kept."""
    workdir = str(tmp_path_factory.mktemp("select") / "run")
    log = Log()
    result = ptft_jax.train(ptft_jax.load_config(DIGITS, SELECT), workdir, log=log)
    return workdir, result, log


def test_evaluations_run_on_validation_and_the_test_split_once_on_the_best(selected):
    workdir, result, log = selected
    rows = metrics_rows(workdir)
    val, test = [r for r in rows if r["split"] == "val"], [r for r in rows if r["split"] == "test"]
    assert [r["step"] for r in val] == [20, 40, 60, 80, 100] and len(test) == 1
    best = min(val, key=lambda r: r["loss"])
    assert best["step"] != 100  # the case worth testing: the last state is not the best
    assert result["best_step"] == best["step"] == test[0]["best_step"] and test[0]["step"] == 100
    assert os.listdir(os.path.join(workdir, "best")) == [str(best["step"])]
    config = ptft_jax.load_config(DIGITS, SELECT)
    from_best = ptft_jax.evaluate(config, workdir, step="best", log=quiet)
    latest = ptft_jax.evaluate(config, workdir, log=quiet)
    assert from_best["accuracy"] == result["accuracy"] and from_best["step"] == best["step"]
    assert latest["loss"] != result["loss"]
    assert "1437" not in log.text() and "1150 train, 287 val, 360 test" in log.text()
    # A fine-tune can start from the best checkpoint.
    from ptft_jax.checkpoint import InitFrom
    assert InitFrom.parse(workdir, "best").restore()[1] == best["step"]


def test_the_best_and_the_count_survive_a_resume(selected, tmp_path, monkeypatch):
    """Stopped at step 60 (as by SIGTERM) and resumed: the same rows, best checkpoint and test figure."""
    workdir, result, _ = selected
    stops = iter([False, False, True])  # the third boundary is step 60
    loop = importlib.import_module("ptft_jax.train")  # the module (ptft_jax.train is the function)
    monkeypatch.setattr(loop.StopRequest, "requested", lambda self: next(stops, False))
    resumed = str(tmp_path / "run")
    config = ptft_jax.load_config(DIGITS, SELECT)
    with pytest.raises(ptft_jax.Interrupted):
        ptft_jax.train(config, resumed, log=quiet)
    assert max(int(s) for s in os.listdir(os.path.join(resumed, "checkpoints"))) == 60
    monkeypatch.undo()
    again = ptft_jax.train(config, resumed, log=quiet)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "steps_per_s"} for r in rows]  # noqa: E731
    assert strip(metrics_rows(resumed)) == strip(metrics_rows(workdir))
    assert again == result and os.listdir(os.path.join(resumed, "best")) == [str(result["best_step"])]


def test_early_stop_stops_says_so_and_stays_stopped(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    config = ptft_jax.load_config(DIGITS, {**SELECT, "train.steps": 200, "train.early_stop": 1})
    log = Log()
    result = ptft_jax.train(config, workdir, log=log)
    val = [r for r in metrics_rows(workdir) if r["split"] == "val"]
    worse = next(b for a, b in zip(val, val[1:]) if b["loss"] >= min(r["loss"] for r in val[:val.index(b)]))
    assert result["step"] == worse["step"] < 200 and max(r["step"] for r in metrics_rows(workdir)) == worse["step"]
    assert f"early stop at step {worse['step']}: 1 evaluation(s) without a better val/loss" in capsys.readouterr().err
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))[-1] == worse["step"]
    log2 = Log()
    assert ptft_jax.train(config, workdir, log=log2) == result
    assert "already stopped early (best val/loss" in log2.text()


def test_records_are_carved_by_index_without_reading_an_image():
    """A split read on access (a folder kept on disk for inception_crop): a seeded random carve by index."""
    reads = []

    class Records(list):
        def __getitem__(self, i):
            reads.append(i)
            return list.__getitem__(self, i)

    records = Records({"image": np.full((2, 2, 1), i, np.uint8), "label": i % 3} for i in range(50))
    ds = carve_val(Dataset("r", Split(50, records=records), Split(0, {}), 3), 0.2, seed=0)
    assert not reads and (len(ds.train), len(ds.val)) == (40, 10)
    ids = lambda s: {int(s.records[i]["image"][0, 0, 0]) for i in range(len(s))}  # noqa: E731
    assert not ids(ds.train) & ids(ds.val) and ids(ds.train) | ids(ds.val) == set(range(50))


def test_masked_lm_validation_sequences_are_masked_once():
    import types

    from ptft_jax import tasks
    from ptft_jax.config import defaults
    from ptft_jax.text.masking import compact
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 50, (40, 16)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 2, 3
    arrays = compact({"input_ids": ids, "attention_mask": np.ones_like(ids)}, 50)
    tok = types.SimpleNamespace(mask_id=4, vocab_size=50, special_ids=(0, 1, 2, 3, 4))
    d = defaults().data
    d.val_fraction, d.max_len = 0.25, 16
    ds = Dataset("t", Split(40, arrays=arrays), Split(0, {}), 50, tokenizer=tok)
    ds = tasks.MaskedLM().with_val(ds, d)
    assert len(ds.train) == 30 and "length" in ds.train.arrays  # training sequences stay compact, masked per step
    val = ds.val.arrays
    assert len(val["input_ids"]) == 10 and val["masked_weights"].sum() > 0
    again = tasks.MaskedLM().with_val(Dataset("t", Split(40, arrays=arrays), Split(0, {}), 50, tokenizer=tok), d)
    np.testing.assert_array_equal(again.val.arrays["masked_positions"], val["masked_positions"])


def test_the_command_line_evaluates_and_predicts_the_best_checkpoint(selected):
    workdir, result, _ = selected
    args = [f"--config={DIGITS}", f"--workdir={workdir}", *[f"--config.{k}={v}" for k, v in SELECT.items()]]
    proc = launch("--mode=evaluate", "--step=best", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"evaluate: step {result['best_step']} | test loss {result['loss']:.4f}" in proc.stdout
    bad = launch("--mode=evaluate", "--step=latest", *args)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        "error: --step=latest is neither a checkpoint step (a whole number) nor 'best'.")
