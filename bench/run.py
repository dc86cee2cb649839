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
import statistics
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
    dict(name="mlp_loop", kind="loop", peer="bench.peers.torch_mlp:loop", epochs=10, **MLP),
]
FULL = dict(repeats=7, calls=50, scan_steps=100, epochs=None, train_size=None)
QUICK = dict(repeats=3, calls=20, scan_steps=20, epochs=2, train_size=12_000)


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


def matmul_rate(repeats):
    """FLOP/s of one jitted a @ b: float32 2048^2 on CPU, bfloat16 8192^2 on an accelerator."""
    cpu = jax.default_backend() == "cpu"
    n, dtype = (2048, jnp.float32) if cpu else (8192, jnp.bfloat16)
    a, b = (jax.random.normal(jax.random.key(i), (n, n), dtype) for i in (1, 2))
    f = jax.jit(jnp.matmul)
    _, t = timed(lambda: f(a, b), max(repeats, 5))
    return 2 * n ** 3 / t, f"{jnp.dtype(dtype).name} {n}x{n}"


def peak_bytes():
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def xla_flops(compiled):
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float(ca["flops"]) if ca and "flops" in ca else None


def fake_images(n, shape, classes, seed):
    """Random uint8 images whose labels a fixed random linear teacher assigns (so they can be learnt)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    teacher = np.random.default_rng(1234).standard_normal((int(np.prod(shape)), classes)).astype(np.float32)
    y = np.argmax((x.reshape(n, -1).astype(np.float32) / 255 - 0.5) @ teacher, axis=1).astype(np.int32)
    return x, y


@functools.lru_cache(maxsize=None)
def step_setup(name):
    """Model, state, train_step, a batch, XLA's FLOPs per step and the analytic 6*params*batch of a workload."""
    w = next(w for w in WORKLOADS if w["name"] == name)
    cfg = ptft_jax.defaults()
    cfg.optim.lr = w["lr"]
    model = models.build(w["model"], w["classes"])
    tx = optim.build(cfg.optim, 1000)
    params = model.init(jax.random.key(0), jnp.zeros((1, *w["shape"])), train=False)["params"]
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), {})
    train_step = make_train_step(model, tx, (0.5,), (0.25,), 0)
    x, y = fake_images(w["batch"], w["shape"], w["classes"], 0)
    batch = {"image": jnp.asarray(x), "label": jnp.asarray(y)}
    flops = xla_flops(jax.jit(train_step).lower(state, batch).compile())
    nparams = models.count_params(params)
    return w, state, train_step, batch, flops, 6 * nparams * w["batch"], nparams


def run_step(w, a):
    _, state, train_step, batch, flops, analytic, nparams = step_setup(w["name"])
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
    for r in rows:
        r.update(flops_per_step=flops, analytic_flops_per_step=analytic, params=nparams, peak_bytes=peak_bytes())
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
    flops = step_setup(w["name"].replace("_loop", "_step"))[4]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ptft_bench_") as tmp:
        npz = os.path.join(tmp, "data.npz")
        x, y = fake_images(n, w["shape"], w["classes"], 0)
        xt, yt = fake_images(w["test_size"], w["shape"], w["classes"], 1)
        np.savez(npz, x=x, y=y, x_test=xt, y_test=yt)
        for resident in (True, False):
            tag = "resident" if resident else "grain"
            # A cold 1-epoch run (imports, compiles, Orbax), then a warm 1-epoch and an E-epoch run: the loop's rate
            # is the difference, (E - 1) epochs / (t_E - t_1), each epoch with its eval and checkpoint.
            _, t_cold, _ = train_once(w, npz, os.path.join(tmp, f"{tag}_cold"), 1, resident)
            _, t1, _ = train_once(w, npz, os.path.join(tmp, f"{tag}_1"), 1, resident)
            result, tn, rates = train_once(w, npz, os.path.join(tmp, f"{tag}_{epochs}"), epochs, resident)
            rate = (epochs - 1) * steps_per_epoch / (tn - t1)
            rows.append(dict(impl=f"ptft_jax.train, {'device-resident' if resident else 'grain host pipeline'}",
                             compile_s=t_cold - steps_per_epoch / rate, steps_per_s=rate, flops_per_step=flops,
                             peak_bytes=peak_bytes(), train_s=[t_cold, t1, tn], metrics_steps_per_s=rates,
                             metrics_median_steps_per_s=statistics.median(rates) if rates else None,
                             test_accuracy=result["accuracy"]))
    return rows, dict(x=x, y=y, x_test=xt, y_test=yt, epochs=epochs, batch_size=w["batch"], lr=w["lr"],
                      hidden=w["model"]["hidden"])


def run_peer(w, a, inputs):
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    module, _, fn = w["peer"].partition(":")
    fn = getattr(importlib.import_module(module), fn)
    if w["kind"] == "step":
        out = fn(batch_size=inputs["batch_size"], steps=inputs["steps"], repeats=inputs["repeats"],
                 lr=inputs["lr"], hidden=inputs["hidden"])
        impl = "torch eager, fixed batch"
    else:
        out = fn(inputs["x"], inputs["y"], inputs["x_test"], inputs["y_test"], epochs=inputs["epochs"],
                 batch_size=inputs["batch_size"], lr=inputs["lr"], hidden=inputs["hidden"])
        impl = "torch DataLoader loop"
    import torch
    return dict(impl=f"{impl} (torch {torch.__version__})", compile_s=None, **out)


RUNNERS = {"step": run_step, "loop": run_loop}


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats: under two minutes on 2 CPUs")
    p.add_argument("--out", default="/tmp/ptft_bench.json", help="where to write the full results as JSON")
    p.add_argument("--only", default=None, help="comma-separated workload names (default: all)")
    args = p.parse_args(argv)
    a = QUICK if args.quick else FULL
    rate, matmul = matmul_rate(a["repeats"])
    dev = jax.devices()[0]
    header = dict(date=datetime.date.today().isoformat(), jax=jax.__version__, backend=jax.default_backend(),
                  device_kind=dev.device_kind, devices=jax.device_count(), matmul=matmul, matmul_flops_per_s=rate,
                  quick=args.quick, cpus=os.cpu_count(), OPENBLAS_CORETYPE=os.environ.get("OPENBLAS_CORETYPE"))
    print(f"# {header['date']} | jax {jax.__version__} | backend {header['backend']} | {header['devices']} x "
          f"{dev.device_kind} | {os.cpu_count()} CPUs | matmul {matmul}: {rate / 1e9:.1f} GFLOP/s"
          f"{' | --quick' if args.quick else ''}", flush=True)
    rows, notes = [], []
    for w in WORKLOADS:
        if args.only and w["name"] not in args.only.split(","):
            continue
        mine, inputs = RUNNERS[w["kind"]](w, a)
        peer = run_peer(w, a, inputs)
        for r in mine + ([peer] if peer else []):
            r["workload"] = w["name"]
            r["examples_per_s"] = r["steps_per_s"] * w["batch"]
            flops = r.get("flops_per_step") or mine[0]["flops_per_step"]
            r["mfu"] = flops * r["steps_per_s"] / rate if flops else None
            r["ratio_vs_peer"] = (r["steps_per_s"] / peer["steps_per_s"]) if peer else "torch not installed"
            rows.append(r)
        m = mine[0]
        if w["kind"] == "step":
            notes.append(f"{w['name']}: FLOPs/step {m['flops_per_step'] / 1e6:.1f} M from XLA's cost analysis, "
                         f"analytic 2*3*{m['params']:,}*{w['batch']} = {m['analytic_flops_per_step'] / 1e6:.1f} M "
                         f"(the analytic count includes the first layer's input gradient, never computed); MFU "
                         f"uses XLA's count for every row")
        else:
            for r in mine:
                notes.append(f"{w['name']} / {r['impl']}: metrics.jsonl steps_per_s median "
                             f"{fmt(r['metrics_median_steps_per_s'], '.1f')} over {len(r['metrics_steps_per_s'])} "
                             f"intervals; train() s (cold 1 ep, warm 1 ep, {inputs['epochs']} ep): "
                             f"{', '.join(f'{t:.2f}' for t in r['train_s'])}; test accuracy {r['test_accuracy']:.3f}")
    print("\n| workload | impl | compile s | steps/s | examples/s | peak mem | MFU % | ratio vs peer |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        mem = f"{r['peak_bytes'] / 2**20:.0f} MiB" if r.get("peak_bytes") else "n/a"
        ratio = r["ratio_vs_peer"] if isinstance(r["ratio_vs_peer"], str) else f"{r['ratio_vs_peer']:.2f}x"
        print(f"| {r['workload']} | {r['impl']} | {fmt(r['compile_s'], '.2f')} | {r['steps_per_s']:.1f} | "
              f"{r['examples_per_s']:,.0f} | {mem} | {fmt(r['mfu'] and 100 * r['mfu'], '.1f')} | {ratio} |")
    print("\n" + "\n".join(f"- {n}" for n in notes))
    with open(args.out, "w") as f:
        json.dump(dict(header=header, rows=rows, notes=notes), f, indent=2, default=str)
    print(f"\nresults: {args.out}")


if __name__ == "__main__":
    main()
