"""Times the training of ptft_jax's models against plain PyTorch peers: `python -m bench [--quick] [--out PATH]`.

Each workload is a row of WORKLOADS; its `kind` picks the runner ("step": the jitted step alone, one step per
call and a lax.scan of K steps per call; "loop": ptft_jax.train() itself, device-resident and grain pipelines)
and `peer` names the PyTorch function it is compared with. Rates are medians over repeats after a warm-up.
"""
from __future__ import annotations

import argparse
import contextlib
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `python bench/run.py` puts bench/ first on the path, not the repo root
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import ptft_jax  # noqa: E402
from ptft_jax import models, optim  # noqa: E402
from ptft_jax.parallel import Parallel  # noqa: E402
from ptft_jax.step import TrainState, make_chunk_fns, make_train_step  # noqa: E402

MLP = dict(model=dict(name="mlp", hidden=(256, 128)), shape=(28, 28, 1), classes=10, batch=256, lr=0.01,
           train_size=60_000, test_size=10_000)
WORKLOADS = [
    dict(name="mlp_step", kind="step", peer="bench.peers.torch_mlp:step", **MLP),
    dict(name="mlp_loop", kind="loop", peer="bench.peers.torch_mlp:loop", epochs=10, step="mlp_step", **MLP),
]
FULL = dict(repeats=7, calls=50, scan_steps=100, epochs=None, train_size=None, test_size=None)
QUICK = dict(repeats=3, calls=20, scan_steps=20, epochs=5, train_size=12_000, test_size=2_000)


def timed(fn, repeats):
    """(first call s, median steady call s): one call, one warm-up call, then `repeats` timed calls."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
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
    train_step = make_train_step(model, tx, (0.5,), (0.25,), 0)
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
    _, resident_chunk = make_chunk_fns(train_step, par)
    n = a["train_size"] or w["train_size"]
    x, y = fake_images(n, w["shape"], w["classes"], 0)
    data = {"image": par.replicate(x), "label": par.replicate(y)}
    rng = np.random.default_rng(0)
    idx = jnp.asarray(np.stack([rng.permutation(n)[:w["batch"]] for _ in range(a["scan_steps"])]).astype(np.int32))
    held = [jax.tree.map(jnp.copy, state)]

    def chunk():
        held[0], m = resident_chunk(held[0], data, idx)
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
    with open(os.path.join(workdir + ".stderr"), "w") as err, contextlib.redirect_stderr(err):
        t0 = time.perf_counter()
        result = ptft_jax.train(cfg, workdir, log=lambda *_: None)
        elapsed = time.perf_counter() - t0
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rates = [r["steps_per_s"] for r in map(json.loads, f) if r["split"] == "train"]
    return result, elapsed, rates


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


def run_peer(w, inputs):
    """The workload's PyTorch peer called with the inputs its runner returned; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    module, _, name = w["peer"].partition(":")
    out = getattr(importlib.import_module(module), name)(**inputs)
    out["impl"] += f" (torch {torch.__version__})"
    return dict(compile_s=None, **out)


RUNNERS = {"step": run_step, "loop": run_loop}


def git_rev():
    try:
        out = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True)
        return out.stdout.strip() or None
    except OSError:
        return None


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats: under two minutes on 2 CPUs")
    p.add_argument("--out", default="/tmp/ptft_bench.json", help="where to write the full results as JSON")
    p.add_argument("--only", default=None, help="comma-separated workload names (default: all)")
    args = p.parse_args(argv)
    a = QUICK if args.quick else FULL
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
    matmul = "float32 2048x2048" if cpu else "bfloat16 8192x8192"
    rate = matmul_rate(jnp.float32, 2048, a["repeats"]) if cpu else matmul_rate(jnp.bfloat16, 8192, a["repeats"])
    f32 = rate if cpu else matmul_rate(jnp.float32, 8192, a["repeats"])
    dev = jax.devices()[0]
    header = dict(date=datetime.date.today().isoformat(), jax=jax.__version__, backend=jax.default_backend(),
                  device_kind=dev.device_kind, devices=jax.device_count(), matmul=matmul, matmul_flops_per_s=rate,
                  float32_matmul_flops_per_s=f32, quick=args.quick, cpus=os.cpu_count(), load_avg_1min_at_start=load,
                  OPENBLAS_CORETYPE=os.environ.get("OPENBLAS_CORETYPE"), git=git_rev())
    print(f"# {header['date']} | jax {jax.__version__} | backend {header['backend']} | {header['devices']} x "
          f"{dev.device_kind} | {os.cpu_count()} CPUs, load {load:.2f} | matmul {matmul}: {rate / 1e9:.1f} GFLOP/s"
          f"{'' if cpu else f' (float32 8192x8192: {f32 / 1e9:.1f})'}"
          f" | git {header['git']}{' | --quick' if args.quick else ''}", flush=True)
    rows, notes = [], []
    for w in WORKLOADS:
        if args.only and w["name"] not in args.only.split(","):
            continue
        mine, inputs = RUNNERS[w["kind"]](w, a)
        peer = run_peer(w, inputs)
        for r in mine + ([peer] if peer else []):
            sps, flops = r["steps_per_s"], r.get("flops_per_step") or mine[0]["flops_per_step"]
            r.update(workload=w["name"], examples_per_s=sps and sps * w["batch"],
                     mfu=sps and flops and flops * sps / rate,
                     ratio_vs_peer=(sps and sps / peer["steps_per_s"]) if peer else "torch not installed")
            rows.append(r)
        m = mine[0]
        if w["kind"] == "step":
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
        mem = f"{r['peak_bytes'] / 2**20:.0f} MiB" if r.get("peak_bytes") else "n/a"
        ratio = r["ratio_vs_peer"]
        ratio = ratio if isinstance(ratio, str) else f"{ratio:.2f}x" if ratio else "-"
        print(f"| {r['workload']} | {r['impl']} | {fmt(r['compile_s'], '.2f')} | {fmt(r['steps_per_s'], '.1f')} | "
              f"{fmt(r['examples_per_s'], ',.0f')} | {mem} | {fmt(r['mfu'] and 100 * r['mfu'], '.1f')} | {ratio} |")
    print("\n" + "\n".join(f"- {n}" for n in notes))
    with open(args.out, "w") as f:
        json.dump(dict(header=header, rows=rows, notes=notes), f, indent=2, default=str)
    shutil.rmtree(cache, ignore_errors=True)
    print(f"\nresults: {args.out} (load average at the end {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
