"""BERT building blocks: model sizes and invariances, MLM masking and packing, tokenizer, stdlib corpus, graft."""
import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ptft_jax
from ptft_jax.graft import GraftError, flatten
from ptft_jax.models import build, count_params
from ptft_jax.models.bert import BertClassifier, BertEncoder, BertForMLM
from ptft_jax.text import WordPieceTokenizer, mask_tokens, pack
from ptft_jax.text.corpus import FAMILIES, corpus_texts, pydocs_classification, stdlib_docstrings

TINY = dict(size="tiny", vocab_size=300, max_position=64)
SPECIAL = (0, 1, 2, 3, 4)  # [PAD] [UNK] [CLS] [SEP] [MASK]
MASK_ID = 4


def _shapes(model):
    x = jnp.zeros((2, 16), jnp.int32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x))


def test_base_parameter_counts():
    assert count_params(_shapes(BertEncoder(size="base"))["params"]) == 109_482_240
    assert count_params(_shapes(BertForMLM(size="base"))["params"]) == 109_514_298
    clf = build({"name": "bert", "size": "base"}, num_classes=3)
    assert isinstance(clf, BertClassifier) and clf.num_classes == 3
    assert count_params(_shapes(clf)["params"]) == 109_482_240 + 768 * 3 + 3
    large = _shapes(BertEncoder(size="large"))["params"]
    assert len([k for k in large if k.startswith("layer_")]) == 24


def _batch(rng, b=3, t=12, vocab=300):
    ids = rng.integers(5, vocab, (b, t)).astype(np.int32)
    ids[:, 0] = 2
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": np.ones_like(ids)}


@pytest.fixture(scope="module")
def tiny():
    """A tiny classifier and MLM model with their variables (init jitted: eager init compiles op by op)."""
    batch = _batch(np.random.default_rng(0))
    clf = build({"name": "bert", **TINY}, num_classes=5)
    mlm = build({"name": "bert_mlm", **TINY})
    return (batch, clf, jax.jit(clf.init)(jax.random.key(0), batch), mlm,
            jax.jit(mlm.init)(jax.random.key(1), batch))


def _apply(model, variables, *args, **kwargs):
    """model.apply, jitted: one compile instead of op-by-op dispatch (much faster on CPU)."""
    return jax.jit(functools.partial(model.apply, **kwargs))(variables, *args)


def test_tiny_forward_shapes_and_masked_positions(tiny):
    batch, clf, v, mlm, vm = tiny
    assert _apply(clf, v, batch).shape == (3, 5)
    seq, pooled = _apply(clf, v, batch, method="encode")
    assert seq.shape == (3, 12, 128) and pooled.shape == (3, 128)
    full = _apply(mlm, vm, batch)
    assert full.shape == (3, 12, 300)
    pos = np.array([[1, 5], [2, 3], [11, 0]], np.int32)
    at = _apply(mlm, vm, {**batch, "masked_positions": pos})
    assert at.shape == (3, 2, 300)
    np.testing.assert_allclose(at, np.take_along_axis(np.asarray(full), pos[..., None], axis=1), atol=1e-5)
    # the decoder is tied: there is no separate output embedding, only the bias
    assert set(vm["params"]["mlm"]) == {"transform", "layer_norm", "bias"}
    # dropout is active only in training; bf16 compute keeps float32 params
    t1 = _apply(mlm, vm, batch, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(t1, full)
    bf = build({"name": "bert_mlm", **TINY, "dtype": "bfloat16"})
    assert _apply(bf, vm, batch).dtype == jnp.bfloat16


def test_padding_does_not_change_cls_output(tiny):
    v = tiny[2]
    batch = _batch(np.random.default_rng(1), b=2, t=10)
    enc = BertEncoder(**TINY)  # the classifier's variables minus its head
    v = {"params": {k: p for k, p in v["params"].items() if k != "head"}}
    padded = {k: np.concatenate([a, np.zeros((2, 7), np.int32)], axis=1) for k, a in batch.items()}
    padded["input_ids"][:, 10:] = 0
    a_seq, a_pool = _apply(enc, v, batch)
    b_seq, b_pool = _apply(enc, v, padded)
    np.testing.assert_allclose(a_seq[:, 0], b_seq[:, 0], atol=1e-5)
    np.testing.assert_allclose(a_pool, b_pool, atol=1e-5)
    # and the mask matters: attending to the padding changes the output
    unmasked = dict(padded, attention_mask=np.ones_like(padded["attention_mask"]))
    assert np.abs(np.asarray(_apply(enc, v, unmasked)[0][:, 0]) - np.asarray(a_seq[:, 0])).max() > 1e-3


def _mlm_rows(rng, b=512, t=128, vocab=1000):
    ids = rng.integers(5, vocab, (b, t)).astype(np.int32)
    lengths = rng.integers(20, t + 1, b)
    am = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
    ids[:, 0] = 2
    sep = rng.integers(1, 19, b)  # a [SEP] inside each row, and one at its end
    ids[np.arange(b), sep] = 3
    ids[np.arange(b), lengths - 1] = 3
    ids[am == 0] = 0
    return ids, am


def test_masking_statistics_and_specials_never_selected():
    rng = np.random.default_rng(0)
    vocab = 1000
    selected = candidates = n_mask = n_random = n_kept = 0
    for draw in range(8):
        ids, am = _mlm_rows(np.random.default_rng(100 + draw), vocab=vocab)
        out = mask_tokens(ids, rng, MASK_ID, SPECIAL, vocab, attention_mask=am, max_predictions=24)
        sel = out["labels"] >= 0
        cand = (am > 0) & (ids > 4)
        assert not (sel & ~cand).any(), "a special or padding token was selected"
        assert (sel.sum(1) >= 1).all()
        np.testing.assert_array_equal(out["labels"][sel], ids[sel])
        np.testing.assert_array_equal(out["input_ids"][~sel], ids[~sel])
        # positions, labels and weights agree with the selection
        w = out["masked_weights"] > 0
        np.testing.assert_array_equal(w.sum(1), sel.sum(1))
        rows = np.repeat(np.arange(len(ids)), w.sum(1))
        np.testing.assert_array_equal(sel[rows, out["masked_positions"][w]], True)
        np.testing.assert_array_equal(out["masked_labels"][w], ids[rows, out["masked_positions"][w]])
        assert (out["masked_positions"][~w] == 0).all() and out["masked_positions"].shape == (512, 24)
        new = out["input_ids"][sel]
        assert not np.isin(new[new != MASK_ID], SPECIAL).any(), "a random replacement was a special token"
        selected += sel.sum()
        candidates += cand.sum()
        n_mask += (new == MASK_ID).sum()
        n_kept += (new == ids[sel]).sum()
        n_random += ((new != MASK_ID) & (new != ids[sel])).sum()
    assert abs(selected / candidates - 0.15) < 0.01
    assert abs(n_mask / selected - 0.8) < 0.02
    assert abs(n_random / selected - 0.1) < 0.02
    assert abs(n_kept / selected - 0.1) < 0.02
    # deterministic from the generator
    ids, am = _mlm_rows(np.random.default_rng(5))
    a = mask_tokens(ids, np.random.default_rng(7), MASK_ID, SPECIAL, vocab, attention_mask=am)
    b = mask_tokens(ids, np.random.default_rng(7), MASK_ID, SPECIAL, vocab, attention_mask=am)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_whole_word_masking_selects_whole_words():
    vocab = 200
    continuation = np.zeros(vocab, bool)
    continuation[100:] = True  # ids >= 100 are `##` pieces
    rng = np.random.default_rng(0)
    b, t = 256, 64
    ids = rng.integers(5, 100, (b, t)).astype(np.int32)
    cont = rng.random((b, t)) < 0.4
    ids[cont] = rng.integers(100, vocab, cont.sum())
    ids[:, 0], ids[:, -1] = 2, 3
    ids[:, 1] = 150  # a `##` piece right after [CLS] is a word of its own
    out = mask_tokens(ids, rng, MASK_ID, SPECIAL, vocab, max_predictions=16, whole_word=True,
                      continuation=continuation)
    sel = out["labels"] >= 0
    n_selected = 0
    for i in range(b):
        assert sel[i].sum() >= 1
        words, current = [], None
        for j in range(1, t - 1):
            if current is None or not continuation[ids[i, j]]:
                current = [j]
                words.append(current)
            else:
                current.append(j)
        for w in words:
            assert sel[i, w].all() or not sel[i, w].any(), f"row {i}: word {w} partially selected"
        n_selected += sel[i].sum()
    assert 0.10 < n_selected / (b * (t - 2)) <= 0.15


def test_pack_places_cls_and_sep():
    docs = [list(range(10, 17)), list(range(20, 23)), [], list(range(30, 41))]
    out = pack(docs, max_len=8, cls_id=2, sep_id=3, pad_id=0)
    stream = [*range(10, 17), 3, *range(20, 23), 3, *range(30, 41), 3]  # 24 tokens -> 4 rows of 7
    ids, am = out["input_ids"], out["attention_mask"]
    assert ids.shape == (4, 8) and ids.dtype == np.int32
    assert (ids[:, 0] == 2).all()
    assert ids[:, 1:][am[:, 1:] > 0].tolist() == stream
    assert am[-1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0] and ids[-1, 4:].tolist() == [0, 0, 0, 0]
    assert (out["token_type_ids"] == 0).all()
    assert pack(docs, max_len=8, cls_id=2, sep_id=3, drop_last=True)["input_ids"].shape == (3, 8)


@pytest.fixture(scope="module")
def tokenizer():
    return WordPieceTokenizer.train(corpus_texts()[:1500], vocab_size=2000, lowercase=True)


def test_tokenizer_round_trip_save_load_and_pairs(tokenizer, tmp_path):
    tok = tokenizer
    assert tok.vocab_size == 2000 and tok.special_ids == (0, 1, 2, 3, 4)
    text = "Return the Message object, parsed from the given String."
    enc = tok.encode([text, "the"], max_len=24)
    assert enc["input_ids"].shape == (2, 24) and enc["input_ids"].dtype == np.int32
    assert enc["input_ids"][0, 0] == tok.cls_id and tok.unk_id not in enc["input_ids"][0]
    n = enc["attention_mask"][0].sum()
    assert enc["input_ids"][0, n - 1] == tok.sep_id and (enc["input_ids"][0, n:] == tok.pad_id).all()
    assert tok.decode(enc["input_ids"][0]) == tok.normalize(text) == text.lower()
    tok.save(str(tmp_path))
    again = WordPieceTokenizer.load(str(tmp_path))
    np.testing.assert_array_equal(again.encode(text, max_len=24)["input_ids"], enc["input_ids"][:1])
    pair = tok.encode(["first part " * 20], ["the second part " * 20], max_len=32)
    ids, tt = pair["input_ids"][0], pair["token_type_ids"][0]
    assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id and (ids == tok.sep_id).sum() == 2
    first_sep = int(np.flatnonzero(ids == tok.sep_id)[0])
    assert (tt[:first_sep + 1] == 0).all() and (tt[first_sep + 1:] == 1).all()
    cont = tok.continuation_mask()
    assert cont.shape == (2000,) and cont.any() and not cont[:5].any()


@pytest.mark.slow
def test_tokenizer_training_gives_the_same_vocab_txt_in_every_process(tokenizer, tmp_path):
    import os
    import subprocess
    import sys
    script = ("import sys; from ptft_jax.text import WordPieceTokenizer; from ptft_jax.text.corpus import corpus_texts;"
              "WordPieceTokenizer.train(corpus_texts()[:1500], vocab_size=2000, lowercase=True).save(sys.argv[1])")
    for i, seed in enumerate(("1", "2")):  # another hash seed, as every new process has
        subprocess.run([sys.executable, "-c", script, str(tmp_path / str(i))], check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed})
    tokenizer.save(str(tmp_path / "here"))
    texts = [(tmp_path / d / "vocab.txt").read_text() for d in ("0", "1", "here")]
    assert texts[0] == texts[1] == texts[2] and texts[0].startswith("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")


def test_stdlib_corpus_and_pydocs_task():
    docs = stdlib_docstrings()
    assert len(docs) >= 1000
    counts = collections.Counter(f for _, f in docs)
    for family in FAMILIES:
        assert counts[family] >= 20, (family, counts[family])
    assert all(len(t) > 80 for t, _ in docs)
    assert docs == stdlib_docstrings()
    ds = pydocs_classification(test_fraction=0.2, seed=0)
    assert ds.num_classes == len(FAMILIES) and ds.class_names == FAMILIES
    total = len(ds.train_texts) + len(ds.test_texts)
    assert total == sum(counts[f] for f in FAMILIES)
    assert abs(len(ds.test_texts) / total - 0.2) < 0.01
    assert set(np.unique(ds.test_labels)) == set(range(len(FAMILIES)))
    again = pydocs_classification(test_fraction=0.2, seed=0)
    assert again.test_texts == ds.test_texts and (again.test_labels == ds.test_labels).all()
    assert pydocs_classification(test_fraction=0.2, seed=1).test_texts != ds.test_texts


def test_graft_mlm_encoder_into_classifier(tiny):
    batch, clf, fresh, _, mlm_vars = tiny
    rules = [("head/.*", "init"), ("pooler/.*", "init"), ("mlm/.*", "skip"), (".*", "load")]
    variables, report = ptft_jax.graft(fresh, jax.device_get(mlm_vars), rules)
    flat_new, flat_mlm, flat_fresh = (flatten(v["params"]) for v in (variables, mlm_vars, fresh))
    encoder = [p for p in flat_fresh if not p.startswith(("head/", "pooler/"))]
    assert len(encoder) == len(flat_mlm) - 5  # the MLM model's extra leaves: transform (2), layer_norm (2), bias (1)
    assert report.counts()["load"] == len(encoder) and report.counts()["init"] == 4
    for p in encoder:
        np.testing.assert_array_equal(flat_new[p], flat_mlm[p])
    assert {p for p, _ in report.skipped} == {f"params/{p}" for p in flat_mlm if p.startswith("mlm/")}
    assert _apply(clf, variables, batch).shape == (3, 5)
    with pytest.raises(GraftError, match="mlm/"):  # without the skip rule the MLM head is not dropped silently
        ptft_jax.graft(fresh, jax.device_get(mlm_vars), [("head/.*", "init"), ("pooler/.*", "init"), (".*", "load")])
