"""Published weights end to end, on the fixtures made by torchvision and transformers (tests/fixtures/): convert ->
predict -> export round trips, and fine-tuning from `init_from=hf:DIR` / `torch:FILE`."""
import json
import os

import jax
import numpy as np
import pytest

import ptft_jax
from ptft_jax import models
from ptft_jax.convert import convert
from ptft_jax.export import export
from ptft_jax.interop import hf_bert, torch_resnet
from ptft_jax.interop.state_dict import read_state_dict, sha256
from ptft_jax.text.tokenizer import WordPieceTokenizer

from conftest import CONFIGS, ROOT

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
HF_CLASSIFIER = os.path.join(FIXTURES, "hf_bert", "classifier")
RESNET18 = os.path.join(FIXTURES, "torch_resnet", "resnet18_w4.safetensors")


def _words(n, seed=0):
    vocab = [w.strip() for w in open(os.path.join(HF_CLASSIFIER, "vocab.txt"))]
    words = [w for w in vocab if w.isalpha() and not w.startswith("[")]
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, 6)) for _ in range(n)]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_a_converted_torchvision_resnet_predicts_like_its_weights_and_exports_back(tmp_path):
    workdir = convert(f"torch:{RESNET18}", str(tmp_path / "run"), log=lambda *_: None)
    info = read_json(os.path.join(workdir, "data.json"))
    assert info["image_shape"] == [224, 224, 3] and info["mean"] == list(torch_resnet.IMAGENET_MEAN)
    images = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    probs = ptft_jax.predict(workdir, images)
    imp = torch_resnet.read(RESNET18)
    model = models.build(imp.model, imp.num_classes)
    x = (images / 255.0 - np.asarray(torch_resnet.IMAGENET_MEAN)) / np.asarray(torch_resnet.IMAGENET_STD)
    logits = model.apply(imp.variables, x.astype(np.float32), train=False)
    np.testing.assert_allclose(probs, jax.nn.softmax(logits), atol=1e-5)
    back = export(workdir, f"torch:{tmp_path / 'back.safetensors'}", log=lambda *_: None)
    a, b = read_state_dict(RESNET18), read_state_dict(back)
    assert sorted(a) == sorted(b)
    for key in a:
        if not key.endswith("num_batches_tracked"):  # BatchNorm's step counter: not kept, written as 0
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    with pytest.raises(ptft_jax.CheckpointError, match="holds a run already"):
        convert(f"torch:{RESNET18}", workdir)
    with pytest.raises(ptft_jax.UserError, match="is not hf:DIR or torch:FILE"):
        convert(RESNET18, str(tmp_path / "other"))
    assert not os.path.exists(tmp_path / "other")


def test_a_converted_hf_classifier_predicts_like_its_weights_and_exports_back(tmp_path):
    workdir = convert(f"hf:{HF_CLASSIFIER}", str(tmp_path / "run"), log=lambda *_: None)
    info = read_json(os.path.join(workdir, "data.json"))
    assert info["task"] == "classify_text" and info["class_names"] == ["negative", "neutral", "positive"]
    texts = _words(4)
    probs = ptft_jax.predict(workdir, texts)
    imp = hf_bert.read(HF_CLASSIFIER)
    tok = WordPieceTokenizer.load(HF_CLASSIFIER)
    model = models.build(dict(name="bert", **imp.model), imp.num_classes)
    logits = model.apply({"params": imp.variables["params"]}, tok.encode(texts, max_len=int(info["max_len"])))
    np.testing.assert_allclose(probs, jax.nn.softmax(logits), atol=1e-5)
    out = export(workdir, f"hf:{tmp_path / 'back'}", log=lambda *_: None)
    a = read_state_dict(os.path.join(HF_CLASSIFIER, "model.safetensors"))
    b = read_state_dict(os.path.join(out, "model.safetensors"))
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert read_json(os.path.join(out, "config.json"))["id2label"] == {"0": "negative", "1": "neutral",
                                                                      "2": "positive"}


@pytest.mark.slow
def test_finetune_from_a_hf_folder_takes_its_sizes_tokenizer_and_head(tmp_path):
    rows = tmp_path / "rows.csv"
    names = ("negative", "neutral", "positive")
    rows.write_text("text,label\n" + "".join(f"{t},{names[i % 3]}\n" for i, t in enumerate(_words(48, seed=1))))
    config = ptft_jax.load_config(os.path.join(CONFIGS, "hf_bert_finetune.py"), {
        "init_from": f"hf:{HF_CLASSIFIER}", "data.source": f"csv:{rows}", "model.dtype": "float32",
        "data.max_len": 16, "data.batch_size": 8, "data.eval_batch_size": 8, "train.steps": 4,
        "train.log_every": 4, "optim.warmup_epochs": None})
    result = ptft_jax.train(config, str(tmp_path / "ft"), log=lambda *_: None)
    assert result["step"] == 4
    report = read_json(tmp_path / "ft" / "graft.json")
    assert report["file_sha256"] == sha256(os.path.join(HF_CLASSIFIER, "model.safetensors"))
    actions = {r["path"]: r["action"] for r in report["rows"]}
    assert actions["params/head/kernel"] == "load" and actions["params/pooler/kernel"] == "load"
    saved = read_json(tmp_path / "ft" / "config.json")["model"]
    assert (saved["hidden_size"], saved["num_layers"], saved["vocab_size"]) == (32, 2, imp_vocab())
    assert read_json(tmp_path / "ft" / "data.json")["tokenizer_source"] == HF_CLASSIFIER


def imp_vocab():
    return hf_bert.read(HF_CLASSIFIER).model["vocab_size"]


@pytest.mark.slow
def test_finetune_from_a_torchvision_state_dict_grafts_batch_stats_and_a_new_head(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "imgs.npz", x=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
             y=np.arange(40) % 2)
    config = ptft_jax.load_config(os.path.join(CONFIGS, "torchvision_resnet_finetune.py"), {
        "init_from": f"torch:{RESNET18}", "data.source": f"npz:{tmp_path / 'imgs.npz'}", "model.dtype": "float32",
        "data.image_size": 32, "data.augment": "crop_flip", "data.batch_size": 8, "data.eval_batch_size": 8,
        "train.steps": 2, "train.log_every": 2})
    ptft_jax.train(config, str(tmp_path / "ft"), log=lambda *_: None)
    report = read_json(tmp_path / "ft" / "graft.json")
    actions = {r["path"]: r["action"] for r in report["rows"]}
    assert actions["params/head/kernel"] == "init" and actions["batch_stats/stem_bn/mean"] == "load"
    assert report["file_sha256"] == sha256(RESNET18)
    saved = read_json(tmp_path / "ft" / "config.json")["model"]
    assert (saved["name"], saved["width"], saved["bn_unbiased_var"]) == ("resnet18", 4, True)
