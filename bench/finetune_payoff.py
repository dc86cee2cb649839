"""Did fine-tuning pay off? The digits pair, measured the way the README reports it: the seed's fine-tune recipe
(configs/digits_mlp_finetune.py: SGD 0.001, batch 8, 10 epochs, digit >= 5), a fresh init with the same recipe, a
sound fine-tune with the same budget (SGD momentum 0.9, lr 0.01, 1 warmup epoch + cosine) and its fresh-init twin,
and scikit-learn's MLPClassifier((256, 128)) from scratch on the same 2-class split as a reference. Every ptft_jax
row is selected on the recipe's validation split (10% of the training data, train.keep_best=val/accuracy) and
reports the test accuracy of that checkpoint; mean (and each) of 3 seeds.

    python -m bench.finetune_payoff [--seeds 3] [--out /tmp/payoff]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import time

import numpy as np

import ptft_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(ROOT, "configs", "digits_mlp_pretrain.py")
FINETUNE = os.path.join(ROOT, "configs", "digits_mlp_finetune.py")
SOUND = {"optim.momentum": 0.9, "optim.lr": 0.01, "optim.schedule": "cosine", "optim.warmup_epochs": 1}
ROWS = [("seed recipe, fine-tuned", {}, True), ("seed recipe, fresh init", {}, False),
        ("sound recipe, fine-tuned", SOUND, True), ("sound recipe, fresh init", SOUND, False)]


def quiet(*_):
    pass


def train(config, workdir):
    """ptft_jax.train without its progress lines (they go to stderr)."""
    with contextlib.redirect_stderr(io.StringIO()):
        return ptft_jax.train(config, workdir, log=quiet)


def sklearn_reference(seed: int) -> float:
    """MLPClassifier((256, 128)) from scratch on the run's own 2-class train / test split."""
    from sklearn.neural_network import MLPClassifier

    from ptft_jax.data import sources
    cfg = ptft_jax.load_config(FINETUNE, {"init_from": None}).data
    ds = sources.load(cfg)
    flat = lambda s: s.arrays["image"].reshape(len(s), -1) / 255.0  # noqa: E731
    clf = MLPClassifier((256, 128), random_state=seed, max_iter=500).fit(flat(ds.train), ds.train.arrays["label"])
    return float(clf.score(flat(ds.test), ds.test.arrays["label"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="/tmp/ptft_payoff")
    a = ap.parse_args()
    t0 = time.perf_counter()
    pt = os.path.join(a.out, "pt")
    pre = train(ptft_jax.load_config(PRETRAIN), pt)
    print(f"pretrained: test accuracy {pre['accuracy']:.4f} (10 classes) in {time.perf_counter() - t0:.0f}s",
          flush=True)
    results = {}
    for name, over, fine_tune in ROWS:
        accs = []
        for seed in range(a.seeds):
            over_seed = {**over, "train.seed": seed, "init_from": pt if fine_tune else None}
            config = ptft_jax.load_config(FINETUNE, over_seed)
            workdir = os.path.join(a.out, f"{name.replace(' ', '_').replace(',', '')}_{seed}")
            accs.append(train(config, workdir)["accuracy"])
        results[name] = accs
        print(f"{name}: {statistics.mean(accs):.3f} ({' '.join(f'{x:.3f}' for x in accs)})", flush=True)
    ref = [sklearn_reference(seed) for seed in range(a.seeds)]
    print(f"scikit-learn MLPClassifier((256, 128)), from scratch: {np.mean(ref):.3f} "
          f"({' '.join(f'{x:.3f}' for x in ref)})")
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
