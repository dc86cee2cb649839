"""Text sources beyond the offline pair: TFDS text datasets (mock data), plain text files, sentence pairs, F1,
masking keys, the tokenised-data cache, the pooler's load_or_init graft, and the BERT recipes."""
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

import ptft_jax
from ptft_jax import tasks
from ptft_jax.config import validate
from ptft_jax.metrics import f1_scores
from ptft_jax.text import WordPieceTokenizer
from ptft_jax.text.masking import MLMMasking, masking_for

from conftest import CONFIGS

TINY = {"model.dtype": "float32", "data.max_len": 16, "data.vocab_size": 200, "data.batch_size": 4,
        "data.eval_batch_size": 8, "train.log_every": 1, "optim.warmup_epochs": None, "optim.warmup_steps": 0}


def recipe(name, over):
    return ptft_jax.load_config(os.path.join(CONFIGS, name) + ":tiny", over)


def metrics(workdir, split):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [m for m in map(json.loads, f) if m["split"] == split]


@pytest.fixture(scope="module")
def lm1b_run(tmp_path_factory):
    """A tiny masked-LM pretraining run on mock TFDS lm1b (the bert_mlm_pretrain recipe, its source swapped)."""
    tmp = tmp_path_factory.mktemp("lm1b")
    over = {**TINY, "data.source": "tfds:lm1b", "data.train_split": "train", "data.test_split": "test",
            "data.text_fields": None, "data.data_dir": str(tmp / "tfds"), "train.steps": 3, "data.max_documents": 40}
    logs = []
    with tfds.testing.mock_data(num_examples=60):
        result = ptft_jax.train(recipe("bert_mlm_pretrain.py", over), str(tmp / "pt"), log=logs.append)
    return tmp, over, result, logs


@pytest.mark.slow
def test_tfds_lm1b_pretraining_streams_and_resumes(lm1b_run):
    """A masked-LM run over TFDS streams its training documents (text/stream.py): nothing is tokenised into
    WORKDIR/tokenized/, and a resumed run reads the source again from the lanes' saved position."""
    tmp, over, result, logs = lm1b_run
    assert result["step"] == 3 and np.isfinite(result["loss"])
    assert not os.path.exists(tmp / "pt" / "tokenized")
    assert any("training documents streamed from tfds:lm1b" in line for line in logs)
    logs2 = []
    with tfds.testing.mock_data(num_examples=60):
        again = ptft_jax.train(ptft_jax.load_config(os.path.join(CONFIGS, "bert_mlm_pretrain.py") + ":tiny",
                                                    {**over, "train.steps": 5}),
                               str(tmp / "pt"), log=logs2.append, allow_config_change=True)
    assert again["step"] == 5 and any("resuming from" in line for line in logs2)


@pytest.mark.slow
def test_tfds_sst2_finetune_from_the_lm1b_run_loads_everything_but_pooler_and_head(lm1b_run):
    tmp, _, _, _ = lm1b_run
    over = {**TINY, "data.data_dir": str(tmp / "tfds"), "train.epochs": 1, "init_from": str(tmp / "pt"),
            "data.val_fraction": None, "train.keep_best": None}  # all 12 mock rows train: 3 steps of 4
    with tfds.testing.mock_data(num_examples=12):
        result = ptft_jax.train(recipe("bert_sst2_finetune.py", over), str(tmp / "sst2"))
    assert result["step"] == 3 and "f1" in result and 0 <= result["f1"] <= 1
    vocab = lambda run: (tmp / run / "tokenizer" / "vocab.txt").read_text()  # noqa: E731
    assert vocab("sst2") == vocab("pt")
    rows = {r["path"]: r["action"] for r in json.load(open(tmp / "sst2" / "graft.json"))["rows"]}
    assert {p for p, a in rows.items() if a == "init"} == {"params/pooler/kernel", "params/pooler/bias",
                                                           "params/head/kernel", "params/head/bias"}
    assert sum(a == "load" for a in rows.values()) == len(rows) - 4
    # A classifier fine-tuned from this one has a pooler in its checkpoint: load_or_init now loads it.
    over2 = {**over, "init_from": str(tmp / "sst2")}
    with tfds.testing.mock_data(num_examples=12):
        ptft_jax.train(recipe("bert_sst2_finetune.py", over2), str(tmp / "sst2_again"))
    rows = {r["path"]: r["action"] for r in json.load(open(tmp / "sst2_again" / "graft.json"))["rows"]}
    assert rows["params/pooler/kernel"] == "load" and rows["params/head/kernel"] == "init"


@pytest.mark.slow
def test_tfds_mrpc_pairs_have_second_segments_and_report_f1(tmp_path):
    cfg = recipe("bert_mrpc_finetune.py", {**TINY, "data.data_dir": str(tmp_path / "tfds"), "init_from": None,
                                           "graft": None, "train.epochs": 1})
    with tfds.testing.mock_data(num_examples=12):
        ds = tasks.TextClassification().load(cfg.data, workdir=str(tmp_path / "w"))
        result = ptft_jax.train(cfg, str(tmp_path / "run"))
    tt, am = ds.train.arrays["token_type_ids"], ds.train.arrays["attention_mask"]
    assert (tt == 1).any(axis=1).all() and ((tt == 1) <= (am == 1)).all()  # every row has a real second segment
    assert "f1" in result and "f1" in metrics(tmp_path / "run", "test")[-1]
    probs = ptft_jax.predict(str(tmp_path / "run"), [("one sentence", "another one"), ("a", "b")])
    (tmp_path / "pairs.jsonl").write_text('{"text": "one sentence", "text_b": "another one"}\n')
    from_file = ptft_jax.predict(str(tmp_path / "run"), str(tmp_path / "pairs.jsonl"))
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1) and np.allclose(from_file[0], probs[0], atol=1e-6)
    single = ptft_jax.predict(str(tmp_path / "run"), ["one sentence another one"])
    assert not np.allclose(single[0], probs[0], atol=1e-6)  # token types differ: the pair was seen as a pair


def test_tfds_text_errors_are_clear(tmp_path):
    cfg = recipe("bert_sst2_finetune.py", {**TINY, "data.data_dir": str(tmp_path / "tfds"), "init_from": None,
                                           "graft": None, "data.text_fields": "sentense"})
    with tfds.testing.mock_data(num_examples=6):
        with pytest.raises(ptft_jax.ConfigError, match=r"data.text_fields \['sentense'\] does not fit glue/sst2.*"
                                                       r"idx, label, sentence"):
            tasks.TextClassification().load(cfg.data)
        cfg.data.text_fields = None
        cfg.data.source = "tfds:mnist"
        with pytest.raises(ptft_jax.DataError, match="no text feature this reader knows"):
            tasks.TextClassification().load(cfg.data)
        cfg.data.source = "tfds:imdb_reviews"
        with pytest.raises(ptft_jax.DataError, match="it is text: use it with model.name=bert"):
            tasks.ImageClassification().load(cfg.data)


@pytest.mark.slow
def test_plain_text_files_pretrain_with_whole_words(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    words = "the quick brown fox jumps over lazy dogs while unbelievably sleepy cats watch".split()
    rng = np.random.default_rng(0)
    for i, name in enumerate(["a.txt", "sub/b.txt"]):
        docs = ["\n".join(" ".join(rng.choice(words, 12)) for _ in range(3)) for _ in range(6)]
        (root / name).write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    (root / "ignored.md").write_text("not read", encoding="utf-8")
    cfg = recipe("bert_mlm_pretrain.py", {**TINY, "data.source": f"text:{root}", "data.text_fields": None,
                                          "data.max_documents": None, "data.test_fraction": 0.25,
                                          "data.whole_word": True, "data.mask_prob": 0.3, "train.steps": 2})
    ds = tasks.MaskedLM().load(cfg.data, workdir=str(tmp_path / "w"))
    assert ds.name == "corpus" and ds.test.arrays["masked_weights"].sum() > 0
    masking = masking_for(cfg.data, ds.tokenizer, 0)
    assert masking.whole_word and masking.mask_prob == 0.3
    assert len(ds.train) == 9  # documents, packed by lanes (text/stream.py)
    batches = list(ds.train.lanes(8, 0, masking).batches(0, 4, slice(None)))
    ids = np.concatenate([b["input_ids"] for b in batches])
    weights = np.concatenate([b["masked_weights"] for b in batches])
    selected = weights.sum() / (ids[:, 1:].size - (ids == ds.tokenizer.sep_id).sum())  # ([SEP] is never masked)
    assert 0.2 < selected < 0.35, selected  # ~30% of the tokens other than [CLS] and [SEP]
    assert ptft_jax.train(cfg, str(tmp_path / "run"))["step"] == 2
    with pytest.raises(ptft_jax.DataError, match="does not exist"):
        tasks.MaskedLM().load(ptft_jax.load_config(os.path.join(CONFIGS, "bert_mlm_pretrain.py") + ":tiny",
                                                   {"data.source": f"text:{tmp_path}/nope"}).data)
    with pytest.raises(ptft_jax.ConfigError, match="data.mask_prob 1.5 must be a number between 0 and 1"):
        validate(ptft_jax.apply_overrides(cfg, {"data.mask_prob": 1.5}))


def test_csv_sentence_pairs(tmp_path):
    rows = ["text,text_b,label"] + [f"first {i},second {i},{i % 2}" for i in range(12)]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    cfg = ptft_jax.load_config(os.path.join(CONFIGS, "pydocs_bert_finetune.py") + ":tiny", {
        "data.source": f"csv:{tmp_path / 'pairs.csv'}", "init_from": None, "graft": None, "data.max_len": 12,
        "data.vocab_size": 100, "data.test_fraction": 0.25})
    ds = tasks.TextClassification().load(cfg.data, workdir=str(tmp_path / "w"))
    tok = ds.tokenizer
    ids, tt = ds.train.arrays["input_ids"][0], ds.train.arrays["token_type_ids"][0]
    text = tok.decode(ids[tt == 0]), tok.decode(ids[tt == 1])
    assert text[0].startswith("first") and text[1].startswith("second")
    (tmp_path / "bad.csv").write_text('text,text_b,label\na,b,0\nc,,1\nd,e,0\nf,g,1\n')
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "text_b": "b", "label": 0}\n{"text": "c", "label": 1}\n')
    from ptft_jax.text.sources import load_text
    load_text(f"csv:{tmp_path / 'bad.csv'}", 0.5)  # an empty CSV cell is an empty (valid) second segment
    with pytest.raises(ptft_jax.DataError, match="line 2 has no text_b though other rows do"):
        load_text(f"jsonl:{tmp_path / 'bad.jsonl'}", 0.5)


def test_f1_scores_match_sklearn():
    from sklearn.metrics import f1_score
    rng = np.random.default_rng(0)
    for classes in (2, 5):
        y, p = rng.integers(0, classes, 300), rng.integers(0, classes, 300)
        p[:100] = y[:100]
        onehot = lambda v: np.eye(classes)[v]  # noqa: E731
        tp = (onehot(p) * onehot(y)).sum(0)
        fp = (onehot(p) * (1 - onehot(y))).sum(0)
        fn = ((1 - onehot(p)) * onehot(y)).sum(0)
        got = f1_scores(tp, fp, fn)
        if classes == 2:
            assert got == pytest.approx({"f1": f1_score(y, p)})
        else:
            assert got == pytest.approx({"macro_f1": f1_score(y, p, average="macro")})


@pytest.mark.parametrize("name", ["bert_mlm_pretrain.py", "bert_sst2_finetune.py", "bert_mrpc_finetune.py",
                                  "bert_imdb_finetune.py"])
@pytest.mark.parametrize("preset", ["", ":tiny", ":large"])
def test_bert_recipes_load_with_every_preset(name, preset):
    cfg = ptft_jax.load_config(os.path.join(CONFIGS, name) + preset)
    assert cfg.model.size == (preset[1:] or "base") and cfg.model.name in ("bert", "bert_mlm")
    assert str(cfg.data.source).startswith("tfds:")


def test_mlm_masking_default_matches_bert():
    tok = WordPieceTokenizer.train(["some words to make a vocabulary of words"] * 5, vocab_size=60)
    m = MLMMasking(tok, 128, 0)
    assert m.mask_prob == 0.15 and not m.whole_word and m.max_predictions == 21
