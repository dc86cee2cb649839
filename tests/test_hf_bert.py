"""Hugging Face BERT interop against fixtures transformers wrote (tests/fixtures/make_hf_bert.py; no torch or
transformers here): every key layout read and run equals transformers' outputs, the tokenizers give transformers'
ids, bad folders stop with one sentence, write() is read()'s inverse with transformers' key names, and BERT's
attention-probability dropout."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ptft_jax.errors import CheckpointError, ConfigError
from ptft_jax.interop import hf_bert
from ptft_jax.interop.state_dict import read_state_dict
from ptft_jax.models import build
from ptft_jax.models.bert import BertEncoder
from ptft_jax.text.dataset import run_tokenizer
from ptft_jax.text.tokenizer import WordPieceTokenizer

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "hf_bert")
INPUTS = ("input_ids", "token_type_ids", "attention_mask")
# layout: (kind, num_classes, class_names, has a tokenizer)
LAYOUTS = {"bert_model": ("bert", None, None, False), "pretraining": ("bert_pretraining", None, None, False),
           "mlm": ("bert_mlm", None, None, True),
           "classifier": ("bert_classifier", 3, ("negative", "neutral", "positive"), True),
           "mlm_noprefix": ("bert_mlm", None, None, False), "old_bin": ("bert_pretraining", None, None, False),
           "classifier_bin": ("bert_classifier", 2, None, False)}


def _ref(name):
    with np.load(os.path.join(FIX, name, "ref.npz")) as z:
        return dict(z)


def _outputs(imported, inputs):
    """What ptft_jax's models give for the imported params: sequence, pooled, logits, mlm_logits."""
    p = imported.variables["params"]
    body = {k: v for k, v in p.items() if k not in ("head", "mlm")}
    seq, pooled = BertEncoder(**imported.model, use_pooler="pooler" in p).apply({"params": body}, inputs)
    out = {"sequence": seq}
    if pooled is not None:
        out["pooled"] = pooled
    if "head" in p:
        out["logits"] = build(dict(name="bert", **imported.model), imported.num_classes).apply({"params": p}, inputs)
    if "mlm" in p:
        mlm = build(dict(name="bert_mlm", **imported.model))
        out["mlm_logits"] = mlm.apply({"params": {k: v for k, v in p.items() if k != "pooler"}}, inputs)
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_layout_reads_and_equals_transformers(name):
    imported = hf_bert.read(os.path.join(FIX, name))
    kind, num_classes, class_names, has_tok = LAYOUTS[name]
    assert (imported.kind, imported.num_classes, imported.class_names) == (kind, num_classes, class_names)
    assert (imported.tokenizer_dir is not None) == has_tok
    assert imported.model == dict(num_layers=2, hidden_size=32, num_heads=4, intermediate_size=37,
                                  vocab_size=imported.model["vocab_size"], max_position=64, type_vocab_size=2,
                                  dropout_rate=0.1, attention_dropout_rate=0.1)
    assert ("cls.seq_relationship" in " ".join(imported.notes)) == (kind == "bert_pretraining")
    ref = _ref(name)
    got = _outputs(imported, {k: ref[k] for k in INPUTS})
    expected = {k for k in ("sequence", "pooled", "logits", "mlm_logits") if k in ref}
    assert set(got) == expected
    for key in expected:
        np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=1e-5, err_msg=f"{name}: {key}")


def test_a_wrong_mapping_would_show():
    """The fixtures' weights are far enough from their init that swapping query and key is seen."""
    imported = hf_bert.read(os.path.join(FIX, "classifier"))
    layer = imported.variables["params"]["layer_0"]
    layer["query"], layer["key"] = layer["key"], layer["query"]
    ref = _ref("classifier")
    got = _outputs(imported, {k: ref[k] for k in INPUTS})
    assert np.abs(got["logits"] - ref["logits"]).max() > 1e-2


# ---- tokenizers -------------------------------------------------------------------------------------------------
def _ids():
    with open(os.path.join(FIX, "tokenizer_ids.json"), encoding="utf-8") as f:
        return json.load(f)


def _encode(tok, fx):
    single = tok.encode(fx["sentences"], max_len=fx["max_len"])
    pair = tok.encode([a for a, _ in fx["pairs"]], [b for _, b in fx["pairs"]], max_len=fx["max_len"])
    return {"single": single, "pair": pair}


@pytest.mark.parametrize("name", ["tok_uncased", "tok_cased", "tok_uncased_accents"])
def test_tokenizer_ids_equal_transformers(name):
    fx = _ids()
    tok = WordPieceTokenizer.load(os.path.join(FIX, name))
    assert tok.vocab_size == fx[name]["vocab_size"]
    got = _encode(tok, fx)
    for what in ("single", "pair"):
        for key in INPUTS:
            np.testing.assert_array_equal(got[what][key], np.array(fx[name][what][key]), err_msg=f"{name} {what}")


def test_tokenizer_flags_matter():
    """The same vocab.txt without its tokenizer_config.json flags (strip_accents false, tokenize_chinese_chars
    false) gives other ids, and the cased vocabulary lower-cased does too: the test above sees the flags."""
    fx = _ids()
    plain = WordPieceTokenizer.from_vocab(os.path.join(FIX, "tok_uncased_accents", "vocab.txt"))
    assert not np.array_equal(_encode(plain, fx)["single"]["input_ids"],
                              np.array(fx["tok_uncased_accents"]["single"]["input_ids"]))
    cased = WordPieceTokenizer.load(os.path.join(FIX, "tok_cased"))
    assert (cased.lowercase, cased.strip_accents, cased.chinese_chars) == (False, None, True)
    assert cased.encode("Hello World", max_len=8)["input_ids"].tolist() != \
        cased.encode("hello world", max_len=8)["input_ids"].tolist()


def _data_cfg(**kw):
    return ml_collections.ConfigDict(dict(dict(vocab=None, lowercase=None, vocab_size=100), **kw))


def test_run_tokenizer_honours_and_records_the_vocabularys_flags(tmp_path):
    fx = _ids()
    src = os.path.join(FIX, "tok_uncased_accents")
    tok, own, _ = run_tokenizer(_data_cfg(vocab=src), None, str(tmp_path), None, log=lambda *_: None)
    with open(os.path.join(own, "tokenizer_config.json")) as f:
        saved = json.load(f)
    assert (saved["do_lower_case"], saved["strip_accents"], saved["tokenize_chinese_chars"]) == (True, False, False)
    again = WordPieceTokenizer.load(own)  # what a fine-tuning or predict run loads
    np.testing.assert_array_equal(_encode(again, fx)["single"]["input_ids"],
                                  np.array(fx["tok_uncased_accents"]["single"]["input_ids"]))
    cased, _, _ = run_tokenizer(_data_cfg(), None, None, os.path.join(FIX, "mlm"), log=lambda *_: None)
    assert cased.lowercase is False  # the init_from folder's own do_lower_case, with tokenizer.json alone
    same, _, _ = run_tokenizer(_data_cfg(vocab=os.path.join(FIX, "tok_cased"), lowercase="false"), None, None, None,
                               log=lambda *_: None)
    assert same.lowercase is False


def test_an_explicit_lowercase_contradicting_the_vocabulary_is_one_sentence():
    with pytest.raises(ConfigError, match=r"^data.lowercase is True but the vocabulary in .*tok_cased was made with "
                                          r"do_lower_case False; leave data.lowercase unset[^\n]*\.$"):
        run_tokenizer(_data_cfg(vocab=os.path.join(FIX, "tok_cased"), lowercase=True), None, None, None,
                      log=lambda *_: None)
    with pytest.raises(ConfigError, match="data.lowercase is 'maybe'"):
        run_tokenizer(_data_cfg(lowercase="maybe"), ["a text"], None, None, log=lambda *_: None)


def test_a_trained_vocabulary_lowercases_by_default():
    tok, _, _ = run_tokenizer(_data_cfg(vocab_size=60), ["Some Text here", "More TEXT there"] * 5, None, None,
                              log=lambda *_: None)
    assert tok.lowercase is True and tok.normalize("ABC") == "abc"


# ---- bad input: one sentence each ---------------------------------------------------------------------------------
def _folder(tmp_path, base="classifier", config=None, drop=(), weights=None):
    d = tmp_path / "m"
    shutil.copytree(os.path.join(FIX, base), d)
    for f in drop:
        os.remove(d / f)
    if config:
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(config)
        (d / "config.json").write_text(json.dumps(cfg))
    if weights is not None:
        weights(d)
    return str(d)


def _one_sentence(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg and msg.endswith("."), msg
    return msg


@pytest.mark.parametrize("config, error, pattern", [
    ({"model_type": "roberta"}, ConfigError, r"hf:.* is a roberta model; ptft_jax imports BERT \(model_type bert\)\."),
    ({"model_type": "gpt2"}, ConfigError, r"is a gpt2 model"),
    ({"hidden_act": "gelu_new"}, ConfigError, r"hidden_act 'gelu_new' .* \(hidden_act 'gelu'\)"),
    ({"position_embedding_type": "relative_key"}, ConfigError,
     r"position_embedding_type 'relative_key' .*\(position_embedding_type 'absolute'\)"),
    ({"layer_norm_eps": 1e-5}, ConfigError, r"layer_norm_eps 1e-05 .*\(layer_norm_eps 1e-12\)"),
])
def test_a_config_ptft_jax_cannot_reproduce(tmp_path, config, error, pattern):
    with pytest.raises(error, match=pattern) as e:
        hf_bert.read(_folder(tmp_path, config=config))
    _one_sentence(e)


def test_a_folder_without_config_or_weights(tmp_path):
    with pytest.raises(CheckpointError, match="has no config.json") as e:
        hf_bert.read(_folder(tmp_path, drop=["config.json"]))
    _one_sentence(e)
    shutil.rmtree(tmp_path / "m")
    with pytest.raises(CheckpointError, match="holds no weights: none of model.safetensors") as e:
        hf_bert.read(_folder(tmp_path, drop=["model.safetensors"]))
    _one_sentence(e)


def test_truncated_weights(tmp_path):
    def cut(name):
        def f(d):
            data = (d / name).read_bytes()
            (d / name).write_bytes(data[: len(data) // 2])
        return f
    with pytest.raises(CheckpointError, match="not a readable safetensors file .* truncated") as e:
        hf_bert.read(_folder(tmp_path, weights=cut("model.safetensors")))
    _one_sentence(e)
    shutil.rmtree(tmp_path / "m")
    with pytest.raises(CheckpointError, match="is a truncated zip archive") as e:
        hf_bert.read(_folder(tmp_path, base="old_bin", weights=cut("pytorch_model.bin")))
    _one_sentence(e)


def test_a_state_dict_that_is_not_bert(tmp_path):
    def foreign(d):
        save_file({"conv1.weight": np.zeros((4, 3, 3, 3), np.float32), "fc.weight": np.zeros((2, 4), np.float32)},
                  str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"is not the state_dict of a BERT .* lacks embeddings.word_embeddings."
                                              r"weight, .* and \d+ more keys") as e:
        hf_bert.read(_folder(tmp_path, weights=foreign))
    _one_sentence(e)


# ---- state_dict.py against torch.save's files -----------------------------------------------------------------------
def test_torch_save_files_read_without_torch():
    got = read_state_dict(os.path.join(FIX, "state_dict", "mixed.pt"))
    with np.load(os.path.join(FIX, "state_dict", "mixed_ref.npz")) as ref:
        assert set(got) == set(ref.files)
        for k in ref.files:
            assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape, k
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    with pytest.raises(CheckpointError, match="neither a safetensors file nor a torch.save zip"):
        read_state_dict(os.path.join(FIX, "state_dict", "legacy.pt"))
    with pytest.raises(CheckpointError, match="torch.nn.modules.linear.Linear is not part of a state_dict"):
        read_state_dict(os.path.join(FIX, "state_dict", "module.pt"))


# ---- write -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, kind", [("classifier", "classifier"), ("mlm", "mlm")])
def test_write_is_reads_inverse_with_transformers_key_names(tmp_path, name, kind):
    imported = hf_bert.read(os.path.join(FIX, name))
    out = hf_bert.write(str(tmp_path / "out"), imported.variables, imported.model, imported.tokenizer_dir, kind=kind,
                        class_names=imported.class_names)
    written = load_file(os.path.join(out, "model.safetensors"))
    reference = load_file(os.path.join(FIX, name, "model.safetensors"))
    assert {k: v.shape for k, v in written.items()} == {k: v.shape for k, v in reference.items()}
    for k in reference:  # transformers' own file, key by key
        np.testing.assert_array_equal(written[k], reference[k], err_msg=k)
    again = hf_bert.read(out)
    assert (again.kind, again.model, again.num_classes, again.class_names) == \
        (imported.kind, imported.model, imported.num_classes, imported.class_names)
    flat = lambda t: {"/".join(str(k.key) for k in p): v for p, v in jax.tree_util.tree_leaves_with_path(t)}  # noqa
    a, b = flat(imported.variables), flat(again.variables)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    cfg, ref_cfg = (json.load(open(os.path.join(d, "config.json"))) for d in (out, os.path.join(FIX, name)))
    for key in ("architectures", "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings", "type_vocab_size", "hidden_act", "layer_norm_eps",
                "hidden_dropout_prob", "attention_probs_dropout_prob", "id2label"):
        assert cfg.get(key) == ref_cfg.get(key), key
    tok = WordPieceTokenizer.load(out)
    fx = _ids()
    tok_name = "tok_uncased" if name == "classifier" else "tok_cased"
    np.testing.assert_array_equal(_encode(tok, fx)["pair"]["input_ids"], np.array(fx[tok_name]["pair"]["input_ids"]))
    assert os.path.isfile(os.path.join(out, "vocab.txt"))


def test_write_refuses_what_transformers_cannot_hold(tmp_path):
    imported = hf_bert.read(os.path.join(FIX, "mlm"))
    with pytest.raises(CheckpointError, match="no pooler"):
        hf_bert.write(str(tmp_path), imported.variables, imported.model, None, kind="classifier")
    with pytest.raises(ConfigError, match="kind is 'seq2seq'"):
        hf_bert.write(str(tmp_path), imported.variables, imported.model, None, kind="seq2seq")


# ---- attention-probability dropout --------------------------------------------------------------------------------
def test_attention_dropout():
    sizes = dict(name="bert", num_layers=2, hidden_size=32, num_heads=4, intermediate_size=37, vocab_size=50,
                 max_position=16)
    x = {"input_ids": jnp.arange(20).reshape(2, 10) % 50,
         "attention_mask": jnp.ones((2, 10), jnp.int32).at[1, 6:].set(0)}
    fused = build(dict(sizes, dropout_rate=0.0), 3)
    params = fused.init(jax.random.key(0), x)
    def run(model, train=False, key=0):
        return np.asarray(model.apply(params, x, train=train, rngs={"dropout": jax.random.key(key)}))
    dropped = build(dict(sizes, dropout_rate=0.0, attention_dropout_rate=0.3), 3)
    np.testing.assert_array_equal(run(dropped), run(fused))                 # evaluation: unchanged
    assert not np.allclose(run(dropped, True, 1), run(dropped, True, 2))    # training: the key matters
    np.testing.assert_array_equal(run(fused, True, 1), run(fused, True, 2))  # rate 0: it does not
    tiny = build(dict(sizes, dropout_rate=0.0, attention_dropout_rate=1e-9), 3)  # the explicit path, ~no dropout
    np.testing.assert_allclose(run(tiny, True, 1), run(fused), atol=1e-5)
