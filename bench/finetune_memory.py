"""What fine-tuning on a budget saves, compile only: BERT-base classification (batch 32 x 128, AdamW) and
ResNet-50 (batch 64 x 224, SGD momentum 0.9), one row per strategy: full, full + train.remat, full +
train.grad_accum 4, linear_probe, bitfit, lora r=8 (the model's default targets: BERT's query, value and MLP
kernels, every ResNet convolution). For each: the parameters trained, the optimiser state's bytes, XLA's
memory analysis of the compiled train step (arguments, outputs, temporaries) and the checkpoint's bytes (the
TrainState: params + opt_state + model_state; for lora r=8, the factors and the head: the frozen base is re-read
from init_from). No step runs and no data is read: the step is lowered on
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

from ptft_jax import lora, models, optim, tasks
from ptft_jax.config import defaults
from ptft_jax.step import TrainState, make_train_step, memory_bytes

ROWS = [("full", {}), ("full + remat", {"remat": True}), ("full + grad_accum 4", {"grad_accum": 4}),
        ("linear_probe", {"strategy": "linear_probe"}), ("bitfit", {"strategy": "bitfit"}),
        ("lora r=8", {"strategy": "lora"}), ("lora r=8 + remat", {"strategy": "lora", "remat": True})]


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
    frozen = None
    if strategy == "lora":  # as from a published checkpoint: every leaf but the head loaded, so frozen
        loaded = set(lora.flat(params))
        params, frozen = jax.eval_shape(lambda p: lora.split(p, loaded, finetune, model_cfg["name"], 0), params)
    opt_state = jax.eval_shape(tx.init, params)
    state = TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, opt_state,
                       {k: v for k, v in variables.items() if k != "params"}, frozen)
    step = jax.jit(make_train_step(model, tx, task, 0, grad_accum=grad_accum,
                                   trainable=optim.trainable(params, strategy)), donate_argnums=(0,))
    t = time.perf_counter()
    m = memory_bytes(step.lower(state, batch).compile())
    return {"trained": optim.count_trainable(params, strategy), "opt_state": _nbytes(opt_state),
            "params": models.count_params(params) + (0 if frozen is None else lora.count(frozen)),
            "checkpoint": _nbytes(state.replace(frozen=None)), "compile_s": time.perf_counter() - t, **(m or {})}


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
        results = {}
        for name, kw in ROWS:
            r = results[name] = measure(model_cfg, classes, task, batch, x0, optim_kw, **kw)
            print(f"| {name} | {r['trained']:,} | {_mb(r['opt_state'])} | {_mb(r['arguments'])} | "
                  f"{_mb(r['outputs'])} | {_mb(r['temporaries'])} | {_mb(r['checkpoint'])} | {r['compile_s']:.0f} |",
                  flush=True)
        print()
        if which == "bert":  # the targets are BERT-base's
            print(lora_targets(results))
            print()


def lora_targets(results) -> str:
    """Issue 15's LoRA targets as fractions of full fine-tuning's: params trained (<= 1.5%), optimiser state
    (<= 3%), checkpoint (<= 5%), train step memory, arguments + outputs + temporaries (<= 60%)."""
    lo, full = results["lora r=8"], results["full"]
    step = lambda r: r["arguments"] + r["outputs"] + r["temporaries"]  # noqa: E731
    parts = [("params trained", lo["trained"] / (lo["params"]), 0.015),
             ("optimiser state", lo["opt_state"] / full["opt_state"], 0.03),
             ("checkpoint", lo["checkpoint"] / full["checkpoint"], 0.05),
             ("step memory", step(lo) / step(full), 0.60)]
    return "lora r=8 / full: " + ", ".join(f"{what} {x:.2%} ({'meets' if x <= t else 'misses'} <= {t:.1%})"
                                             for what, x, t in parts)


if __name__ == "__main__":
    main()
