"""Workdir paths Orbax would read as glob patterns (`[`, `*`, `?`), and the check that the final checkpoint committed.
Tiny runs of the digits MLP recipe, a dozen steps."""
import os
import re
import threading

import numpy as np
import pytest

import ptft_jax
from ptft_jax import checkpoint
from ptft_jax.export import export
from ptft_jax.predict import predict

from conftest import DIGITS, FINETUNE, digits_images, saved_steps

TINY = {"model.hidden": (16,), "data.batch_size": 32, "train.log_every": 6, "train.checkpoint_every": 12}


def tiny(steps, **over):
    return ptft_jax.load_config(DIGITS, {**TINY, "train.steps": steps, **over})


@pytest.mark.slow
def test_a_workdir_with_glob_characters_trains_resumes_evaluates_predicts_and_is_init_from(tmp_path, log):
    workdir = str(tmp_path / "run[x]*?")
    ckpts = os.path.join(workdir, "checkpoints")
    ptft_jax.train(tiny(12), workdir, log=log)
    assert saved_steps(workdir) == [12] and any(line.startswith("done: step 12") for line in log), log
    # Resume: from the checkpoint of step 12 to step 24 (before, Orbax's OCDBT merge globbed `run[x]*?/...`, found
    # nothing, and the save never restored), the message naming the real folder, not Orbax's link.
    log.clear()
    last = ptft_jax.train(tiny(24), workdir, log=log)
    assert f"resuming from {ckpts}/12" in log, log
    assert saved_steps(workdir) == [12, 24]
    ev = ptft_jax.evaluate(tiny(24), workdir, log=log)
    assert ev["step"] == 24 and ev["accuracy"] == pytest.approx(last["accuracy"]) and ev["examples"] == 360
    # Predict (the --mode=predict path) and export read it through the same Checkpoints.
    images, _ = digits_images(5)
    probs = predict(workdir, images)
    assert probs.shape == (5, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    with pytest.raises(ptft_jax.UserError, match=r"is a mlp run; hf: exports BERT runs"):  # read, then refused
        export(workdir, f"hf:{tmp_path / 'out'}", log=log)
    # init_from of a fine-tune, the grafted weights those of step 24.
    ft = str(tmp_path / "ft[1]")
    ptft_jax.train(ptft_jax.load_config(FINETUNE, {**TINY, "train.steps": 6, "init_from": workdir}), ft, log=log)
    grafted = checkpoint.load_checkpoint(ft)[2]["params"]["dense_0"]["kernel"]
    source = checkpoint.load_checkpoint(workdir, 24)[2]["params"]["dense_0"]["kernel"]
    assert grafted.shape == source.shape and not np.array_equal(grafted, np.zeros_like(grafted))
    assert saved_steps(ft) == [6] and f"{workdir}/checkpoints/24" in open(os.path.join(ft, "graft.json")).read()
    # Orbax got links in the (per-test-session) cache folder, pointing at the real folders.
    links = os.path.join(os.environ["XDG_CACHE_HOME"], "ptft_jax", "paths")
    targets = {os.readlink(os.path.join(links, n)) for n in os.listdir(links)}
    assert {ckpts, os.path.join(ft, "checkpoints")} <= targets


def test_glob_free_links_are_shared_by_concurrent_callers_and_plain_paths_need_none(tmp_path):
    plain = str(tmp_path / "plain" / "checkpoints")
    assert checkpoint.glob_free(plain) == plain
    real = str(tmp_path / "a[1]" / "b*c?" / "checkpoints")
    got, errors = [], []

    def make():
        try:
            got.append(checkpoint.glob_free(real))
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(got)) == 1, (errors, got)
    alias = got[0]
    assert os.readlink(alias) == real and not any(c in alias for c in "[*?")
    assert not [n for n in os.listdir(os.path.dirname(alias)) if n.endswith(".tmp")]


def test_done_is_printed_only_after_the_final_checkpoint_committed(tmp_path, monkeypatch, log):
    real_save = checkpoint.Checkpoints.save

    def save(self, step, state, force=False, **kw):  # the final save is lost (as the glob bug lost it)
        return False if step == 2 else real_save(self, step, state, force=force, **kw)

    monkeypatch.setattr(checkpoint.Checkpoints, "save", save)
    workdir = tmp_path / "run"
    message = f"final checkpoint of step 2 was not committed in {workdir}/checkpoints (it holds steps [1])"
    with pytest.raises(ptft_jax.CheckpointError, match=re.escape(message)):
        ptft_jax.train(tiny(2, **{"train.checkpoint_every": 1, "train.log_every": 1}), str(workdir), log=log)
    assert not any(line.startswith("done:") for line in log), log
