"""What the cheap fine-tuning strategies cost in accuracy: the offline BERT pair (configs/pydocs_bert_pretrain.py,
then configs/pydocs_bert_finetune.py: 8 package families, 1186 train / 297 test docstrings), one row per
finetune.strategy (full, bitfit, lora r=8 with the default targets: query, value and the MLP kernels), at the
recipe's learning rate and at a higher one (the few parameters of bitfit and LoRA usually want more). Test accuracy
of the checkpoint selected on the recipe's validation split; mean (and each) of 3 seeds; the pretraining run once.

    python -m bench.finetune_accuracy [--seeds 3] [--out /tmp/ptft_accuracy]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import time

import ptft_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(ROOT, "configs", "pydocs_bert_pretrain.py")
FINETUNE = os.path.join(ROOT, "configs", "pydocs_bert_finetune.py")
ROWS = [("full, lr 1e-3 (the recipe)", {}),
        ("bitfit, lr 1e-3", {"finetune.strategy": "bitfit"}),
        ("bitfit, lr 1e-2", {"finetune.strategy": "bitfit", "optim.lr": 1e-2}),
        ("lora r=8, lr 1e-3", {"finetune.strategy": "lora"}),
        ("lora r=8, lr 5e-3", {"finetune.strategy": "lora", "optim.lr": 5e-3}),
        ("lora r=8, lr 1e-2", {"finetune.strategy": "lora", "optim.lr": 1e-2}),
        ("lora r=8, alpha 32, lr 5e-3", {"finetune.strategy": "lora", "optim.lr": 5e-3, "finetune.lora_alpha": 32}),
        ("lora r=16, alpha 32, lr 5e-3", {"finetune.strategy": "lora", "optim.lr": 5e-3, "finetune.lora_rank": 16,
                                          "finetune.lora_alpha": 32})]


def quiet(*_):
    pass


def train(config, workdir):
    """ptft_jax.train without its progress lines (they go to stderr)."""
    with contextlib.redirect_stderr(io.StringIO()):
        return ptft_jax.train(config, workdir, log=quiet)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="/tmp/ptft_accuracy")
    ap.add_argument("--rows", default=None, help="comma-separated row numbers (default: all)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    pt = os.path.join(a.out, "pt")
    pre = train(ptft_jax.load_config(PRETRAIN), pt)
    print(f"pretrained: masked-LM test accuracy {pre['accuracy']:.4f} in {time.perf_counter() - t0:.0f}s", flush=True)
    rows = ROWS if a.rows is None else [ROWS[int(i)] for i in a.rows.split(",")]
    for name, over in rows:
        accs, t = [], time.perf_counter()
        for seed in range(a.seeds):
            config = ptft_jax.load_config(FINETUNE, {**over, "train.seed": seed, "init_from": pt})
            slug = "".join(c if c.isalnum() else "_" for c in name)
            result = train(config, os.path.join(a.out, f"{slug}_{seed}"))
            accs.append(result["accuracy"])
        print(f"{name}: {statistics.mean(accs):.3f} ({' '.join(f'{x:.3f}' for x in accs)}), "
              f"{result['trainable_params']:,} of {result['params']:,} params trained, "
              f"{(time.perf_counter() - t) / a.seeds:.0f}s a run", flush=True)
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
