"""Vision: ResNets, BatchNorm statistics, bf16, augmentation, decay masks and the ResNet recipes.

Convolutions compile slowly on XLA's CPU backend, so the runs here shrink the models (width 4-8, one block per
stage); the full sizes are checked through `jax.eval_shape`, which compiles nothing.
"""
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

import ptft_jax
from ptft_jax import models, optim
from ptft_jax.data import augment as aug
from ptft_jax.data.pipeline import EpochOrder, host_batches
from ptft_jax.dataset import Split
from ptft_jax.graft import load_checkpoint
from ptft_jax.step import TrainState, make_train_step
from ptft_jax.tasks import ImageClassification

from conftest import CONFIGS, ROOT

TINY = {"model.width": 4, "model.stage_sizes": (1, 1)}  # the recipes' models, shrunk for the CPU
RECIPES = ["cifar10_resnet18_pretrain.py", "cifar100_resnet18_finetune.py", "imagenet_resnet50_pretrain.py",
           "imagefolder_resnet_finetune.py", "imagefolder_resnet_finetune.py:cifar", "digits_resnet_pretrain.py",
           "digits_resnet_finetune.py"]


def recipe(name, over=None):
    return ptft_jax.load_config(os.path.join(CONFIGS, name), over)


def shapes(model, hw, channels=3):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, hw, hw, channels))))


@pytest.mark.parametrize("name,kwargs,classes,hw,count", [
    ("resnet18", {}, 1000, 224, 11_689_512),
    ("resnet50", {}, 1000, 224, 25_557_032),
    ("resnet18", {"stem": "cifar"}, 10, 32, 11_173_962),
])
def test_parameter_counts_match_the_references(name, kwargs, classes, hw, count):
    v = shapes(models.build(dict(name=name, **kwargs), classes), hw)
    assert models.count_params(v["params"]) == count
    assert set(v) == {"params", "batch_stats"}
    assert v["params"]["head"]["kernel"].shape[-1] == classes
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(v))


def test_forward_shapes_of_both_stems():
    x = jnp.zeros((2, 32, 32, 3))
    for stem, name, feat in [("imagenet", "resnet50", 16 * 4), ("cifar", "resnet18", 16)]:
        model = models.build(dict(name=name, stem=stem, width=2, stage_sizes=(1, 1, 1, 1)), 5)
        v = jax.eval_shape(model.init, jax.random.key(0), x)
        assert jax.eval_shape(model.apply, v, x).shape == (2, 5)
        assert v["params"]["head"]["kernel"].shape == (feat, 5)
        stem_kernel = v["params"]["stem_conv"]["kernel"].shape
        assert stem_kernel == ((7, 7, 3, 2) if stem == "imagenet" else (3, 3, 3, 2))
    # v1.5: the bottleneck's stride sits on its 3x3 conv; the 1x1 convs keep stride 1.
    model = models.build(dict(name="resnet50", width=2, stage_sizes=(1, 1)), 3)
    v = shapes(model, 32)
    intermediates = jax.eval_shape(lambda v: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
                                   v)[1]["intermediates"]["block_1"]
    assert intermediates["Conv_0"]["__call__"][0].shape[1:3] == (8, 8)   # 1x1, stride 1
    assert intermediates["Conv_1"]["__call__"][0].shape[1:3] == (4, 4)   # 3x3, stride 2
    with pytest.raises(ptft_jax.ConfigError, match="model.stem 'big'"):
        models.build(dict(name="resnet18", stem="big"), 3).init(jax.random.key(0), x)


def _tiny_state(dtype="float32", tx=None, **kw):
    """A 2-block ResNet-18 of width 4 on 8x8x1 inputs, 4 classes, and its TrainState."""
    model = models.build(dict(name="resnet18", stem="cifar", width=4, stage_sizes=(1, 1), dtype=dtype, **kw), 4)
    v = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    tx = tx or optax.sgd(0.1, momentum=0.9)
    return model, tx, TrainState(jnp.zeros((), jnp.int32), v["params"], tx.init(v["params"]),
                                 {"batch_stats": v["batch_stats"]})


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 255, (n, 8, 8, 1), dtype=np.uint8),
            "label": rng.integers(0, 4, n).astype(np.int32)}


@pytest.fixture(scope="module")
def f32_step():
    """(model, state before, state after, metrics) of one float32 training step of a tiny ResNet."""
    model, tx, state = _tiny_state()
    new, m = jax.jit(make_train_step(model, tx, ImageClassification(mean=(0.5,), std=(0.25,)), seed=0))(state, _batch())
    return model, state, new, m


def test_batch_stats_change_in_training_and_not_in_evaluation(f32_step):
    from ptft_jax.step import forward
    model, state, new, _ = f32_step
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                           new.model_state, state.model_state)
    assert all(jax.tree.leaves(changed)), changed
    fwd = jax.jit(lambda x: forward(model, new.params, new.model_state, x, False))
    x = jnp.asarray(_batch()["image"], jnp.float32)
    logits, after_eval = fwd(x)
    jax.tree.map(np.testing.assert_array_equal, after_eval, new.model_state)
    # Evaluation uses the running statistics: an example's logits do not depend on the rest of the batch.
    other = fwd(x.at[1:].set(jnp.asarray(_batch(seed=1)["image"][1:], jnp.float32)))[0]
    np.testing.assert_allclose(other[0], logits[0], rtol=1e-5)
    assert not np.allclose(other[1], logits[1])


def test_bf16_step_is_close_to_float32_and_keeps_float32_params(f32_step):
    model, tx, state = _tiny_state("bfloat16")
    new, m = jax.jit(make_train_step(model, tx, ImageClassification(mean=(0.5,), std=(0.25,)), seed=0))(state, _batch())
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((new.params, new.opt_state, new.model_state)))
    logits = jax.eval_shape(model.apply, {"params": new.params, **new.model_state}, jnp.zeros((1, 8, 8, 1)))
    assert logits.dtype == jnp.bfloat16  # computed in bf16; the step's loss casts to float32
    assert np.isfinite(float(m["loss"]))
    np.testing.assert_allclose(float(m["loss"]), float(f32_step[3]["loss"]), rtol=1e-2)
    assert float(m["loss"]) != float(f32_step[3]["loss"])  # it did compute in bf16


def test_label_smoothing_and_mixup():
    model = models.build(dict(name="mlp", hidden=(16,)), num_classes=4)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]  # jitted: one compile
    tx = optax.sgd(0.0 + 1e-9)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), {})
    batch = _batch()
    x = (batch["image"].astype(np.float32) / 255 - 0.5) / 0.25
    logp = jax.jit(lambda x: jax.nn.log_softmax(model.apply({"params": params}, x)))(x)
    nll = -np.take_along_axis(np.asarray(logp), batch["label"][:, None], 1)[:, 0]
    want = np.mean(0.9 * nll + 0.1 * -np.asarray(logp).mean(-1))
    _, m = jax.jit(make_train_step(model, tx, ImageClassification(0.1, mean=(0.5,), std=(0.25,)), 0))(state, batch)
    np.testing.assert_allclose(float(m["loss"]), want, rtol=1e-5)
    mix = jax.jit(make_train_step(model, tx, ImageClassification(mixup_alpha=0.2, mean=(0.5,), std=(0.25,)), 0))
    a, b = float(mix(state, batch)[1]["loss"]), float(mix(state, batch)[1]["loss"])
    assert a == b and np.isfinite(a) and a != pytest.approx(float(np.mean(nll)), rel=1e-6)


def test_weight_decay_skips_batchnorm_and_bias_and_layer_decay_finds_blocks():
    params = shapes(models.build(dict(name="resnet18"), 10), 32)["params"]
    mask = optim.decay_mask(params)
    flat = {"/".join(str(k.key) for k in p): m for p, m in jax.tree_util.tree_leaves_with_path(mask)}
    assert flat["block_0/Conv_0/kernel"] and flat["head/kernel"] and flat["stem_conv/kernel"]
    assert not flat["head/bias"] and not flat["block_1/BatchNorm_1/scale"] and not flat["stem_bn/bias"]
    assert sum(flat.values()) == 21  # 20 convs + the head
    small = {"block_0": {"Conv_0": {"kernel": np.ones((3, 3))}, "BatchNorm_0": {"scale": np.ones(3)}},
             "head": {"kernel": np.ones((3, 2)), "bias": np.ones(2)}}
    for name in ("sgd", "adam", "adamw"):
        cfg = ptft_jax.defaults().optim
        cfg.update(name=name, lr=0.1, weight_decay=0.5)
        tx = optim.build(cfg, 10)
        updates, _ = tx.update(jax.tree.map(np.zeros_like, small), tx.init(small), small)
        assert not np.any(updates["block_0"]["BatchNorm_0"]["scale"]) and not np.any(updates["head"]["bias"])
        assert np.all(np.asarray(updates["block_0"]["Conv_0"]["kernel"]) < 0), name
    ft = ptft_jax.defaults().finetune
    ft.layer_decay = 0.5
    m = optim.path_multipliers(params, ft)
    assert m["head"]["kernel"] == 1.0 and m["block_7"]["Conv_0"]["kernel"] == 0.5
    assert m["block_0"]["BatchNorm_0"]["scale"] == 0.5 ** 8 and m["stem_conv"]["kernel"] == 0.5 ** 9


def test_warmup_epochs_convert_to_steps():
    cfg = ptft_jax.defaults().optim
    cfg.update(lr=1.0, schedule="cosine", warmup_epochs=2.0)
    sched = optim.schedule(cfg, 100, steps_per_epoch=10)
    assert float(sched(10)) == pytest.approx(0.5) and float(sched(20)) == pytest.approx(1.0)
    with pytest.raises(ptft_jax.ConfigError, match="warmup_epochs"):
        optim.schedule(cfg, 100)


def _data_cfg(**kw):
    cfg = ptft_jax.defaults().data
    cfg.update(kw)
    return cfg


def test_crop_flip_is_deterministic_per_step_and_differs_across_epochs():
    rng = np.random.default_rng(0)
    split = Split(40, arrays={"image": rng.integers(0, 255, (40, 8, 8, 3), dtype=np.uint8),
                              "label": np.arange(40, dtype=np.int32)})
    order = EpochOrder(40, 8, seed=3)
    a = aug.TrainAugment(_data_cfg(augment="crop_flip", crop_padding=2), seed=3)
    idx, rows = np.arange(8), slice(0, 8)
    first = a(split, idx, rows, step=1)
    np.testing.assert_array_equal(first["image"], a(split, idx, rows, step=1)["image"])
    assert first["image"].shape == (8, 8, 8, 3) and first["image"].dtype == np.uint8
    later = a(split, idx, rows, step=1 + order.steps_per_epoch)  # the same examples one epoch later
    assert not np.array_equal(first["image"], later["image"])
    # Two processes' halves make the one-process batch.
    halves = [a(split, idx, slice(i * 4, i * 4 + 4), step=1)["image"] for i in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), first["image"])
    # A crop at the centre offset with a flip is the mirrored image; padding is zeros.
    img = split.arrays["image"][:1]
    np.testing.assert_array_equal(aug.crop_flip(img, np.array([[2, 2]]), np.array([True]), 2), img[:, :, ::-1])
    shifted = aug.crop_flip(img, np.array([[0, 0]]), np.array([False]), 2)
    assert not shifted[:, :2].any() and np.array_equal(shifted[0, 2:, 2:], img[0, :6, :6])
    # The host pipeline from a resumed step reads the batches it would have read.
    full = list(host_batches(split, order, 0, 6, rows, 2, 2, augment=a))
    resumed = list(host_batches(split, order, 4, 6, rows, 2, 2, augment=a))
    np.testing.assert_array_equal(full[4]["image"], resumed[0]["image"])
    np.testing.assert_array_equal(full[5]["label"], resumed[1]["label"])


def test_inception_crop_and_evaluation_view():
    rng = np.random.default_rng(1)
    records = [{"image": rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "label": i}
               for i, (h, w) in enumerate([(40, 60), (64, 30), (33, 33), (80, 50)])]
    split = Split(4, records=records)
    cfg = _data_cfg(augment="inception_crop", image_size=16)
    sized = aug.SizedRecords(split, 16, crop=True)
    assert all(sized[i]["image"].shape == (16, 16, 3) for i in range(4))
    centre = aug.resize(records[2]["image"], 16, aug.centre_box(33, 33))
    np.testing.assert_array_equal(sized[2]["image"], centre)
    a = aug.TrainAugment(cfg, seed=0)
    sized_split = Split(4, records=sized)
    out = a(sized_split, np.arange(4), slice(0, 4), step=5)
    assert out["image"].shape == (4, 16, 16, 3) and list(out["label"]) == [0, 1, 2, 3]
    np.testing.assert_array_equal(out["image"], a(sized_split, np.arange(4), slice(0, 4), step=5)["image"])
    assert not np.array_equal(out["image"], a(sized_split, np.arange(4), slice(0, 4), step=6)["image"])
    for i in range(50):
        u = np.random.default_rng(i).random(40)
        left, top, right, bottom = aug.inception_box(40, 60, u)
        assert 0 <= left < right <= 60 and 0 <= top < bottom <= 40
    with pytest.raises(ptft_jax.ConfigError, match="needs data.image_size"):
        ptft_jax.load_config(os.path.join(CONFIGS, "digits_resnet_pretrain.py"), {"data.augment": "inception_crop"})
    with pytest.raises(ptft_jax.ConfigError, match="data.augment is 'cutout'; use one of"):
        ptft_jax.load_config(os.path.join(CONFIGS, "digits_resnet_pretrain.py"), {"data.augment": "cutout"})


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_loads_and_builds(name):
    c = recipe(name)
    assert c.model.name.startswith("resnet") and c.data.augment in ("crop_flip", "inception_crop")
    model = models.build(c.model, 10)
    hw = c.data.image_size or (8 if c.data.source == "digits" else 32)
    assert models.count_params(shapes(model, hw)["params"]) > 0
    if name.startswith("imagenet"):
        # Goyal et al.'s schedule, as the loop will build it: linear warmup over 5 epochs to 0.1 x batch / 256
        # (0.4 for 1024), then cosine to zero at the end of training; and the model computes in bfloat16.
        spe = 1_281_167 // c.data.batch_size
        total = int(c.train.epochs * spe)
        sched = optim.schedule(c.optim, total, steps_per_epoch=spe)
        assert float(sched(0)) == 0.0 and float(sched(5 * spe)) == pytest.approx(0.1 * c.data.batch_size / 256)
        assert float(sched(2 * spe)) == pytest.approx(0.4 * float(sched(5 * spe)), rel=1e-3)
        assert float(sched(total // 2)) < float(sched(5 * spe)) and float(sched(total)) == pytest.approx(0, abs=1e-7)
        logits = jax.eval_shape(model.apply, shapes(model, hw), jnp.zeros((1, hw, hw, 3)))
        assert logits.dtype == jnp.bfloat16 and logits.shape == (1, 10)


@pytest.fixture(scope="module")
def digits_pt(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("digits") / "pt")
    config = recipe("digits_resnet_pretrain.py", {**TINY, "train.steps": 12, "train.log_every": 6,
                                                  "train.checkpoint_every": 6})
    return workdir, config, ptft_jax.train(config, workdir)


@pytest.mark.slow
def test_digits_resnet_pretrain_checkpoints_batch_stats(digits_pt):
    workdir, config, result = digits_pt
    assert result["step"] == 12 and np.isfinite(result["loss"])
    raw = load_checkpoint(workdir)[2]
    var = raw["model_state"]["batch_stats"]["block_0"]["BatchNorm_0"]["var"]
    assert np.asarray(var).dtype == np.float32 and not np.allclose(var, 1.0)  # trained, not the init
    again = ptft_jax.evaluate(config, workdir)  # restores params and batch_stats
    assert again["loss"] == pytest.approx(result["loss"], rel=1e-5)


@pytest.mark.slow
def test_digits_resnet_finetune_and_image_folder_recipe(digits_pt, tmp_path):
    workdir = digits_pt[0]
    ft = recipe("digits_resnet_finetune.py", {**TINY, "train.steps": 6, "train.log_every": 3, "init_from": workdir})
    result = ptft_jax.train(ft, str(tmp_path / "ft"))
    assert result["step"] == 6 and np.isfinite(result["loss"])
    counts = json.load(open(tmp_path / "ft" / "graft.json"))["counts"]
    assert counts == {"load": 30, "init": 2, "zero": 0, "skip": 2}  # 18 params + 12 batch_stats leaves
    # The image-folder recipe (cifar preset) on a generated folder of grayscale images, from the same run.
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / "imgs" / f"class{c}").mkdir(parents=True)
        for i in range(8):
            image = Image.fromarray(rng.integers(0, 255, (12, 10), dtype=np.uint8))
            image.save(tmp_path / "imgs" / f"class{c}" / f"{i}.png")
    folder = recipe("imagefolder_resnet_finetune.py:cifar", {
        **TINY, "data.source": f"folder:{tmp_path / 'imgs'}", "data.image_size": 8, "data.batch_size": 8,
        "data.eval_batch_size": 8, "data.crop_padding": 1, "train.steps": 2, "init_from": workdir})
    with pytest.raises(ptft_jax.DataError, match="data.mean has 3 values but the imgs images have 1 channel"):
        ptft_jax.train(folder, str(tmp_path / "folder"))
    folder = ptft_jax.apply_overrides(folder, {"data.mean": (0.3,), "data.std": (0.4,)})  # the digits run's
    result = ptft_jax.train(folder, str(tmp_path / "folder"))
    assert result["step"] == 2 and np.isfinite(result["loss"])
    assert json.load(open(tmp_path / "folder" / "data.json"))["image_shape"] == [8, 8, 1]


def _mock_over(tmp_path, **kw):
    return {**TINY, "train.steps": 2, "train.log_every": 1, "data.batch_size": 8, "data.eval_batch_size": 10,
            "data.data_dir": str(tmp_path / "tfds"), **kw}


@pytest.mark.slow
def test_cifar10_to_cifar100_graft_on_mock_data_loads_every_non_head_leaf(tmp_path):
    with tfds.testing.mock_data(num_examples=24):
        pt = ptft_jax.train(recipe("cifar10_resnet18_pretrain.py", _mock_over(tmp_path)), str(tmp_path / "pt"))
        ft_config = recipe("cifar100_resnet18_finetune.py", _mock_over(tmp_path, init_from=str(tmp_path / "pt")))
        ft = ptft_jax.train(ft_config, str(tmp_path / "ft"))
    assert pt["step"] == ft["step"] == 2 and np.isfinite(ft["loss"])
    report = json.load(open(tmp_path / "ft" / "graft.json"))
    rows = {r["path"]: r["action"] for r in report["rows"]}
    head = {p for p in rows if p.startswith("params/head/")}
    assert head == {"params/head/kernel", "params/head/bias"} and {rows[p] for p in head} == {"init"}
    assert all(a == "load" for p, a in rows.items() if p not in head)
    assert sum(p.startswith("batch_stats/") for p in rows) == 12 and report["counts"]["load"] == len(rows) - 2
    assert report["step"] == 2


@pytest.mark.slow
def test_imagenet_recipe_on_mock_data(tmp_path):
    # Mock ImageNet images have random sizes: training crops them, evaluation centre-crops them, at 32x32.
    over = _mock_over(tmp_path, **{"data.image_size": 32, "model.dtype": "float32", "data.num_threads": 2})
    with tfds.testing.mock_data(num_examples=16):
        result = ptft_jax.train(recipe("imagenet_resnet50_pretrain.py", over), str(tmp_path / "run"))
    assert result["step"] == 2 and np.isfinite(result["loss"])
    assert json.load(open(tmp_path / "run" / "data.json"))["image_shape"] == [32, 32, 3]


@pytest.mark.slow
def test_batch_stats_are_over_the_global_batch_on_4_devices():
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np, optax
        from ptft_jax import models
        from ptft_jax.parallel import Parallel
        from ptft_jax.step import TrainState, make_train_step
        from ptft_jax.tasks import ImageClassification
        assert jax.device_count() == 4
        model = models.build(dict(name="resnet18", stem="cifar", width=4, stage_sizes=(1,)), 4)
        v = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
        tx = optax.sgd(0.1)
        state = TrainState(jnp.zeros((), jnp.int32), v["params"], tx.init(v["params"]),
                           {"batch_stats": v["batch_stats"]})
        rng = np.random.default_rng(0)
        batch = {"image": rng.integers(0, 255, (16, 8, 8, 1), dtype=np.uint8),
                 "label": rng.integers(0, 4, 16).astype(np.int32)}
        step = make_train_step(model, tx, ImageClassification(mean=(0.5,), std=(0.25,)), 0)
        par = Parallel()
        one = jax.jit(step)(jax.device_put(state, jax.devices()[0]), jax.device_put(batch, jax.devices()[0]))[0]
        sharded = {k: jax.device_put(x, par.batch_sharded) for k, x in batch.items()}
        four = jax.jit(step, out_shardings=par.replicated)(jax.device_put(state, par.replicated), sharded)[0]
        quarter = jax.jit(step)(state, {k: x[:4] for k, x in batch.items()})[0]  # what per-device BN would see
        a, b, q = (np.asarray(s.model_state["batch_stats"]["stem_bn"]["mean"]) for s in (one, four, quarter))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert not np.allclose(a, q, rtol=1e-3)
        for x, y in zip(jax.tree.leaves(one), jax.tree.leaves(four)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
        print("ok")
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
