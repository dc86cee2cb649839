"""Grafting and fine-tuning: rules, errors, provenance, strategies, topology, predict."""
import json
import os

import numpy as np
import pytest

import ptft_jax
from ptft_jax.graft import GraftError, flatten, graft
from ptft_jax.optim import path_multipliers

from conftest import DIGITS, FINETUNE, checkpoint_of, digits_images, launch, params_of


def variables(hidden=(16, 8), classes=10, seed=0, inputs=64):
    """The variables of an MLP (dense_0..dense_N, head) as NumPy arrays of the shapes flax would make,
    deterministic per seed: the graft rules need shapes and values, not a model."""
    rng = np.random.default_rng(seed)
    params, width = {}, inputs
    for i, (name, out) in enumerate([(f"dense_{i}", h) for i, h in enumerate(hidden)] + [("head", classes)]):
        kernel = rng.standard_normal((width, out)) / np.sqrt(width)
        params[name] = {"bias": (rng.standard_normal(out) * 0.1).astype(np.float32),  # flax's key order
                        "kernel": kernel.astype(np.float32)}
        width = out
    return {"params": params}


@pytest.fixture
def pretrained(digits_pretrained):
    """conftest's shared digits pretraining run (60 steps, checkpoints at 30 and 60)."""
    return digits_pretrained.workdir


def test_numpy_variables_have_the_shapes_of_the_model():
    import jax
    import jax.numpy as jnp

    from ptft_jax import models
    model = models.build(dict(name="mlp", hidden=(16, 8)), num_classes=3)
    real = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64)))  # shapes only: nothing compiles
    ours = variables(hidden=(16, 8), classes=3)
    assert [(p, v.shape) for p, v in flatten(real).items()] == [(p, v.shape) for p, v in flatten(ours).items()]
    assert all(v.dtype == np.float32 for v in flatten(ours).values())
    np.testing.assert_array_equal(flatten(variables(seed=3))["params/head/bias"],
                                  flatten(variables(seed=3))["params/head/bias"])
    assert not np.array_equal(flatten(variables(seed=3))["params/head/bias"],
                              flatten(variables(seed=4))["params/head/bias"])


def test_load_if_fits_keeps_a_head_of_the_same_size_and_renews_another():
    ckpt = variables(classes=10, seed=1)
    same, report = graft(variables(classes=10, seed=2), ckpt, [("head/.*", "load_if_fits"), (".*", "load")])
    np.testing.assert_array_equal(same["params"]["head"]["kernel"], ckpt["params"]["head"]["kernel"])
    assert report.counts()["load"] == 6 and not report.skipped
    fresh = variables(classes=3, seed=2)
    other, report = graft(fresh, ckpt, [("head/.*", "load_if_fits"), (".*", "load")])
    np.testing.assert_array_equal(other["params"]["head"]["kernel"], fresh["params"]["head"]["kernel"])
    assert report.counts()["init"] == 2 and [p for p, _ in report.skipped] == ["params/head/bias", "params/head/kernel"]


def test_round_trip_loads_bit_for_bit_and_keeps_fresh_init():
    ckpt, fresh = variables(seed=1), variables(classes=2, seed=2)
    out, report = graft(fresh, ckpt, [("head/.*", "init"), (".*", "load")])
    for name in ("dense_0", "dense_1"):
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(out["params"][name][leaf], ckpt["params"][name][leaf])
    np.testing.assert_array_equal(out["params"]["head"]["kernel"], fresh["params"]["head"]["kernel"])
    assert report.counts()["load"] == 4 and report.counts()["init"] == 2 and report.counts()["skip"] == 2
    zeroed, _ = graft(fresh, ckpt, [("head/.*", "zero"), (".*", "load")])
    assert not np.any(zeroed["params"]["head"]["kernel"]) and zeroed["params"]["head"]["kernel"].shape == (8, 2)


def test_mutable_collections_follow_the_rules():
    fresh = {"params": {"bn": {"scale": np.ones(3)}, "head": {"kernel": np.ones((3, 2))}},
             "batch_stats": {"bn": {"mean": np.zeros(3)}, "head": {"mean": np.zeros(2)}}}
    ckpt = {"params": {"bn": {"scale": np.full(3, 2.0)}, "head": {"kernel": np.ones((3, 5))}},
            "model_state": {"batch_stats": {"bn": {"mean": np.full(3, 7.0)}, "head": {"mean": np.ones(5)}}}}
    out, report = graft(fresh, ckpt, [("head/.*", "init"), (".*", "load")])
    np.testing.assert_array_equal(out["batch_stats"]["bn"]["mean"], np.full(3, 7.0))
    np.testing.assert_array_equal(out["batch_stats"]["head"]["mean"], np.zeros(2))
    assert {r["path"] for r in report.rows} >= {"batch_stats/bn/mean", "params/bn/scale"}
    with pytest.raises(GraftError, match=r"batch_stats/bn/mean: fresh \(4,\) vs checkpoint \(3,\)"):
        graft({**fresh, "batch_stats": {"bn": {"mean": np.zeros(4)}, "head": {"mean": np.zeros(2)}}}, ckpt)


def test_every_error_is_listed_with_both_shapes(tmp_path):
    ckpt = variables(hidden=(16, 8, 4), seed=1)
    with pytest.raises(GraftError) as e:
        graft(variables(hidden=(16, 6)), ckpt, [("dense_.*", "load")], errors_file=str(tmp_path / "errors.txt"))
    msg = str(e.value)  # the first 5 of the 8 paths; all 8 in the file it names
    assert "fresh paths no rule covers: params/head/bias (10,), params/head/kernel (6, 10)" in msg
    assert "params/dense_1/kernel: fresh (16, 6) vs checkpoint (16, 8)" in msg
    assert "params/dense_1/bias: fresh (6,) vs checkpoint (8,)" in msg
    assert "left unused that no rule names: params/dense_2/bias (4,) and 3 more" in msg
    assert f"all 8 are listed in {tmp_path / 'errors.txt'}" in msg
    assert "params/dense_2/kernel (8, 4)" in (tmp_path / "errors.txt").read_text()
    with pytest.raises(GraftError, match=r"'load' paths missing from the checkpoint: params/dense_2/bias \(4,\)"):
        graft(variables(hidden=(16, 8, 4)), variables(), [("head/.*", "init"), (".*", "load")])
    # Naming the extra checkpoint leaves (skip) makes the same graft legal.
    out, report = graft(variables(hidden=(16, 8)), ckpt, [("head/.*", "init"), ("dense_2/.*", "skip"), (".*", "load")])
    assert len(report.skipped) == 4
    with pytest.raises(ptft_jax.ConfigError, match="action 'keep'"):
        graft(variables(), ckpt, [(".*", "keep")])


def test_init_from_forms_and_provenance(pretrained, tmp_path):
    fresh = variables(hidden=(256, 128), classes=2)
    _, latest = graft(fresh, pretrained)
    assert latest.step == 60 and latest.source.endswith("checkpoints/60")
    _, by_step = graft(fresh, pretrained, step=30)
    _, by_dir = graft(fresh, os.path.join(pretrained, "checkpoints", "30"))
    assert by_step.step == by_dir.step == 30 and by_step.content_hash == by_dir.content_hash
    assert by_step.content_hash != latest.content_hash
    with pytest.raises(ptft_jax.CheckpointError, match="does not exist"):
        graft(fresh, str(tmp_path / "nothing"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(ptft_jax.CheckpointError, match="neither a run's workdir nor a checkpoint step directory"):
        graft(fresh, str(tmp_path / "plain"))
    with pytest.raises(ptft_jax.CheckpointError, match="no checkpoint at step 7; it has steps"):
        graft(fresh, pretrained, step=7)


def test_finetune_run_writes_graft_json_and_predicts(pretrained, tmp_path):
    config = ptft_jax.load_config(FINETUNE, {"init_from": pretrained, "train.steps": 150, "optim.lr": 0.01})
    result = ptft_jax.train(config, str(tmp_path / "ft"))
    report = json.load(open(tmp_path / "ft" / "graft.json"))
    assert report["source"].endswith("checkpoints/60") and report["step"] == 60 and len(report["content_hash"]) == 64
    assert report["counts"] == {"load": 4, "init": 2, "zero": 0, "skip": 2}
    assert result["accuracy"] > 0.8, result
    x, _ = digits_images(20)
    probs = ptft_jax.predict(str(tmp_path / "ft"), x)
    assert probs.shape == (20, 2) and np.allclose(probs.sum(-1), 1, atol=1e-5)
    np.savez(tmp_path / "in.npz", x=x)
    out = launch("--mode=predict", f"--workdir={tmp_path / 'ft'}", f"--input={tmp_path / 'in.npz'}")
    assert out.returncode == 0, out.stderr[-1500:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 20 and np.allclose([r["probabilities"] for r in rows], probs, atol=1e-5)


@pytest.mark.slow
def test_checkpoint_saved_on_8_devices_grafts_on_1(tmp_path):
    out = launch(f"--config={DIGITS}", f"--workdir={tmp_path / 'pt8'}", "--config.train.steps=16",
                 "--config.data.batch_size=16", devices=8)
    assert out.returncode == 0, out.stderr[-1500:]
    import jax
    assert jax.device_count() == 1
    ckpt_params = params_of(tmp_path / "pt8")
    fresh = variables(hidden=(256, 128), classes=2)
    merged, report = graft(fresh, str(tmp_path / "pt8"))
    np.testing.assert_array_equal(merged["params"]["dense_1"]["kernel"], ckpt_params["dense_1"]["kernel"])
    assert report.counts()["load"] == 4


def test_linear_probe_keeps_the_backbone_bit_identical(pretrained, tmp_path):
    config = ptft_jax.load_config(FINETUNE, {"init_from": pretrained, "train.steps": 30, "train.log_every": 30,
                                             "finetune.strategy": "linear_probe", "optim.momentum": 0.9})
    ptft_jax.train(config, str(tmp_path / "lp"))
    before = checkpoint_of(pretrained)[2]
    after = checkpoint_of(tmp_path / "lp")[2]
    for name in ("dense_0", "dense_1"):
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(after["params"][name][leaf], before["params"][name][leaf])
    assert not np.array_equal(after["params"]["head"]["kernel"], np.zeros((128, 2)))
    # Momentum is kept for the head only: no optimiser state for frozen params.
    opt_leaves = {p: np.shape(v) for p, v in flatten(after["opt_state"]).items()}
    momentum = [p for p in opt_leaves if "dense_" in p]
    assert not momentum, momentum
    assert any(p.endswith("head/kernel") for p in opt_leaves)


def test_lr_multipliers_and_layer_decay(pretrained, tmp_path):
    params = variables(hidden=(16, 8, 4))["params"]
    cfg = ptft_jax.defaults().finetune
    cfg.lr_mults = [("dense_0/.*", 0.1)]
    cfg.layer_decay = 0.5
    m = path_multipliers(params, cfg)
    assert m["head"]["kernel"] == 1.0
    assert m["dense_2"]["kernel"] == 0.5 and m["dense_1"]["bias"] == 0.25
    assert m["dense_0"]["kernel"] == pytest.approx(0.1 * 0.125)
    config = ptft_jax.load_config(FINETUNE, {"init_from": pretrained, "train.steps": 20, "train.log_every": 20,
                                             "finetune.lr_mults": [("dense_.*", 0.0)]})
    ptft_jax.train(config, str(tmp_path / "m0"))
    before = params_of(pretrained)
    after = params_of(tmp_path / "m0")
    np.testing.assert_array_equal(after["dense_0"]["kernel"], before["dense_0"]["kernel"])
    with pytest.raises(ptft_jax.ConfigError, match="numbered blocks"):
        path_multipliers({"head": {"kernel": np.ones(2)}, "embed": {"w": np.ones(2)}},
                         _decay_only())


def _decay_only():
    cfg = ptft_jax.defaults().finetune
    cfg.layer_decay = 0.5
    return cfg


def test_finetune_from_a_different_model_is_refused_without_touching_it(pretrained, tmp_path):
    config = ptft_jax.load_config(FINETUNE, {"init_from": pretrained, "model.hidden": (32, 16, 8)})
    before = sorted(os.listdir(os.path.join(pretrained, "checkpoints")))
    with pytest.raises(GraftError, match=r"params/dense_0/kernel: fresh \(64, 32\) vs checkpoint \(64, 256\)") as e:
        ptft_jax.train(config, str(tmp_path / "bad"))
    assert sorted(os.listdir(os.path.join(pretrained, "checkpoints"))) == before
    errors = tmp_path / "bad" / "graft_errors.txt"  # 6 paths: the first 5 in the sentence, all in the workdir's file
    assert f"all 6 are listed in {errors}" in str(e.value) and "params/dense_1/kernel: fresh" in errors.read_text()
    # (on the command line: exit 2 and this one sentence, test_reliability.py's bad-input test)
    with pytest.raises(ptft_jax.CheckpointError, match="init_from .*none does not exist"):
        none = {"init_from": str(tmp_path / "none"), "model.hidden": (256, 128)}
        ptft_jax.train(ptft_jax.apply_overrides(config, none), str(tmp_path / "bad2"))
