"""BERT in the training loop: CSV text classification, and deterministic masked-LM masking on the host."""
import json
import os

import numpy as np
import pytest

import ptft_jax
from ptft_jax.data.pipeline import EpochOrder, host_batches
from ptft_jax.dataset import Split
from ptft_jax.text import WordPieceTokenizer, pack
from ptft_jax.text.masking import MLMMasking

from conftest import CONFIGS


def metrics(workdir, split):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [m for m in map(json.loads, f) if m["split"] == split]


def read_json(workdir, name):
    with open(os.path.join(workdir, name)) as f:
        return json.load(f)


def _animal_or_market(n, seed=0):
    rng = np.random.default_rng(seed)
    cats = "cat cats kitten purrs whiskers meow fur paws tail naps mouse litter".split()
    stocks = "stocks shares market trading prices investors dividend bonds earnings rally index broker".split()
    filler = "the a and of today very some it was".split()
    rows = []
    for i in range(n):
        label, words = ("cats", cats) if i % 2 == 0 else ("stocks", stocks)
        text = " ".join(rng.choice(words, 4).tolist() + rng.choice(filler, 3).tolist())
        rows.append((" ".join(rng.permutation(text.split())), label))
    return rows


@pytest.mark.slow
def test_csv_text_classification(tmp_path, log):
    path = tmp_path / "topics.csv"
    path.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in _animal_or_market(200)))
    cfg = ptft_jax.load_config(os.path.join(CONFIGS, "pydocs_bert_finetune.py") + ":tiny", {
        "data.source": f"csv:{path}", "data.max_len": 16, "data.vocab_size": 120, "data.batch_size": 32,
        "optim.lr": 1e-3, "optim.warmup_steps": 5, "train.epochs": None, "train.steps": 40, "train.log_every": 10,
        "train.eval_every": 40, "init_from": None, "graft": None})
    result = ptft_jax.train(cfg, str(tmp_path / "run"), log=log)
    assert result["accuracy"] >= 0.9, result
    info = read_json(str(tmp_path / "run"), "data.json")
    assert info["class_names"] == ["cats", "stocks"] and info["tokenizer_source"] == "trained"
    probs = ptft_jax.predict(str(tmp_path / "run"),
                             ["cat kitten purrs whiskers fur", "stocks shares market investors bonds"])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.argmax(probs, 1).tolist() == [0, 1]
    (tmp_path / "inputs.txt").write_text("cat kitten purrs whiskers fur\n\nstocks shares market investors bonds\n")
    assert np.allclose(ptft_jax.predict(str(tmp_path / "run"), str(tmp_path / "inputs.txt")), probs, atol=1e-6)


def test_mlm_masking_in_the_pipeline_is_deterministic():
    texts = [" ".join(f"word{(i * 7 + j) % 50}" for j in range(20)) for i in range(60)]
    tok = WordPieceTokenizer.train(texts, vocab_size=100)
    split = Split(0, arrays=pack(tok.tokenize_batch(texts), 16, tok.cls_id, tok.sep_id, tok.pad_id))
    split.size = len(split.arrays["input_ids"])
    order = EpochOrder(split.size, 8, seed=3)
    masking = MLMMasking(tok, 16, seed=3)
    a = masking(split, order.indices(5), slice(None), 5)
    b = masking(split, order.indices(5), slice(None), 5)
    c = masking(split, order.indices(5), slice(None), 6)
    assert set(a) == {"input_ids", "token_type_ids", "attention_mask", "masked_positions", "masked_labels",
                      "masked_weights"}
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["masked_positions"], c["masked_positions"])
    assert (a["input_ids"] == tok.mask_id).any() and a["masked_weights"].sum() > 0
    # a process's rows are those rows of the global batch; a resumed pipeline reads the same batches
    half = masking(split, order.indices(5), slice(4, 8), 5)
    assert all(np.array_equal(half[k], a[k][4:8]) for k in a)
    full = list(host_batches(split, order, 0, 8, slice(None), 2, 2, augment=masking))
    resumed = list(host_batches(split, order, 5, 8, slice(None), 2, 2, augment=masking))
    for x, y in zip(full[5:], resumed):
        assert all(np.array_equal(x[k], y[k]) for k in x)


def test_text_source_needs_a_text_model(tmp_path):
    cfg = ptft_jax.load_config(os.path.join(CONFIGS, "digits_mlp_pretrain.py"), {"data.source": "pydocs"})
    with pytest.raises(ptft_jax.ConfigError, match="model.name=bert"):
        ptft_jax.train(cfg, str(tmp_path / "run"))
