"""Fine-tuning on a budget: train.grad_accum, train.remat, finetune.strategy=bitfit, the trainable-parameter counts
and the step's memory estimate. Direct calls of make_train_step / optim.build on tiny models and generated arrays,
and one short digits run for the config path."""
import importlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import ptft_jax
from ptft_jax import models, optim, tasks
from ptft_jax.config import CHOICES, apply_overrides, defaults, validate
from ptft_jax.errors import ConfigError
from ptft_jax.parallel import Parallel
from ptft_jax.step import TrainState, make_chunk_fn, make_train_step, memory_bytes, step_memory

from conftest import DIGITS, ROOT, Log, launch_env, metrics_rows

BERT = dict(name="bert", size="tiny", vocab_size=64, max_position=32, dropout_rate=0.0)
RESNET = dict(name="resnet18", width=4, stem="cifar", stage_sizes=(1, 1))


def _optim(**kw):
    return ml_collections.ConfigDict({**defaults().optim.to_dict(), **kw})


def _finetune(strategy="full"):
    return ml_collections.ConfigDict({**defaults().finetune.to_dict(), "strategy": strategy})


def _state(model, x, tx):
    """A fresh TrainState, made in one jitted call (eager init compiles op by op: slow on CPU)."""
    def init():
        variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=False)
        params = variables.pop("params")
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), dict(variables))

    return jax.jit(init)()


def _steps(model, task, tx, batches, state, grad_accum=1, par=None):
    """The state and metrics after one jitted train step per batch from `state` (not donated: reusable)."""
    step = jax.jit(make_train_step(model, tx, task, seed=0, grad_accum=grad_accum, par=par))
    metrics = []
    for batch in batches:
        state, m = step(state, batch)
        metrics.append(m)
    return state, metrics


def _close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _image_batches(n, b=16, shape=(8, 8, 1), classes=10):
    rng = np.random.default_rng(0)
    return [{"image": jnp.asarray(rng.integers(0, 256, (b, *shape)), jnp.uint8),
             "label": jnp.asarray(rng.integers(0, classes, b), jnp.int32)} for _ in range(n)]


def _text_batches(n, b=8, t=16):
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        mask = (np.arange(t)[None] < rng.integers(4, t + 1, (b, 1))).astype(np.int32)
        out.append({"input_ids": jnp.asarray(rng.integers(5, 64, (b, t)) * mask, jnp.int32),
                    "token_type_ids": jnp.zeros((b, t), jnp.int32), "attention_mask": jnp.asarray(mask),
                    "label": jnp.asarray(rng.integers(0, 2, b), jnp.int32)})
    return out


def _mlm_batches(n, b=8, t=16, p=4):
    """Masked-LM batches whose rows hold different numbers of masked positions (weights 0 or 1), so that the
    micro-batches' shares of the loss differ."""
    rng = np.random.default_rng(2)
    out = []
    for _ in range(n):
        weights = (np.arange(p)[None] < rng.integers(0, p + 1, (b, 1))).astype(np.float32)
        out.append({"input_ids": jnp.asarray(rng.integers(5, 64, (b, t)), jnp.int32),
                    "token_type_ids": jnp.zeros((b, t), jnp.int32), "attention_mask": jnp.ones((b, t), jnp.int32),
                    "masked_positions": jnp.asarray(rng.integers(1, t, (b, p)), jnp.int32),
                    "masked_labels": jnp.asarray(rng.integers(0, 64, (b, p)), jnp.int32),
                    "masked_weights": jnp.asarray(weights)})
    return out


IMAGES = tasks.ImageClassification(mean=(0.5,), std=(0.25,))


# --- train.grad_accum -------------------------------------------------------------------------------------------

def test_grad_accum_equals_one_step_on_the_whole_batch_mlp():
    model = models.build(dict(name="mlp", hidden=(32, 16)), 10)
    tx = optim.build(_optim(name="adam", lr=1e-2), total_steps=3)
    batches, init = _image_batches(3), _state(model, jnp.zeros((1, 8, 8, 1)), tx)
    whole, m1 = _steps(model, IMAGES, tx, batches, init)
    accum, m4 = _steps(model, IMAGES, tx, batches, init, grad_accum=4, par=Parallel())
    assert int(accum.step) == 3  # one optimiser step per call, as without accumulation
    _close(accum.params, whole.params)
    _close(accum.opt_state, whole.opt_state)
    np.testing.assert_allclose([m["loss"] for m in m4], [m["loss"] for m in m1], rtol=1e-5)
    np.testing.assert_allclose([m["accuracy"] for m in m4], [m["accuracy"] for m in m1], rtol=1e-6)
    assert not np.allclose(jax.tree.leaves(whole.params)[1], jax.tree.leaves(init.params)[1])


@pytest.mark.slow
def test_grad_accum_weights_masked_lm_micro_batches_by_their_masked_positions():
    """The masked-LM loss is a mean over masked positions, which differ per micro-batch: weighted by them, the
    accumulated step equals the whole batch's (equal weights would not)."""
    model = models.build(dict(BERT, name="bert_mlm"))
    tx = optim.build(_optim(name="sgd", lr=0.5), total_steps=2)
    batches = _mlm_batches(2)
    x0 = {k: v[:1] for k, v in batches[0].items() if k != "masked_labels" and k != "masked_weights"}
    init = _state(model, x0, tx)
    whole, m1 = _steps(model, tasks.MaskedLM(), tx, batches, init)
    accum, m2 = _steps(model, tasks.MaskedLM(), tx, batches, init, grad_accum=2)
    np.testing.assert_allclose([m["loss"] for m in m2], [m["loss"] for m in m1], rtol=1e-5)
    _close(accum.params, whole.params, rtol=1e-4, atol=1e-6)


def test_grad_accum_is_refused_when_it_does_not_divide_the_batch(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="not divisible by train.grad_accum 3"):
        validate(apply_overrides(defaults(), {"data.batch_size": 16, "train.grad_accum": 3}))
    with pytest.raises(ConfigError, match="at least 1"):
        validate(apply_overrides(defaults(), {"train.grad_accum": 0}))
    # 8 examples over 4 devices are 2 a device: grad_accum 4 divides the batch but not a device's share.
    loop = importlib.import_module("ptft_jax.train")  # the module (ptft_jax.train is the function)
    fake = type("FourDevices", (), {"num_devices": 4, "check_batch": Parallel.check_batch})()
    monkeypatch.setattr(loop, "Parallel", lambda: fake)
    config = ptft_jax.load_config(DIGITS, {"data.batch_size": 8, "data.eval_batch_size": 8, "train.grad_accum": 4})
    with pytest.raises(ConfigError, match="does not divide each device's 2 examples"):
        loop.build_run(config, str(tmp_path / "run"), log=lambda *_: None)
    config = ptft_jax.load_config(DIGITS, {"data.batch_size": 8, "data.eval_batch_size": 8, "train.grad_accum": 2})
    assert loop.build_run(config, str(tmp_path / "ok"), log=lambda *_: None).config.train.grad_accum == 2


_SHARDED = """
import jax, jax.numpy as jnp, numpy as np, ml_collections
from ptft_jax import models, optim, tasks
from ptft_jax.config import defaults
from ptft_jax.parallel import Parallel
from ptft_jax.step import TrainState, make_chunk_fn, make_train_step, memory_bytes, step_memory
par = Parallel(); assert par.num_devices == 4
model = models.build(dict(name="mlp", hidden=(16,)), 10)
tx = optim.build(ml_collections.ConfigDict({**defaults().optim.to_dict(), "lr": 0.1}), total_steps=1)
params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
state = jax.device_put(TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), {}), par.replicated)
rng = np.random.default_rng(0)
batch = jax.device_put({"image": jnp.asarray(rng.integers(0, 256, (16, 8, 8, 1)), jnp.uint8),
                        "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32)}, par.batch_sharded)
task = tasks.ImageClassification(mean=(0.5,), std=(0.25,))
out = {}
for n in (1, 2):
    step = jax.jit(make_train_step(model, tx, task, 0, grad_accum=n, par=par), out_shardings=par.replicated)
    hlo = step.lower(state, batch).compile().as_text()
    out[n] = step(state, batch)[0].params
    if n == 2:  # the micro-batches stay on their devices: no all-to-all / all-gather of the batch
        assert "all-to-all" not in hlo and "all-gather" not in hlo, "the micro-batches moved between devices"
for a, b in zip(jax.tree.leaves(out[1]), jax.tree.leaves(out[2])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
print("ok")
"""


@pytest.mark.slow  # a subprocess with 4 CPU devices
def test_grad_accum_on_four_devices_keeps_micro_batches_sharded():
    out = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**launch_env(4), "PYTHONPATH": ROOT})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


# --- train.remat ------------------------------------------------------------------------------------------------

def test_remat_policies_named_in_the_config_exist_in_jax():
    names = [c for c in CHOICES["train.remat"] if isinstance(c, str)]
    assert names and all(callable(getattr(jax.checkpoint_policies, n)) for n in names)
    assert validate(apply_overrides(defaults(), ["train.remat=nothing_saveable"])).train.remat == "nothing_saveable"
    assert validate(apply_overrides(defaults(), ["train.remat=true"])).train.remat is True
    with pytest.raises(ConfigError, match="train.remat"):
        validate(apply_overrides(defaults(), ["train.remat=nothing_savable"]))


@pytest.mark.slow
@pytest.mark.parametrize("which,remat", [("bert", True), ("resnet", "dots_with_no_batch_dims_saveable")])
def test_remat_keeps_the_param_tree_and_the_numbers(which, remat):
    if which == "bert":
        cfg, task, batches = BERT, tasks.TextClassification(), _text_batches(1)
        x0 = {k: v[:1] for k, v in batches[0].items() if k != "label"}
    else:
        cfg, task, batches, x0 = RESNET, IMAGES, _image_batches(1, b=8, shape=(8, 8, 3)), jnp.zeros((1, 8, 8, 3))
    tx = optim.build(_optim(name="sgd", lr=0.1), total_steps=1)
    plain, with_remat = models.build(cfg, 2 if which == "bert" else 10), \
        models.build(cfg, 2 if which == "bert" else 10, remat=remat)
    assert with_remat.remat == remat
    init, shapes = _state(plain, x0, tx), jax.eval_shape(lambda: _state(with_remat, x0, tx))
    assert jax.tree.structure(shapes) == jax.tree.structure(init)  # the same paths: old checkpoints load
    a, ma = _steps(plain, task, tx, batches, init)
    b, mb = _steps(with_remat, task, tx, batches, init)
    np.testing.assert_allclose(float(mb[0]["loss"]), float(ma[0]["loss"]), rtol=1e-6)
    _close(b.params, a.params)  # one SGD step: params - lr * grads, so the grads agree too
    _close(b.model_state, a.model_state)


# --- finetune.strategy=bitfit -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_bitfit_trains_biases_norms_and_head_only_with_no_state_for_the_rest():
    model = models.build(dict(BERT, dropout_rate=0.1), 2)
    batches = _text_batches(3)
    x0 = {k: v[:1] for k, v in batches[0].items() if k != "label"}
    init_params = jax.eval_shape(lambda: _state(model, x0, optim.base(_optim(), 1)).params)
    tx = optim.build(_optim(name="adam", lr=1e-2), finetune=_finetune("bitfit"), params=init_params, total_steps=3)
    init = _state(model, x0, tx)
    init_params = init.params
    state, _ = _steps(model, tasks.TextClassification(), tx, batches, init)
    trains = optim.trainable(state.params, "bitfit")
    flat = jax.tree_util.tree_leaves_with_path(state.params)
    before = jax.tree.leaves(init_params)
    kinds = set()
    for (path, new), old, trained in zip(flat, before, jax.tree.leaves(trains), strict=True):
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        leaf = name.rsplit("/", 1)[-1]
        assert trained == (name.startswith("head/") or leaf in ("bias", "scale")), name
        if trained:
            assert not np.array_equal(np.asarray(new), np.asarray(old)), f"{name} did not train"
            kinds.add(leaf if not name.startswith("head/") else "head")
        else:
            assert np.array_equal(np.asarray(new), np.asarray(old)), f"{name} changed"  # bit for bit
            kinds.add("frozen " + leaf)
    assert kinds >= {"bias", "scale", "head", "frozen kernel", "frozen embedding"}
    # Adam keeps two moments of each trained leaf and nothing for the frozen ones (plus its step count).
    trained_bytes = sum(x.nbytes for x, t in zip(before, jax.tree.leaves(trains)) if t)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state.opt_state) if x.ndim)
    assert state_bytes == 2 * trained_bytes
    total = models.count_params(state.params)
    assert optim.count_trainable(state.params, "bitfit") == sum(
        x.size for x, t in zip(before, jax.tree.leaves(trains)) if t) < total / 10
    assert optim.count_trainable(state.params, "full") == total


@pytest.mark.slow
def test_frozen_leaves_get_no_gradient_computed():
    """With optim.trainable passed to the step, linear_probe runs no backward pass through the BERT backbone: the
    step's temporaries shrink severalfold, and the trained head's update is the same."""
    model = models.build(dict(BERT, max_position=128), 2)
    batch = _text_batches(1, b=16, t=128)[0]
    x0 = {k: v[:1] for k, v in batch.items() if k != "label"}
    params = jax.eval_shape(lambda: _state(model, x0, optim.base(_optim(), 1)).params)
    tx = optim.build(_optim(name="adam"), finetune=_finetune("linear_probe"), params=params, total_steps=1)
    state = _state(model, x0, tx)
    temps, heads = [], []
    for trainable in (None, optim.trainable(params, "linear_probe")):
        step = jax.jit(make_train_step(model, tx, tasks.TextClassification(), 0, trainable=trainable))
        temps.append(memory_bytes(step.lower(state, batch).compile())["temporaries"])
        heads.append(step(state, batch)[0].params["head"])
    assert temps[1] < temps[0] / 3, temps
    _close(heads[1], heads[0])


def test_bitfit_on_resnet_trains_batchnorm_scales_and_offsets():
    model = models.build(RESNET, 10)
    params = jax.eval_shape(lambda: _state(model, jnp.zeros((1, 8, 8, 3)), optim.base(_optim(), 1)).params)
    trains = {jax.tree_util.keystr(p, simple=True, separator="/"): t
              for p, t in jax.tree_util.tree_leaves_with_path(optim.trainable(params, "bitfit"))}
    assert trains["stem_bn/scale"] and trains["stem_bn/bias"] and trains["block_0/BatchNorm_0/scale"]
    assert trains["head/kernel"] and not trains["stem_conv/kernel"] and not trains["block_1/proj_conv/kernel"]
    assert "bitfit" in CHOICES["finetune.strategy"]


def test_step_memory_reads_the_executable_the_call_compiled():
    """After one call of the chunk function on the feed's (committed) arrays, step_memory compiles nothing more;
    on uncommitted arrays it gives {} rather than a second compile."""
    par = Parallel()
    model = models.build(dict(name="mlp", hidden=(16,)), 10)
    tx = optim.build(_optim(), total_steps=2)
    chunk = make_chunk_fn(make_train_step(model, tx, IMAGES, 0), par)
    state = jax.device_put(_state(model, jnp.zeros((1, 8, 8, 1)), tx), par.replicated)
    batches = jax.tree.map(lambda *x: jnp.stack(x), *_image_batches(2))
    inputs = {"batches": jax.device_put(batches, par.chunk_sharded)}
    compiles = []
    listener = lambda event, secs, **kw: compiles.append(event) if "backend_compile" in event else None  # noqa
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        state, _ = chunk(state, inputs)
        assert len(compiles) >= 1  # the listener sees the call's compile
        seen = len(compiles)
        line = step_memory(chunk, state, inputs)
        assert step_memory(chunk, state, {"batches": batches}) == {}  # uncommitted: not measured
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert len(compiles) == seen and line["step_memory_bytes"] > 0
    params_bytes = sum(x.nbytes for x in jax.tree.leaves(state.params))
    assert line["step_memory_bytes"] >= params_bytes + batches["image"].nbytes  # the state and the batches, at least


# --- the config path end to end ---------------------------------------------------------------------------------

def test_digits_run_with_grad_accum_and_bitfit_reports_params_and_memory(tmp_path):
    log = Log()
    config = ptft_jax.load_config(DIGITS, {"train.steps": 20, "train.log_every": 10, "train.grad_accum": 2,
                                           "finetune.strategy": "bitfit", "train.remat": True})
    result = ptft_jax.train(config, str(tmp_path / "run"), log=log)
    summary = next(line for line in log if line.startswith("model mlp"))
    assert f"{result['params']:,} params, {result['trainable_params']:,} trained (bitfit)" in summary
    assert "grad_accum 2, remat True" in summary
    assert result["trainable_params"] == 256 + 128 + 128 * 10 + 10 < result["params"]  # biases + head
    rows = metrics_rows(tmp_path / "run", "train")
    assert [r["step"] for r in rows] == [10, 20]
    assert rows[0]["step_memory_bytes"] > 0 and "step_memory_bytes" not in rows[1]
    assert os.path.isdir(tmp_path / "run" / "checkpoints" / "20")
