"""What fine-tuning on a budget saves, compile only: BERT-base classification (batch 32 x 128, AdamW) and
ResNet-50 (batch 64 x 224, SGD momentum 0.9), one row per strategy: full, full + train.remat, full +
train.grad_accum 4, linear_probe, bitfit. For each: the parameters trained, the optimiser state's bytes, XLA's
memory analysis of the compiled train step (arguments, outputs, temporaries) and the checkpoint's bytes (the
TrainState: params + opt_state + model_state). No step runs and no data is read: the step is lowered on
`jax.ShapeDtypeStruct` inputs and compiled for the local backend (on CPU, XLA's scheduler may not honour remat's
recomputation the way the GPU one does: read the temporaries of a CPU table with that in mind).

    python -m bench.finetune_memory [--models bert,resnet]
"""
from __future__ import annotations

import argparse
import datetime
import time

import jax
import jax.numpy as jnp
import ml_collections

from ptft_jax import models, optim, tasks
from ptft_jax.config import defaults
from ptft_jax.step import TrainState, make_train_step, memory_bytes

ROWS = [("full", {}), ("full + remat", {"remat": True}), ("full + grad_accum 4", {"grad_accum": 4}),
        ("linear_probe", {"strategy": "linear_probe"}), ("bitfit", {"strategy": "bitfit"})]


def _bert():
    b, t = 32, 128
    batch = {k: jax.ShapeDtypeStruct((b, t), jnp.int32) for k in ("input_ids", "token_type_ids", "attention_mask")}
    batch["label"] = jax.ShapeDtypeStruct((b,), jnp.int32)
    x0 = {k: jnp.zeros((1, t), jnp.int32) for k in ("input_ids", "token_type_ids", "attention_mask")}
    return ("BERT-base, batch 32 x 128, AdamW", dict(name="bert", size="base"), 2, tasks.TextClassification(), batch,
            x0, dict(name="adamw", lr=2e-5, weight_decay=0.01))


def _resnet():
    b, s = 64, 224
    batch = {"image": jax.ShapeDtypeStruct((b, s, s, 3), jnp.uint8), "label": jax.ShapeDtypeStruct((b,), jnp.int32)}
    return ("ResNet-50, batch 64 x 224, SGD momentum", dict(name="resnet50"), 1000,
            tasks.ImageClassification(mean=(0.5,) * 3, std=(0.25,) * 3), batch, jnp.zeros((1, s, s, 3)),
            dict(name="sgd", lr=0.1, momentum=0.9))


def _nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def measure(model_cfg, classes, task, batch, x0, optim_kw, strategy="full", remat=False, grad_accum=1) -> dict:
    model = models.build(model_cfg, classes, remat=remat)
    variables = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x0))
    params = variables["params"]
    finetune = ml_collections.ConfigDict({**defaults().finetune.to_dict(), "strategy": strategy})
    cfg = ml_collections.ConfigDict({**defaults().optim.to_dict(), **optim_kw})
    tx = optim.build(cfg, total_steps=1000, finetune=finetune, params=params)
    opt_state = jax.eval_shape(tx.init, params)
    state = TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, opt_state,
                       {k: v for k, v in variables.items() if k != "params"})
    step = jax.jit(make_train_step(model, tx, task, 0, grad_accum=grad_accum,
                                   trainable=optim.trainable(params, strategy)), donate_argnums=(0,))
    t = time.perf_counter()
    m = memory_bytes(step.lower(state, batch).compile())
    return {"trained": optim.count_trainable(params, strategy), "opt_state": _nbytes(opt_state),
            "checkpoint": _nbytes(state), "compile_s": time.perf_counter() - t, **(m or {})}


def _mb(n) -> str:
    return f"{n / 2**20:,.1f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="bert,resnet", help="comma-separated: bert, resnet")
    args = p.parse_args(argv)
    print(f"{datetime.date.today()}, {jax.devices()[0].device_kind} ({jax.default_backend()}), compile only\n")
    for which in args.models.split(","):
        title, model_cfg, classes, task, batch, x0, optim_kw = {"bert": _bert, "resnet": _resnet}[which]()
        print(f"### {title}\n")
        print("| strategy | params trained | opt state MB | step args MB | step outputs MB | step temps MB | "
              "checkpoint MB | compile s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, kw in ROWS:
            r = measure(model_cfg, classes, task, batch, x0, optim_kw, **kw)
            print(f"| {name} | {r['trained']:,} | {_mb(r['opt_state'])} | {_mb(r['arguments'])} | "
                  f"{_mb(r['outputs'])} | {_mb(r['temporaries'])} | {_mb(r['checkpoint'])} | {r['compile_s']:.0f} |",
                  flush=True)
        print()


if __name__ == "__main__":
    main()
