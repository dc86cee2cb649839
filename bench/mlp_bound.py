"""What bounds the seed MLP's step: `python -m bench.mlp_bound [--rounds N]`.

Times, interleaved round by round (so that a noisy neighbour hits every row alike), on a device-resident split
with lax.scan over 100 steps a call as the loop does:
  step      ptft_jax's train step (forward, backward, SGD, the non-finite guard)
  matmuls   the same scan doing only the step's six matmuls (forward x3, the two input gradients it needs, weight
            gradients x3) and the weight update: the bound that XLA's matmul kernels put on the step
and each of the two big matmuls (79% of the FLOPs) alone in a scan: the first layer's forward x @ W [256,784]x[784,256]
and its weight gradient x^T @ dy [784,256]x[256,256], in XLA and (if importable) in PyTorch.
Rates are against the float32 2048x2048 matmul measured in the same run (python -m bench's MFU denominator).
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench.run import fake_images, matmul_rate, step_flops, step_setup
from ptft_jax.parallel import Parallel
from ptft_jax.step import TrainState, make_chunk_fn

K = 100  # steps per call
BIG = 2 * 256 * 784 * 256  # FLOPs of each of the two big matmuls


def matmuls_only(state, batch):
    """The step's matmuls, nothing else that costs: what the step could run at if everything else were free."""
    p = state.params
    x = batch["image"].reshape(batch["image"].shape[0], -1).astype(jnp.float32)
    w0, w1, w2 = p["dense_0"]["kernel"], p["dense_1"]["kernel"], p["head"]["kernel"]
    h1 = x @ w0
    h2 = h1 @ w1
    out = h2 @ w2
    d2 = out @ w2.T
    d1 = d2 @ w1.T
    grads = (x.T @ d1, h1.T @ d2, h2.T @ out)
    new = dict(p)
    for name, g in zip(("dense_0", "dense_1", "head"), grads):
        new[name] = dict(p[name], kernel=p[name]["kernel"] - 1e-9 * g)
    return TrainState(state.step + 1, new, state.opt_state, state.model_state), {"loss": out[0, 0]}


def big_matmul_scans():
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.standard_normal((K, 256, 784), np.float32))
    ds = jnp.asarray(rng.standard_normal((K, 256, 256), np.float32))
    w = jnp.asarray(rng.standard_normal((784, 256), np.float32) * 0.01)

    @jax.jit
    def forward(w, xs):
        return jax.lax.scan(lambda c, x: (c + x @ w, None), jnp.zeros((256, 256)), xs)[0]

    @jax.jit
    def weight_grad(w, xs, ds):
        return jax.lax.scan(lambda c, xd: (c + xd[0].T @ xd[1], None), w, (xs, ds))[0]

    return {"jax: x @ W, scanned": lambda: forward(w, xs).block_until_ready(),
            "jax: x^T @ dy, scanned": lambda: weight_grad(w, xs, ds).block_until_ready()}


def torch_matmuls():
    try:
        import torch
    except ImportError:
        return {}
    x, d, w = torch.randn(256, 784), torch.randn(256, 256), torch.randn(784, 256)
    c1, c2 = torch.zeros(256, 256), torch.zeros(784, 256)

    def loop(fn):
        def run():
            for _ in range(K):
                fn()
        return run

    ver = torch.__version__
    return {f"torch {ver}: x @ W": loop(lambda: c1.add_(x @ w)),
            f"torch {ver}: x^T @ dy": loop(lambda: c2.add_(x.T @ d))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=12)
    args = p.parse_args(argv)
    rate = matmul_rate(jnp.float32, 2048, 7)
    state, train_step, _, _ = step_setup("mlp_step")
    step_f = step_flops("mlp_step")
    matmul_f = (2 * 256 * (784 * 256 + 256 * 128 + 128 * 10)  # forward
                + 2 * 256 * (10 * 128 + 128 * 256)            # input gradients of layers 2 and 3
                + 2 * 256 * (784 * 256 + 256 * 128 + 128 * 10))  # weight gradients
    par = Parallel()
    x, y = fake_images(60_000, (28, 28, 1), 10, 0)
    data = {"image": par.replicate(x), "label": par.replicate(y)}
    idx = jnp.asarray(np.stack([np.random.default_rng(i).permutation(60_000)[:256] for i in range(K)]).astype(np.int32))

    def chunk(step):
        resident = make_chunk_fn(step, par)
        held = [jax.tree.map(jnp.copy, state)]

        def run():
            held[0], _ = resident(held[0], {"data": data, "idx": idx})
            jax.block_until_ready(held[0])
        return run

    rows = {"ptft_jax train step, scanned": (chunk(train_step), step_f),
            "its six matmuls + update only, scanned": (chunk(matmuls_only), matmul_f)}
    rows.update({k: (v, BIG) for k, v in big_matmul_scans().items()})
    # PyTorch's rows in a phase of their own: its OpenMP threads keep spinning after each call and would slow
    # whatever XLA runs next (interleaved with them, every row here ran 2-5x slower).
    phases = [rows, {k: (v, BIG) for k, v in torch_matmuls().items()}]
    times = {}
    for phase in phases:
        for fn, _ in phase.values():
            fn()  # compile / warm up
        times.update({k: [] for k in phase})
        for _ in range(args.rounds):
            for k, (fn, _) in phase.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    rows.update(phases[1])
    print(f"float32 2048x2048 matmul: {rate / 1e9:.1f} GFLOP/s | {args.rounds} interleaved rounds of {K} steps/calls\n")
    print("| row | FLOPs per step/call | per s | GFLOP/s | of the 2048 rate |")
    print("| --- | --- | --- | --- | --- |")
    for k, (_, flops) in rows.items():
        t = statistics.median(times[k]) / K
        print(f"| {k} | {flops / 1e6:.1f} M | {1 / t:,.0f} | {flops / t / 1e9:.1f} | {flops / t / rate:.0%} |")


if __name__ == "__main__":
    main()
