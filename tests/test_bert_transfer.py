"""Does masked-LM pretraining help BERT? The offline pydocs pair, shrunk: pretrain configs/pydocs_bert_pretrain.py
(BERT tiny) for PT_STEPS steps, then fine-tune configs/pydocs_bert_finetune.py to classify docstrings by package
from 20 labelled examples per class, from the pretrained encoder and from a fresh init, averaged over two seeds.
Both arms run the identical fine-tuning config and tokenizer (the fresh arm reads the pretraining run's vocabulary
through data.vocab); only the init differs. The same runs check the pair's plumbing: the trained tokenizer is the
fine-tuning run's, and the graft loads the encoder, initialises pooler and head and leaves the masked-LM head unused.

Measured on the 2-core dev machine (2026-12-02, loaded by two other jobs; the tokenizer's vocabulary is
deterministic): masked-LM accuracy 0.191 after 1200 steps; fine-tuned test accuracy pretrained 0.549 (0.529, 0.583,
0.535) against fresh 0.448 (0.468, 0.394, 0.482), a margin of 0.101, each pretrained seed above every fresh one
(600 pretraining steps are not enough: 0.407 against 0.468 on seed 0). The test runs seeds 0 and 1 (a margin of
0.125 then); the bound is 0.05.
"""
import filecmp
import json
import os
import time

import numpy as np
import pytest

import ptft_jax

from conftest import CONFIGS

pytestmark = pytest.mark.slow  # minutes: a pretraining run and four fine-tunes

PRETRAIN = os.path.join(CONFIGS, "pydocs_bert_pretrain.py")
FINETUNE = os.path.join(CONFIGS, "pydocs_bert_finetune.py")
PT_STEPS = 1200
MAX_LEN = 32  # tokens per sequence in both phases: half the recipe's 64, for speed
MARGIN = 0.05


def test_mlm_pretraining_helps_few_shot_docstring_classification(tmp_path):
    quiet = lambda *_: None  # noqa: E731
    start = time.time()
    pt = str(tmp_path / "pt")
    pre = ptft_jax.load_config(PRETRAIN, {"data.max_len": MAX_LEN, "train.steps": PT_STEPS,
                                          "train.log_every": PT_STEPS // 3, "train.eval_every": PT_STEPS,
                                          "train.checkpoint_every": PT_STEPS})
    mlm = ptft_jax.train(pre, pt, log=quiet)
    pt_time = time.time() - start
    losses = [r["loss"] for r in map(json.loads, open(os.path.join(pt, "metrics.jsonl"))) if r["split"] == "train"]
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.3, losses
    assert read_json(pt, "data.json")["task"] == "mlm" and read_json(pt, "data.json")["tokenizer_source"] == "trained"
    acc = {"pretrained": [], "fresh": []}
    for seed in range(2):
        for kind in acc:
            # 20 examples per class, batch 16: 10 steps an epoch, 100 steps; evaluated once, at the end
            over = {"data.max_len": MAX_LEN, "data.train_per_class": 20, "data.batch_size": 16,
                    "optim.warmup_steps": 10, "train.epochs": 10, "train.seed": seed, "train.log_every": 100,
                    "train.eval_every": 100, "train.checkpoint_every": 100,
                    "data.val_fraction": None, "train.keep_best": None}  # as measured: no validation split
            if kind == "fresh":
                over.update({"init_from": None, "graft": None, "data.vocab": os.path.join(pt, "tokenizer")})
            else:
                over["init_from"] = pt
            result = ptft_jax.train(ptft_jax.load_config(FINETUNE, over), str(tmp_path / f"{kind}{seed}"), log=quiet)
            acc[kind].append(round(float(result["accuracy"]), 4))
            if kind == "pretrained" and seed == 0:
                check_the_graft_and_tokenizer(pt, str(tmp_path / "pretrained0"))
    means = {k: round(float(np.mean(v)), 4) for k, v in acc.items()}
    print(f"masked-LM accuracy {mlm['accuracy']:.4f} after {PT_STEPS} steps ({pt_time:.0f}s); "
          f"fine-tuned test accuracy, mean (per seed): "
          + ", ".join(f"{k} {means[k]} {acc[k]}" for k in acc) + f"; {time.time() - start:.0f}s in all")
    assert means["pretrained"] - means["fresh"] >= MARGIN, acc


def read_json(workdir, name):
    with open(os.path.join(workdir, name)) as f:
        return json.load(f)


def check_the_graft_and_tokenizer(pt, ft):
    info = read_json(ft, "data.json")
    assert info["task"] == "classify_text" and info["tokenizer_source"] == os.path.join(pt, "tokenizer")
    assert info["tokenizer_dir"] == os.path.join(ft, "tokenizer") and info["num_classes"] == 8
    assert filecmp.cmp(os.path.join(pt, "tokenizer", "vocab.txt"), os.path.join(ft, "tokenizer", "vocab.txt"),
                       shallow=False)
    graft = read_json(ft, "graft.json")
    actions = {r["path"]: r["action"] for r in graft["rows"]}
    encoder = [p for p in actions if p.startswith(("params/embeddings/", "params/layer_"))]
    assert encoder and all(actions[p] == "load" for p in encoder)
    assert {p for p, a in actions.items() if a == "init"} == {
        "params/head/kernel", "params/head/bias", "params/pooler/kernel", "params/pooler/bias"}
    skipped = {p for p, _ in graft["skipped"]}
    assert skipped and all(p.startswith("params/mlm/") for p in skipped)
    assert "params/mlm/bias" in skipped
