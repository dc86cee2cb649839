"""Times the training of ptft_jax's models against plain PyTorch peers: `python -m bench [--quick] [--out PATH]`.

Each workload is a row of WORKLOADS; its `kind` picks the runner ("step": the jitted step alone, one step per
call and a lax.scan of K steps per call; "loop": ptft_jax.train() itself, device-resident and grain pipelines;
"model_step": one jitted train step of a recipe's model and optimiser (ResNet-18 CIFAR, ResNet-50, BERT-base MLM)
on a synthetic batch already on the device; "pipeline": ptft_jax.train() through the grain host pipeline with the
recipe's augmentation on generated npz data, next to its synthetic step row; "text_pipeline": the masked-LM text
stream alone on generated corpora, bench/text_pipeline.py) and `peer` names the PyTorch function it is compared
with. Rates are medians over repeats after a warm-up.

Sizes: a workload's own keys are its full size (what a GPU runs); its `cpu` dict shrinks it on the CPU backend
(unless --full_size) and its `quick` dict under --quick on any backend. Compute dtype: bfloat16 on accelerators,
float32 on CPU (where XLA and PyTorch emulate bfloat16); each row says which.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `python bench/run.py` puts bench/ first on the path, not the repo root
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import ptft_jax  # noqa: E402
from ptft_jax import (  # noqa: E402
    models,
    optim,
    tasks,  # noqa: E402
)
from ptft_jax.parallel import Parallel  # noqa: E402
from ptft_jax.step import TrainState, make_chunk_fn, make_train_step  # noqa: E402

MLP = dict(model=dict(name="mlp", hidden=(256, 128)), shape=(28, 28, 1), classes=10, batch=256, lr=0.01,
           train_size=60_000, test_size=10_000)
WORKLOADS = [
    dict(name="mlp_step", kind="step", peer="bench.peers.torch_mlp:step", **MLP),
    dict(name="mlp_loop", kind="loop", peer="bench.peers.torch_mlp:loop", epochs=10, step="mlp_step", **MLP),
]
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
RESNET18_CIFAR = dict(config="configs/cifar10_resnet18_pretrain.py", model=dict(name="resnet18", stem="cifar"),
                      shape=(32, 32, 3), classes=10, batch=128)
TINY_RESNET = dict(stage_sizes=(1, 1), width=8)  # --quick: two stages of one block, 8 channels
WORKLOADS += [
    # ResNet-18, CIFAR stem, the recipe's SGD (momentum 0.9, nesterov, weight decay 5e-4, cosine); full batch on CPU.
    dict(name="resnet18_cifar", kind="model_step", peer="bench.peers.torch_resnet:step", repeats=7, calls=50,
         **RESNET18_CIFAR, cpu=dict(repeats=2, calls=1, warmup=0),
         quick=dict(model=TINY_RESNET, shape=(16, 16, 3), batch=16, repeats=3, calls=3, warmup=2)),
    # ptft_jax.train() on generated CIFAR-shaped npz data through grain with crop_flip, eval and checkpoint only at
    # the end: a cold run (compiles), then a warm one whose metrics.jsonl intervals after the first give the rate.
    dict(name="resnet18_cifar_loop", kind="pipeline", step="resnet18_cifar", peer=None, **RESNET18_CIFAR,
         train_size=50_000, test_size=1_000, steps=1200, log_every=100, steps_per_call=None,
         # CPU: a few steps at the real batch (train() runs conv nets one step per call on CPU, see train.py).
         cpu=dict(train_size=1280, test_size=128, steps=6, log_every=2, steps_per_call=None),
         quick=dict(model=TINY_RESNET, shape=(16, 16, 3), batch=16, train_size=320, test_size=64, steps=40,
                    log_every=10, steps_per_call=None)),
    # ResNet-50 v1.5, ImageNet stem, 1000 classes, the recipe's SGD and label smoothing 0.1, batch 256 at 224.
    dict(name="resnet50", kind="model_step", peer="bench.peers.torch_resnet:step",
         config="configs/imagenet_resnet50_pretrain.py", model=dict(name="resnet50", stem="imagenet"),
         shape=(224, 224, 3), classes=1000, batch=256, repeats=5, calls=20,
         cpu=dict(batch=8, repeats=2, calls=1, warmup=0),
         quick=dict(model=dict(stage_sizes=(1,), width=8), shape=(32, 32, 3), classes=10, batch=8, repeats=3,
                    calls=3, warmup=2)),
    # BERT-base masked LM (vocab 30522), 256 x 128 tokens, 20 predictions per sequence, the recipe's AdamW.
    dict(name="bert_base_mlm", kind="model_step", peer="bench.peers.torch_bert:step",
         config="configs/bert_mlm_pretrain.py",
         model=dict(name="bert_mlm", size="base", vocab_size=30522, dropout_rate=0.1),
         seq=128, predictions=20, batch=256, repeats=5, calls=20,
         cpu=dict(batch=8, repeats=2, calls=1, warmup=0),
         quick=dict(model=dict(size="tiny", num_layers=1, vocab_size=1000), seq=32, predictions=5, batch=8, repeats=3,
                    calls=3, warmup=2)),
]
WORKLOADS += [
    # The masked-LM text stream alone (no model): generated 50 and 500 MB corpora, batch 256 x 128
    # (bench/text_pipeline.py).
    dict(name="text_pipeline", kind="text_pipeline", peer=None, batch=256, seq=128, sizes_mb=(50, 500), steps=80,
         quick=dict(sizes_mb=(5, 20), steps=20)),
]
FULL = dict(repeats=7, calls=50, scan_steps=100, epochs=None, train_size=None, test_size=None)
QUICK = dict(repeats=3, calls=20, scan_steps=20, epochs=5, train_size=12_000, test_size=2_000)


def timed(fn, repeats, warmup=1):
    """(first call s, median steady call s): one call, `warmup` warm-up calls, then `repeats` timed calls."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def matmul_rate(dtype, n, repeats):
    """FLOP/s of one jitted n x n @ n x n matmul (median of repeats)."""
    a, b = (jax.random.normal(jax.random.key(i), (n, n), dtype) for i in (1, 2))
    f = jax.jit(jnp.matmul)
    _, t = timed(lambda: f(a, b), max(repeats, 5))
    return 2 * n ** 3 / t


def peak_bytes():
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def clear_compile_cache():
    """Empties the persistent compilation cache main() set up, so that the next compile is cold."""
    path = jax.config.jax_compilation_cache_dir
    for name in os.listdir(path) if path else ():
        if name != ".lockfile":
            os.remove(os.path.join(path, name))


def fake_images(n, shape, classes, seed):
    """Random uint8 images whose labels a fixed random linear teacher assigns (so they can be learnt)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    teacher = np.random.default_rng(1234).standard_normal((int(np.prod(shape)), classes)).astype(np.float32)
    y = np.argmax((x.reshape(n, -1).astype(np.float32) / 255 - 0.5) @ teacher, axis=1).astype(np.int32)
    return x, y


@functools.lru_cache(maxsize=None)
def step_setup(name):
    """Model params in a TrainState, the train_step, one batch and the parameter count of a workload."""
    w = next(w for w in WORKLOADS if w["name"] == name)
    cfg = ptft_jax.defaults()
    cfg.optim.lr = w["lr"]
    model = models.build(w["model"], w["classes"])
    tx = optim.build(cfg.optim, 1000)
    params = model.init(jax.random.key(0), jnp.zeros((1, *w["shape"])), train=False)["params"]
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), {})
    train_step = make_train_step(model, tx, tasks.ImageClassification(mean=(0.5,), std=(0.25,)), 0)
    x, y = fake_images(w["batch"], w["shape"], w["classes"], 0)
    return state, train_step, {"image": jnp.asarray(x), "label": jnp.asarray(y)}, models.count_params(params)


@functools.lru_cache(maxsize=None)
def step_flops(name):
    """FLOPs of one train step from XLA's cost analysis (a scan's analysis counts its body once, so: one step)."""
    state, train_step, batch, _ = step_setup(name)
    ca = jax.jit(train_step).lower(state, batch).compile().cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca  # a list of dicts in older jax, a dict in newer
    return float(ca["flops"]) if ca and "flops" in ca else None


def run_step(w, a):
    state, train_step, batch, nparams = step_setup(w["name"])
    rows = []
    step = jax.jit(train_step, donate_argnums=0)
    held = [jax.tree.map(jnp.copy, state)]

    def calls():
        s = held[0]
        for _ in range(a["calls"]):
            s, m = step(s, batch)
        held[0] = s
        return s

    first, per = timed(calls, a["repeats"])
    rows.append(dict(impl="jax jit, 1 step/call", compile_s=first - per, steps_per_s=a["calls"] / per))
    # lax.scan over K steps per call, gathering batches from a device-resident split (the loop's fast path).
    par = Parallel()
    resident_chunk = make_chunk_fn(train_step, par)
    n = a["train_size"] or w["train_size"]
    x, y = fake_images(n, w["shape"], w["classes"], 0)
    data = {"image": par.replicate(x), "label": par.replicate(y)}
    rng = np.random.default_rng(0)
    idx = jnp.asarray(np.stack([rng.permutation(n)[:w["batch"]] for _ in range(a["scan_steps"])]).astype(np.int32))
    held = [jax.tree.map(jnp.copy, state)]

    def chunk():
        held[0], m = resident_chunk(held[0], {"data": data, "idx": idx})
        return held[0]

    first, per = timed(chunk, a["repeats"])
    rows.append(dict(impl=f"jax scan, {a['scan_steps']} steps/call", compile_s=first - per,
                     steps_per_s=a["scan_steps"] / per))
    flops = step_flops(w["name"])  # after the timed calls, so their compile times are cold
    for r in rows:
        r.update(flops_per_step=flops, analytic_flops_per_step=6 * nparams * w["batch"], params=nparams,
                 peak_bytes=peak_bytes())
    return rows, dict(batch_size=w["batch"], steps=a["calls"], repeats=a["repeats"], hidden=w["model"]["hidden"],
                      lr=w["lr"])


def train_once(w, npz, workdir, epochs, resident):
    cfg = ptft_jax.defaults()
    cfg.model = dict(w["model"])
    cfg.data.source = f"npz:{npz}"
    cfg.data.batch_size = w["batch"]
    cfg.data.device_resident = "true" if resident else "false"
    cfg.optim.lr = w["lr"]
    cfg.train.epochs = epochs
    cfg.train.log_every = 1000
    return train_timed(cfg, workdir)


def run_loop(w, a):
    epochs = a["epochs"] or w["epochs"]
    n = a["train_size"] or w["train_size"]
    steps_per_epoch = n // w["batch"]
    flops = step_flops(w["step"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="ptft_bench_") as tmp:
        npz = os.path.join(tmp, "data.npz")
        x, y = fake_images(n, w["shape"], w["classes"], 0)
        xt, yt = fake_images(a["test_size"] or w["test_size"], w["shape"], w["classes"], 1)
        np.savez(npz, x=x, y=y, x_test=xt, y_test=yt)
        for resident in (True, False):
            tag = "resident" if resident else "grain"
            # A cold 1-epoch run (imports, compiles, Orbax), then a warm 1-epoch and an E-epoch run: the loop's rate
            # is the difference, (E - 1) epochs / (t_E - t_1), each epoch with its eval and checkpoint.
            clear_compile_cache()
            _, t_cold, _ = train_once(w, npz, os.path.join(tmp, f"{tag}_cold"), 1, resident)
            _, t1, _ = train_once(w, npz, os.path.join(tmp, f"{tag}_1"), 1, resident)
            result, tn, rates = train_once(w, npz, os.path.join(tmp, f"{tag}_{epochs}"), epochs, resident)
            rate = (epochs - 1) * steps_per_epoch / (tn - t1) if tn > t1 else None  # None: lost in the noise
            rows.append(dict(impl=f"ptft_jax.train, {'device-resident' if resident else 'grain host pipeline'}",
                             compile_s=rate and t_cold - steps_per_epoch / rate, steps_per_s=rate,
                             flops_per_step=flops, peak_bytes=peak_bytes(), train_s=[t_cold, t1, tn],
                             metrics_steps_per_s=rates, whole_run_steps_per_s=epochs * steps_per_epoch / tn,
                             metrics_median_steps_per_s=statistics.median(rates) if rates else None,
                             test_accuracy=result["accuracy"]))
    return rows, dict(x=x, y=y, x_test=xt, y_test=yt, epochs=epochs, batch_size=w["batch"], lr=w["lr"],
                      hidden=w["model"]["hidden"])


T0 = time.perf_counter()


def progress(msg):
    """A timestamped progress line (flushed: the GPU run's log shows where the time goes)."""
    print(f"[{time.perf_counter() - T0:6.1f} s] {msg}", flush=True)


def sized(w, mode):
    """The workload at `mode`'s size: its own keys ("full"), updated by its `cpu` or `quick` dict (model merged)."""
    w = dict(w)
    over = {k: w.pop(k, None) for k in ("cpu", "quick")}.get(mode) or {}
    for k, v in over.items():
        w[k] = {**w[k], **v} if k == "model" else v
    w["mode"] = mode
    return w


def recipe(w):
    """The workload's recipe config (its optimiser, data and train settings) with the workload's model and dtype."""
    cfg = ptft_jax.load_config(os.path.join(ROOT, w["config"]))
    dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    cfg.model = {**cfg.model.to_dict(), **w["model"], "dtype": dtype}
    return cfg


def synthetic_batch(w, task, rng):
    """One batch as the host pipeline hands it to the step: uint8 images + int32 labels, or a masked-LM batch."""
    b = w["batch"]
    if isinstance(task, tasks.MaskedLM):
        t, p, vocab = w["seq"], w["predictions"], w["model"]["vocab_size"]
        positions = np.sort(np.argsort(rng.random((b, t - 1)), axis=1)[:, :p] + 1, axis=1)  # distinct, not [CLS]
        return {"input_ids": rng.integers(0, vocab, (b, t), dtype=np.int32),
                "token_type_ids": (np.arange(t)[None] >= t // 2).repeat(b, 0).astype(np.int32),
                "attention_mask": np.ones((b, t), np.int32),
                "masked_positions": positions.astype(np.int32),
                "masked_labels": rng.integers(0, vocab, (b, p), dtype=np.int32),
                "masked_weights": np.ones((b, p), np.float32)}
    return {"image": rng.integers(0, 256, (b, *w["shape"]), dtype=np.uint8),
            "label": rng.integers(0, w["classes"], (b,), dtype=np.int32)}


def model_setup(w):
    """(cfg, model, TrainState, train_step, batch as NumPy, parameter count, mean, std) of a model_step workload."""
    cfg = recipe(w)
    mean = tuple(cfg.data.mean or CIFAR_MEAN)
    std = tuple(cfg.data.std or CIFAR_STD)
    task = tasks.from_config(cfg)
    if isinstance(task, tasks.ImageClassification):
        task = dataclasses.replace(task, mean=mean, std=std)
    model = models.build(cfg.model, None if isinstance(task, tasks.MaskedLM) else w["classes"])
    batch = synthetic_batch(w, task, np.random.default_rng(0))
    dummy = task.inputs({k: v[:1] for k, v in batch.items()})
    variables = jax.jit(lambda key: model.init(key, dummy, train=False))(jax.random.key(0))
    params = variables["params"]
    tx = optim.build(cfg.optim, 100_000, steps_per_epoch=1_000)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params),
                       {k: v for k, v in variables.items() if k != "params"})
    train_step = make_train_step(model, tx, task, 0)
    return cfg, model, state, train_step, batch, models.count_params(params), mean, std


def xla_flops(lowered, compiled):
    """(FLOPs per step, source): the compiled executable's cost analysis, or the lowered module's where the
    compiled count misses work (e.g. library custom calls on a GPU)."""
    def get(obj):
        try:
            ca = obj.cost_analysis()
        except Exception:  # noqa: BLE001 - an analysis a backend lacks is reported as missing
            return None
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        return float(ca["flops"]) if ca and ca.get("flops") else None
    c, lo = get(compiled), get(lowered)
    if c and (not lo or c >= 0.9 * lo):
        return c, "compiled", lo
    return (lo, "lowered", c) if lo else (c, "compiled", None)


STEP_FLOPS = {}  # model_step workload name -> FLOPs per step, for its pipeline row


def run_model_step(w, a):
    progress(f"{w['name']}: setup (batch {w['batch']}, {w['mode']} size)")
    cfg, model, state, train_step, np_batch, nparams, mean, std = model_setup(w)
    dtype = cfg.model["dtype"]
    batch = jax.device_put(np_batch)
    peak0 = peak_bytes()
    t0 = time.perf_counter()
    lowered = jax.jit(train_step, donate_argnums=0).lower(state, batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    flops, source, other = xla_flops(lowered, compiled)
    STEP_FLOPS[w["name"]] = flops
    try:
        ma = compiled.memory_analysis()
        exe_bytes = ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes + \
            ma.temp_size_in_bytes
    except Exception:  # noqa: BLE001
        exe_bytes = None
    progress(f"{w['name']}: compiled in {compile_s:.1f} s; timing {w['repeats']} x {w['calls']} steps")
    held = [state, None]
    del state

    def calls():
        s = held[0]
        for _ in range(w["calls"]):
            s, m = compiled(s, batch)
        held[:] = s, m
        return s

    first, per = timed(calls, w["repeats"], w.get("warmup", 1))
    last = jax.device_get(held[1])
    peak = peak_bytes()
    row = dict(impl=f"jax jit, 1 step/call, {dtype}", compile_s=compile_s, steps_per_s=w["calls"] / per,
               first_call_s=first, steady_call_s=per, flops_per_step=flops, flops_source=source,
               flops_other_analysis=other, params=nparams, peak_bytes=peak,
               peak_set_here=bool(peak and (peak0 is None or peak > peak0)), exe_bytes=exe_bytes, dtype=dtype,
               last_loss=float(last["loss"]), last_nonfinite=int(last["nonfinite"]))
    held = batch = compiled = lowered = None  # freed (a del would leave calls()'s names undefined)
    progress(f"{w['name']}: {row['steps_per_s']:.2f} steps/s; running the peer")
    timing = dict(steps=w["calls"], repeats=w["repeats"], warmup=w.get("warmup", 1), params=nparams)
    if cfg.model["name"] == "bert_mlm":
        o = cfg.optim
        inputs = dict(batch=np_batch, size=cfg.model["size"], dims=model.dims(), vocab_size=cfg.model["vocab_size"],
                      dropout_rate=cfg.model.get("dropout_rate", 0.1), lr=o.lr, b1=o.b1, b2=o.b2, eps=o.eps,
                      weight_decay=o.weight_decay, clip_norm=o.clip_norm, **timing)
    else:
        o = cfg.optim
        inputs = dict(images=np_batch["image"], labels=np_batch["label"], block=model.block,
                      stage_sizes=tuple(model.stage_sizes), width=model.width, stem=model.stem,
                      classes=model.num_classes, zero_init_residual=model.zero_init_residual, mean=mean, std=std,
                      lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay,
                      label_smoothing=cfg.train.label_smoothing, **timing)
    return [row], inputs


def train_timed(cfg, workdir):
    """(result, wall s, train steps_per_s of each metrics.jsonl interval) of one ptft_jax.train()."""
    with open(os.path.join(workdir + ".stderr"), "w") as err, contextlib.redirect_stderr(err):
        t0 = time.perf_counter()
        result = ptft_jax.train(cfg, workdir, log=lambda *_: None)
        elapsed = time.perf_counter() - t0
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rates = [r["steps_per_s"] for r in map(json.loads, f) if r["split"] == "train"]
    return result, elapsed, rates


def run_pipeline(w, a):
    n = w["steps"]
    step_w = next(x for x in WORKLOADS if x["name"] == w["step"])
    flops = STEP_FLOPS.get(w["step"])
    if flops is None:  # its step row did not run (--only): the lowered step's count, no compile
        _, _, state, train_step, np_batch, *_ = model_setup(sized(step_w, w["mode"]))
        flops = xla_flops(jax.jit(train_step).lower(state, jax.device_put(np_batch)), None)[0]
        del state
    rows = []
    with tempfile.TemporaryDirectory(prefix="ptft_bench_") as tmp:
        npz = os.path.join(tmp, "data.npz")
        x, y = fake_images(w["train_size"], w["shape"], w["classes"], 0)
        xt, yt = fake_images(w["test_size"], w["shape"], w["classes"], 1)
        np.savez(npz, x=x, y=y, x_test=xt, y_test=yt)
        del x, y, xt, yt

        def config(steps):
            cfg = recipe(w)
            cfg.data.source = f"npz:{npz}"
            cfg.data.batch_size = w["batch"]
            cfg.data.eval_batch_size = min(cfg.data.eval_batch_size, w["test_size"])
            cfg.data.device_resident = "false"  # augmentation runs on the host in any case
            cfg.train.steps = steps
            cfg.train.log_every = w["log_every"]
            cfg.train.eval_every = steps  # the test split once, at the end; the same in every run
            cfg.train.checkpoint_every = steps
            cfg.train.steps_per_call = w["steps_per_call"]
            return cfg

        # The same run twice (the cosine schedule's length is a constant in the step, so runs of other lengths would
        # compile again): cold, then warm from the persistent compilation cache.
        progress(f"{w['name']}: cold train() of {n} steps (compiles), then a warm one")
        clear_compile_cache()
        _, t_cold, _ = train_timed(config(n), os.path.join(tmp, "cold"))
        result, t_warm, rates = train_timed(config(n), os.path.join(tmp, "warm"))
        cfg = config(n)
    # Intervals of log_every steps, each ended by a host sync; the first holds the executable's load and the
    # pipeline's start, the rest the loop's steady state.
    later = rates[1:]
    rate = len(later) * w["log_every"] / sum(w["log_every"] / r for r in later) if later else None
    rows.append(dict(impl=f"ptft_jax.train, grain host pipeline, {cfg.data.augment}, {cfg.model['dtype']}",
                     compile_s=t_cold - t_warm if t_cold > t_warm else None, steps_per_s=rate, flops_per_step=flops,
                     peak_bytes=peak_bytes(), train_s=[t_cold, t_warm], metrics_steps_per_s=rates,
                     whole_run_steps_per_s=n / t_warm,
                     metrics_median_steps_per_s=statistics.median(later) if later else None,
                     num_threads=cfg.data.num_threads, prefetch=cfg.data.prefetch,
                     steps_per_call=cfg.train.steps_per_call or "auto", test_accuracy=result["accuracy"]))
    progress(f"{w['name']}: {fmt(rate, '.2f')} steps/s")
    return rows, dict(steps=n, augment=cfg.data.augment, num_threads=cfg.data.num_threads)


def run_peer(w, inputs):
    """The workload's PyTorch peer called with the inputs its runner returned; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    module, _, name = w["peer"].partition(":")
    try:
        out = getattr(importlib.import_module(module), name)(**inputs)
    except Exception as e:  # noqa: BLE001 - a failing peer costs its row, not the run (a GPU run is paid for)
        traceback.print_exc()
        return dict(impl=f"torch peer FAILED ({type(e).__name__}: {str(e)[:200]})", steps_per_s=None, compile_s=None)
    out["impl"] += f" (torch {torch.__version__})"
    return dict(compile_s=None, **out)


RUNNERS = {"step": run_step, "loop": run_loop, "model_step": run_model_step, "pipeline": run_pipeline,
           "text_pipeline": lambda w, a: importlib.import_module("bench.text_pipeline").run_rows(w, a)}


def git_rev():
    try:
        out = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True)
        return out.stdout.strip() or None
    except OSError:
        return None


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def fmt_rate(v, spec):
    """`spec` from 100 up, three significant digits below (CPU rows of the big models run at < 1 step/s)."""
    return "-" if v is None else format(v, spec) if abs(v) >= 100 else format(v, ".3g")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats: under two minutes on 2 CPUs")
    p.add_argument("--out", default="/tmp/ptft_bench.json", help="where to write the full results as JSON")
    p.add_argument("--only", default=None, help="comma-separated workload names (default: all)")
    p.add_argument("--full_size", action="store_true",
                   help="on the CPU backend too, run the ResNet/BERT workloads at their full (GPU) batch sizes")
    args = p.parse_args(argv)
    a = QUICK if args.quick else FULL
    names = [w["name"] for w in WORKLOADS]
    unknown = [n for n in (args.only or "").split(",") if n and n not in names]
    if unknown:
        p.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    # A fresh persistent compilation cache: the first train() of a loop row compiles cold, the later ones load
    # its executables, so their difference in wall time is training, eval and checkpoints, not compile noise.
    cache = tempfile.mkdtemp(prefix="ptft_bench_cache_")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    load = os.getloadavg()[0]
    # The MFU denominator: float32 2048^2 on CPU, bfloat16 8192^2 on an accelerator (float32 there as well, for
    # reference, since the MLP computes in float32).
    cpu = jax.default_backend() == "cpu"
    mode = "quick" if args.quick else "cpu" if cpu and not args.full_size else "full"
    matmul = "float32 2048x2048" if cpu else "bfloat16 8192x8192"
    rate = matmul_rate(jnp.float32, 2048, a["repeats"]) if cpu else matmul_rate(jnp.bfloat16, 8192, a["repeats"])
    f32 = rate if cpu else matmul_rate(jnp.float32, 8192, a["repeats"])
    dev = jax.devices()[0]
    header = dict(date=datetime.date.today().isoformat(), jax=jax.__version__, backend=jax.default_backend(),
                  device_kind=dev.device_kind, devices=jax.device_count(), matmul=matmul, matmul_flops_per_s=rate,
                  float32_matmul_flops_per_s=f32, quick=args.quick, mode=mode, cpus=os.cpu_count(),
                  load_avg_1min_at_start=load,
                  OPENBLAS_CORETYPE=os.environ.get("OPENBLAS_CORETYPE"), git=git_rev())
    print(f"# {header['date']} | jax {jax.__version__} | backend {header['backend']} | {header['devices']} x "
          f"{dev.device_kind} | {os.cpu_count()} CPUs, load {load:.2f} | matmul {matmul}: {rate / 1e9:.1f} GFLOP/s"
          f"{'' if cpu else f' (float32 8192x8192: {f32 / 1e9:.1f})'}"
          f" | git {header['git']} | sizes: {mode}", flush=True)
    rows, notes = [], []
    for w in WORKLOADS:
        if args.only and w["name"] not in args.only.split(","):
            continue
        w = sized(w, mode)
        progress(f"{w['name']} ({w['kind']})")
        try:
            mine, inputs = RUNNERS[w["kind"]](w, a)
        except ptft_jax.Interrupted:  # SIGTERM/SIGINT inside train(): stop the benchmark, not just this row
            raise
        except Exception as e:  # noqa: BLE001 - one failing workload (e.g. out of memory) costs its rows only
            traceback.print_exc()
            notes.append(f"{w['name']}: FAILED ({type(e).__name__}: {str(e)[:300]})")
            continue
        peer = run_peer(w, inputs) if w.get("peer") else None
        no_peer = "torch not installed" if w.get("peer") else "-"
        for r in mine + ([peer] if peer else []):
            sps, flops = r["steps_per_s"], r.get("flops_per_step") or mine[0]["flops_per_step"]
            r.update(workload=w["name"], batch=w["batch"], examples_per_s=sps and sps * w["batch"],
                     mfu=sps and flops and flops * sps / rate,
                     ratio_vs_peer=(sps and peer["steps_per_s"] and sps / peer["steps_per_s"]) if peer else no_peer)
            rows.append(r)
        m = mine[0]
        full = next(x for x in WORKLOADS if x["name"] == w["name"])
        same = all(w.get(k) == full.get(k) for k in ("batch", "shape", "seq", "classes", "model"))
        reduced = "" if same else f"; REDUCED for {mode} (full size: batch {full['batch']})"
        if w["kind"] == "pipeline":
            step_rows = [r for r in rows if r["workload"] == w["step"] and r["impl"].startswith("jax")]
            if step_rows and m["steps_per_s"]:  # examples/s: the CPU sizes run the two at different batches
                m["ratio_vs_synthetic_step"] = m["examples_per_s"] / step_rows[0]["examples_per_s"]
                same = step_rows[0]["batch"] == w["batch"]
                m["ratio_vs_peer"] = f"{m['ratio_vs_synthetic_step']:.2f}x of {w['step']} jax" + (
                    "" if same else f" (examples/s, batch {w['batch']} vs {step_rows[0]['batch']})")
            notes.append(f"{w['name']}: ptft_jax.train() of the {w['config'].split('/')[-1]} recipe (optimiser, "
                         f"{inputs['augment']}) on generated npz data of {w['train_size']:,} {w['shape']} uint8 "
                         f"images, batch {w['batch']}{reduced}, grain with {inputs['num_threads']} threads, "
                         f"{m['steps_per_call']} steps per call, {inputs['steps']} steps, one eval of "
                         f"{w['test_size']:,} images and one checkpoint at the end; steps/s = the warm run's "
                         f"metrics.jsonl intervals of {w['log_every']} steps after the first, pooled (median "
                         f"{fmt(m['metrics_median_steps_per_s'], '.2f')}; the whole warm call "
                         f"{m['whole_run_steps_per_s']:.2f}); compile s = cold train() s - warm train() s "
                         f"({', '.join(f'{t:.2f}' for t in m['train_s'])}); real/synthetic: "
                         f"{fmt(m.get('ratio_vs_synthetic_step'), '.2f')} (the ratio column)")
        elif w["kind"] == "model_step":
            shape = (f"{w['seq']} tokens, {w['predictions']} predictions" if "seq" in w
                     else "x".join(map(str, w["shape"])))
            notes.append(f"{w['name']}: batch {w['batch']} x {shape}{reduced}; model {w['model']}; compute "
                         f"{m['dtype']}; {m['params']:,} params; XLA {m['flops_per_step'] / w['batch'] / 1e9:.3f} "
                         f"GFLOP per example per step ({m['flops_source']} cost analysis); compile s = lower + compile "
                         f"of the donated step; {w['repeats']} repeats of {w['calls']} steps after "
                         f"{w.get('warmup', 1)} "
                         f"warm-up call(s); executable memory (arguments + outputs - aliased + temp) "
                         f"{fmt(m['exe_bytes'] and m['exe_bytes'] / 2**20, ',.0f')} MiB; last loss "
                         f"{m['last_loss']:.3f}" + (f"; peer: {peer['impl']}, {peer['params']:,} params"
                                                    if peer and peer.get("params") else ""))
        elif w["kind"] == "text_pipeline":
            notes.append(inputs["note"])
        elif w["kind"] == "step":
            notes.append(f"{w['name']}: FLOPs/step {m['flops_per_step'] / 1e6:.1f} M from XLA's cost analysis, "
                         f"analytic 2*3*{m['params']:,}*{w['batch']} = {m['analytic_flops_per_step'] / 1e6:.1f} M "
                         f"(the analytic count includes the first layer's input gradient, never computed); MFU "
                         f"uses XLA's count for every row")
        else:
            notes.append(f"{w['name']}: steps/s = ({inputs['epochs']} - 1) epochs / (t_{inputs['epochs']} - t_1) of "
                         f"warm train() runs, each epoch with its eval and checkpoint; compile s = the cold 1-epoch "
                         f"train() (compiles, data load, Orbax) less one epoch at that rate; torch: epochs 2..E")
            for r in mine:
                notes.append(f"{w['name']} / {r['impl']}: metrics.jsonl steps_per_s median "
                             f"{fmt(r['metrics_median_steps_per_s'], '.1f')} over {len(r['metrics_steps_per_s'])} "
                             f"intervals; train() s (cold 1 ep, warm 1 ep, {inputs['epochs']} ep): "
                             f"{', '.join(f'{t:.2f}' for t in r['train_s'])}; test accuracy {r['test_accuracy']:.3f}")
    print("\n| workload | impl | compile s | steps/s | examples/s | peak mem | MFU % | ratio vs peer |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        mem = f"{r['peak_bytes'] / 2**20:,.0f} MiB" if r.get("peak_bytes") else "n/a"
        if r.get("peak_set_here") is False and r.get("peak_bytes"):
            mem = "<= " + mem  # the process's high-water mark was set by an earlier row
        ratio = r["ratio_vs_peer"]
        ratio = ratio if isinstance(ratio, str) else f"{ratio:.2f}x" if ratio else "-"
        print(f"| {r['workload']} | {r['impl']} | {fmt(r['compile_s'], '.2f')} | {fmt_rate(r['steps_per_s'], '.1f')} | "
              f"{fmt_rate(r['examples_per_s'], ',.0f')} | {mem} | {fmt(r['mfu'] and 100 * r['mfu'], '.1f')} | "
              f"{ratio} |")
    notes.append("peak mem: jax memory_stats() peak_bytes_in_use, the process's high-water mark ('<=': an earlier "
                 "row set it), torch.cuda.max_memory_allocated() for torch rows; n/a on CPU")
    print("\n" + "\n".join(f"- {n}" for n in notes))
    with open(args.out, "w") as f:
        json.dump(dict(header=header, rows=rows, notes=notes), f, indent=2, default=str)
    shutil.rmtree(cache, ignore_errors=True)
    print(f"\nresults: {args.out} (load average at the end {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
