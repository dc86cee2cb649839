"""finetune.strategy=lora (issue 15): the digits MLP fine-tuned from the shared pretraining run, in process. B = 0
computes the pretrained model exactly; the frozen kernels never change and have no optimiser state or checkpoint
bytes; export --merge equals the unmerged run; a stopped and resumed run equals an uninterrupted one; lr_mults
reach the factors; the run-time bad inputs get one sentence."""
import hashlib
import importlib
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import ptft_jax
from ptft_jax import lora, optim
from ptft_jax.step import forward, make_train_step

from conftest import FINETUNE, checkpoint_of, copy_run, digits_images, launch, metrics_rows, quiet

loop = importlib.import_module("ptft_jax.train")  # the module (ptft_jax.train is the function)
export = importlib.import_module("ptft_jax.export")
predict = importlib.import_module("ptft_jax.predict")

# 40 steps of adam, a log and a checkpoint every 20 (two calls of one size), one evaluation at the end
LORA = {"finetune.strategy": "lora", "optim.name": "adam", "optim.lr": 0.01, "train.steps": 40, "train.log_every": 20,
        "train.checkpoint_every": 20, "finetune.lora_rank": 4, "data.val_fraction": None, "train.keep_best": None}


def _config(init_from, **over):
    return ptft_jax.load_config(FINETUNE, {**LORA, "init_from": str(init_from), **over})


@pytest.fixture(scope="module")
def lora_run(digits_pretrained, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("lora") / "run")
    result = ptft_jax.train(_config(digits_pretrained.workdir), workdir, log=quiet)
    return workdir, result


def _batch(n=16):
    x, y = digits_images(n)
    return {"image": jnp.asarray(x), "label": jnp.asarray(y % 2, jnp.int32)}


def test_b_zero_is_the_pretrained_model_and_training_moves_only_the_factors(digits_pretrained, tmp_path):
    """Step 0: the LoRA state's logits equal, bit for bit, those of the pretrained kernels with its head. Three
    steps later the frozen base is bit-identical, both factors moved, and the optimiser state is the trainable
    tree's (no kernel of the base has any). lr_mults of 0 on dense_0 keep its factors where they started."""
    run = loop.build_run(_config(digits_pretrained.workdir), str(tmp_path / "lora"), log=quiet)
    state = loop.restore_or_init(run, log=quiet)
    pretrained = dict(checkpoint_of(digits_pretrained.workdir)[2]["params"], head=state.params["head"])
    batch = _batch()
    x = run.task.inputs(batch)
    logits = jax.jit(lambda p, frozen=None: forward(run.model, lora.merge(p, frozen), {}, x, False)[0])
    got, want = logits(state.params, state.frozen), logits(pretrained)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert sorted(lora.flat(state.params)) == ["dense_0/kernel/lora_a", "dense_0/kernel/lora_b",
                                                "dense_1/kernel/lora_a", "dense_1/kernel/lora_b",
                                                "head/bias", "head/kernel"]
    assert jax.tree.structure(state.opt_state[0].mu) == jax.tree.structure(state.params)

    base = jax.device_get(state.frozen)
    mults = ml_collections.ConfigDict({**run.config.finetune.to_dict(), "lr_mults": [("dense_0/.*", 0.0)]})
    tx = optim.build(run.config.optim, finetune=mults, params=jax.eval_shape(lora.merge, state.params, state.frozen),
                     durations=run.steps)
    step = jax.jit(make_train_step(run.model, tx, run.task, 0))
    s = state.replace(opt_state=jax.jit(tx.init)(state.params))
    for _ in range(3):
        s, _ = step(s, batch)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(s.frozen), base)
    before, after = lora.flat(jax.device_get(state.params)), lora.flat(jax.device_get(s.params))
    for path in before:  # B = 0 moves after the first step, A from the second
        assert np.array_equal(before[path], after[path]) == path.startswith("dense_0/"), path


def test_the_checkpoint_holds_what_trains_and_the_counts_are_right(lora_run, digits_pretrained):
    workdir, result = lora_run
    raw = checkpoint_of(workdir)[2]
    saved = lora.flat(raw["params"])
    assert sorted(saved) == ["dense_0/kernel/lora_a", "dense_0/kernel/lora_b", "dense_1/kernel/lora_a",
                             "dense_1/kernel/lora_b", "head/bias", "head/kernel"]
    assert saved["dense_0/kernel/lora_a"].shape == (64, 4) and saved["dense_1/kernel/lora_b"].shape == (4, 128)
    assert np.abs(saved["dense_1/kernel/lora_b"]).max() > 0  # B left zero
    # adam's two moments of the trainable leaves and its step count: nothing of the 49,536 frozen parameters
    trained = 4 * (64 + 256) + 4 * (256 + 128) + 128 * 2 + 2
    assert sum(np.size(x) for x in jax.tree.leaves(raw["opt_state"])) == 2 * trained + 1
    assert result["trainable_params"] == trained
    assert result["params"] == (64 * 256 + 256) + (256 * 128 + 128) + trained


def test_merge_equals_the_unmerged_run_through_export_and_predict(lora_run, digits_pretrained, tmp_path):
    """export --merge: an ordinary run (strategy full, no init_from) at the same step, whose kernels hold the
    factors, whose predictions equal the LoRA run's within 1e-5 and whose evaluation is the LoRA run's."""
    workdir, result = lora_run
    out = str(tmp_path / "merged")
    assert export.main([workdir, "--merge", out]) == 0
    x, _ = digits_images(100, start=200)
    np.testing.assert_allclose(predict.predict(out, x, log=quiet), predict.predict(workdir, x, log=quiet),
                               atol=1e-5, rtol=0)
    with open(os.path.join(out, "config.json")) as f:
        plain = json.load(f)
    assert plain["finetune"]["strategy"] == "full" and plain["init_from"] is None
    merged = checkpoint_of(out)[2]["params"]
    assert checkpoint_of(out)[1] == result["step"]
    base = checkpoint_of(digits_pretrained.workdir)[2]["params"]
    assert not np.allclose(merged["dense_0"]["kernel"], base["dense_0"]["kernel"])  # the factors are in it
    config = ptft_jax.config.validate(ml_collections.ConfigDict(plain))
    ev = ptft_jax.evaluate(config, out, log=quiet)  # the LoRA run's own final test evaluation, at the same step
    assert ev["step"] == result["step"] and ev["accuracy"] == result["accuracy"]
    np.testing.assert_allclose(ev["loss"], result["loss"], rtol=1e-5)


@pytest.mark.slow
def test_a_stopped_lora_run_resumes_bit_identical(lora_run, digits_pretrained, tmp_path, monkeypatch):
    """Stopped at step 20 (as by SIGTERM) and resumed: the uninterrupted run's metrics rows, result and
    checkpoint (factors, head, optimiser state), bit for bit."""
    workdir, result = lora_run
    stops = iter([True])  # the first boundary: step 20
    monkeypatch.setattr(loop.StopRequest, "requested", lambda self: next(stops, False))
    resumed = str(tmp_path / "run")
    config = _config(digits_pretrained.workdir)
    with pytest.raises(ptft_jax.Interrupted):
        ptft_jax.train(config, resumed, log=quiet)
    assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["20"]
    monkeypatch.undo()
    again = ptft_jax.train(config, resumed, log=quiet)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "steps_per_s"} for r in rows]  # noqa: E731
    assert strip(metrics_rows(resumed)) == strip(metrics_rows(workdir))
    assert again == result
    jax.tree.map(np.testing.assert_array_equal, checkpoint_of(resumed)[2], checkpoint_of(workdir)[2])


def test_lr_mults_and_layer_decay_treat_a_factor_as_its_kernel():
    params = {"dense_0": {"kernel": {"lora_a": np.zeros((4, 2)), "lora_b": np.zeros((2, 3))}},
              "dense_1": {"kernel": {"lora_a": np.zeros((3, 2)), "lora_b": np.zeros((2, 3))}},
              "head": {"kernel": np.zeros((3, 2))}}
    full = ["dense_0/kernel", "dense_0/bias", "dense_1/kernel", "dense_1/bias", "head/kernel"]
    finetune = ml_collections.ConfigDict({"lr_mults": [("dense_1/kernel", 0.1)], "layer_decay": 0.5})
    mults = lora.flat(optim.path_multipliers(params, finetune, full))
    assert mults == {"dense_0/kernel/lora_a": 0.25, "dense_0/kernel/lora_b": 0.25, "dense_1/kernel/lora_a": 0.05,
                     "dense_1/kernel/lora_b": 0.05, "head/kernel": 1.0}
    assert jax.tree.leaves(optim.decay_mask(params)) == [True, True, True, True, True]


def _snapshot(root):
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                out[os.path.relpath(os.path.join(folder, name), root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_lora_targets_matching_no_kernel_names_the_kernels_and_writes_nothing(digits_pretrained, tmp_path):
    before = _snapshot(digits_pretrained.workdir)
    workdir = tmp_path / "run"
    with pytest.raises(ptft_jax.ConfigError) as e:
        ptft_jax.train(_config(digits_pretrained.workdir, **{"finetune.lora_targets": "layer_.*"}), str(workdir),
                       log=quiet)
    msg = str(e.value)
    assert msg.startswith("finetune.lora_targets 'layer_.*' matches none of the frozen kernels (dense_0/kernel, "
                          "dense_1/kernel)") and "\n" not in msg, msg
    assert not os.path.exists(workdir / "graft.json") and not os.listdir(workdir / "checkpoints")
    assert _snapshot(digits_pretrained.workdir) == before


def test_a_changed_base_checkpoint_is_refused_on_resume_evaluate_and_predict(lora_run, digits_pretrained, tmp_path):
    """graft.json records another content hash than init_from's checkpoint has now (as when that checkpoint was
    replaced since the run started): resume, evaluate and predict refuse it, and the run is left as it was."""
    workdir = copy_run(lora_run[0], tmp_path / "run")
    path = os.path.join(workdir, "graft.json")
    with open(path) as f:
        report = json.load(f)
    with open(path, "w") as f:
        json.dump(dict(report, content_hash="0" * 64), f)
    before = _snapshot(workdir)
    config = _config(digits_pretrained.workdir)
    for call in (lambda: ptft_jax.train(config, workdir, log=quiet),
                 lambda: ptft_jax.evaluate(config, workdir, log=quiet),
                 lambda: predict.predict(workdir, digits_images(4)[0], log=quiet)):
        with pytest.raises(ptft_jax.CheckpointError) as e:
            call()
        msg = str(e.value)
        assert msg.startswith(f"init_from {digits_pretrained.workdir} is not the checkpoint this LoRA run started "
                              f"from (its sha256 {report['content_hash'][:16]} differs from graft.json's 0000") and \
            "restore the original init_from" in msg and "\n" not in msg, msg
    assert _snapshot(workdir) == before


def test_merge_of_a_run_that_is_not_lora_is_one_sentence(digits_pretrained, tmp_path, capsys):
    out = tmp_path / "merged"
    assert export.main([digits_pretrained.workdir, "--merge", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {digits_pretrained.workdir} is a finetune.strategy=full run, and --merge folds "
                          f"LoRA factors") and "\n" not in err, err
    assert not out.exists()


@pytest.mark.slow
def test_lora_on_a_published_hf_bert_exports_its_merged_kernels_to_hf(tmp_path):
    """The main use: LoRA on an imported `hf:` BERT classifier (tests/fixtures). Query and value are DenseGeneral
    kernels [in, heads, head_dim], factored as [in, r] @ [r, heads * head_dim]; the `hf:` export holds
    W + (alpha / r) a @ b, computed here in NumPy from the checkpoint and the published weights."""
    from test_published import HF_CLASSIFIER, _words

    from ptft_jax.interop import hf_bert
    rows = tmp_path / "rows.csv"
    names = ("negative", "neutral", "positive")
    rows.write_text("text,label\n" + "".join(f"{t},{names[i % 3]}\n" for i, t in enumerate(_words(48, seed=1))))
    config = ptft_jax.load_config(os.path.join(os.path.dirname(FINETUNE), "hf_bert_finetune.py"), {
        "init_from": f"hf:{HF_CLASSIFIER}", "data.source": f"csv:{rows}", "model.dtype": "float32",
        "data.max_len": 16, "data.batch_size": 8, "data.eval_batch_size": 8, "train.steps": 4, "train.log_every": 4,
        "optim.warmup_epochs": None, "optim.lr": 0.05, "finetune.strategy": "lora", "finetune.lora_rank": 2,
        "data.val_fraction": None, "train.keep_best": None})
    workdir = str(tmp_path / "ft")
    result = ptft_jax.train(config, workdir, log=quiet)
    saved = lora.flat(checkpoint_of(workdir)[2]["params"])
    published = hf_bert.read(HF_CLASSIFIER).variables["params"]
    query = published["layer_0"]["query"]["kernel"]
    a, b = saved["layer_0/query/kernel/lora_a"], saved["layer_0/query/kernel/lora_b"]
    assert a.shape == (query.shape[0], 2) and b.shape == (2, query.shape[1] * query.shape[2])
    assert {p.rsplit("/", 3)[-3] for p in saved if "lora" in p} == {"query", "value", "intermediate", "output"}
    assert result["trainable_params"] == sum(np.size(x) for x in saved.values()) < result["params"] // 4
    export.export(workdir, f"hf:{tmp_path / 'hf'}", log=quiet)
    exported = hf_bert.read(str(tmp_path / "hf")).variables["params"]
    want = query + (16 / 2) * (a.astype(np.float64) @ b).reshape(query.shape)
    np.testing.assert_allclose(exported["layer_0"]["query"]["kernel"], want, atol=1e-6)
    assert not np.allclose(want, query, atol=1e-4)
    np.testing.assert_array_equal(exported["layer_0"]["key"]["kernel"], published["layer_0"]["key"]["kernel"])



@pytest.mark.slow
def test_a_lora_run_on_2_devices_equals_the_1_device_run(lora_run, digits_pretrained, tmp_path):
    """lora_run's config on 2 (fake CPU) devices through launch.py: the frozen base replicated like the params,
    the batch split; the same factors and head within float tolerance (the cross-device sums differ)."""
    workdir, _ = lora_run
    over = [f"--config.{k}={v}" for k, v in {**LORA, "init_from": digits_pretrained.workdir}.items()]
    out = launch(f"--config={FINETUNE}", f"--workdir={tmp_path / 'two'}", *over, devices=2)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "2 cpu device(s)" in out.stdout + out.stderr
    two, one = checkpoint_of(tmp_path / "two")[2]["params"], checkpoint_of(workdir)[2]["params"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), two, one)
