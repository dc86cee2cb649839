"""Hugging Face BERT folders in and out: `read(folder) -> Imported` and `write(out_dir, variables, model, ...)`.

A folder is what transformers' `save_pretrained` writes (or a hub snapshot): config.json, the weights
(model.safetensors, its sharded index, or pytorch_model.bin) and usually the tokenizer (vocab.txt or
tokenizer.json, tokenizer_config.json). Read: BertModel, BertForPreTraining, BertForMaskedLM and
BertForSequenceClassification state_dicts, with or without the `bert.` prefix, old LayerNorm `gamma`/`beta` names,
the output bias as `cls.predictions.bias` or `cls.predictions.decoder.bias` (or neither: zeros, as transformers
does). Written: the key names transformers' BertForSequenceClassification / BertForMaskedLM save.

One table, `_mapping`, gives every (HF key, ptft_jax path, layout) and serves both directions. Layouts: torch
Linear weights are [out, in] and flax kernels [in, out]; ptft_jax's query/key/value kernels are [H, heads, H/heads]
(biases [heads, H/heads]) and its attention output kernel [heads, H/heads, H].
"""
from __future__ import annotations

import json
import os

import numpy as np

from ptft_jax.errors import CheckpointError, ConfigError
from ptft_jax.interop.imported import Imported
from ptft_jax.interop.state_dict import read_state_dict, sha256
from ptft_jax.text.tokenizer import WordPieceTokenizer

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
_KINDS = {"BertModel": "bert", "BertForPreTraining": "bert_pretraining", "BertForMaskedLM": "bert_mlm",
          "BertForSequenceClassification": "bert_classifier"}
_ARCH = {"classifier": "BertForSequenceClassification", "mlm": "BertForMaskedLM"}


def _mapping(num_layers: int, pooler: bool, head: str | None):
    """[(HF key without the `bert.` prefix of the encoder, ptft_jax path, layout)]; head: None | classifier | mlm."""
    def dense(hf, ours, how="dense"):
        return [(f"{hf}.weight", f"{ours}/kernel", how), (f"{hf}.bias", f"{ours}/bias", "heads" if how == "heads_in"
                                                          else "copy")]

    def norm(hf, ours):
        return [(f"{hf}.weight", f"{ours}/scale", "copy"), (f"{hf}.bias", f"{ours}/bias", "copy")]

    rows = [("embeddings.word_embeddings.weight", "embeddings/word/embedding", "copy"),
            ("embeddings.position_embeddings.weight", "embeddings/position/embedding", "copy"),
            ("embeddings.token_type_embeddings.weight", "embeddings/token_type/embedding", "copy"),
            *norm("embeddings.LayerNorm", "embeddings/layer_norm")]
    for i in range(num_layers):
        hf, ours = f"encoder.layer.{i}", f"layer_{i}"
        for name in ("query", "key", "value"):
            rows += dense(f"{hf}.attention.self.{name}", f"{ours}/{name}", "heads_in")
        rows += dense(f"{hf}.attention.output.dense", f"{ours}/attention_out", "heads_out")
        rows += norm(f"{hf}.attention.output.LayerNorm", f"{ours}/attention_norm")
        rows += dense(f"{hf}.intermediate.dense", f"{ours}/intermediate")
        rows += dense(f"{hf}.output.dense", f"{ours}/output")
        rows += norm(f"{hf}.output.LayerNorm", f"{ours}/output_norm")
    if pooler:
        rows += dense("pooler.dense", "pooler")
    if head == "classifier":
        rows += dense("classifier", "head")
    elif head == "mlm":
        rows += dense("cls.predictions.transform.dense", "mlm/transform")
        rows += norm("cls.predictions.transform.LayerNorm", "mlm/layer_norm")
        rows += [("cls.predictions.bias", "mlm/bias", "copy")]
    return rows


def _to_ours(x, how, heads):
    if how == "dense":
        return x.T
    if how == "heads_in":      # [out=H, in] -> [in, heads, H/heads]
        return x.T.reshape(x.shape[1], heads, -1)
    if how == "heads":
        return x.reshape(heads, -1)
    if how == "heads_out":     # [out, in=H] -> [heads, H/heads, out]
        return x.T.reshape(heads, -1, x.shape[0])
    return x


def _to_hf(x, how):
    if how == "dense":
        return x.T
    if how == "heads_in":
        return x.reshape(x.shape[0], -1).T
    if how == "heads":
        return x.reshape(-1)
    if how == "heads_out":
        return x.reshape(-1, x.shape[-1]).T
    return x


def _check_config(cfg: dict, where: str):
    model_type = cfg.get("model_type")
    if model_type != "bert":
        raise ConfigError(f"hf:{where} is a {model_type or 'model without a model_type'} model; ptft_jax imports "
                          f"BERT (model_type bert).")
    checks = (("hidden_act", "gelu", ("gelu", "gelu_python"), "the erf GELU"),
              ("position_embedding_type", "absolute", ("absolute",), "absolute position embeddings"),
              ("layer_norm_eps", 1e-12, (1e-12,), "LayerNorm eps 1e-12"),
              ("is_decoder", False, (False,), "a bidirectional encoder"),
              ("problem_type", None, (None, "single_label_classification"), "single-label classification"))
    for key, default, allowed, what in checks:
        value = cfg.get(key, default)
        if value not in allowed:
            raise ConfigError(f"hf:{where} has {key} {value!r} in config.json, but ptft_jax's BERT has {what} "
                              f"({key} {allowed[0]!r}); it cannot reproduce this model.")
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        raise ConfigError(f"hf:{where} has hidden_size {cfg['hidden_size']} not divisible by its "
                          f"num_attention_heads {cfg['num_attention_heads']}.")


def _read_weights(folder: str):
    """(state_dict, the file read, its sha256); a sharded index reads every shard it names."""
    for name in WEIGHT_FILES:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        if not name.endswith(".index.json"):
            return read_state_dict(path), path, sha256(path)
        try:
            with open(path, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{path} is not a readable shard index ({e}).") from None
        state = {}
        for shard in shards:
            state.update(read_state_dict(os.path.join(folder, shard)))
        return state, path, sha256(path)
    raise CheckpointError(f"hf:{folder} holds no weights: none of {', '.join(WEIGHT_FILES)} is there.")


def _canonical(key: str) -> str:
    """The key as the mapping names it: no `bert.` prefix, LayerNorm weight/bias rather than gamma/beta."""
    key = key.removeprefix("bert.")
    if ".LayerNorm." in key or key.startswith("LayerNorm."):
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    return key


def _set(tree: dict, path: str, value):
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _get(tree: dict, path: str):
    for p in path.split("/"):
        tree = tree[p]
    return tree


def read(folder: str) -> Imported:
    """A transformers BERT folder as ptft_jax params (float32 NumPy), its sizes, kind, classes and tokenizer."""
    folder = os.path.abspath(os.path.expanduser(folder))
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        raise CheckpointError(f"hf:{folder} has no config.json; give a folder that transformers' save_pretrained "
                              f"wrote (or a hub snapshot), holding config.json and model.safetensors.")
    try:
        with open(config_file, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{config_file} is not readable JSON ({e}).") from None
    _check_config(cfg, folder)
    raw, path, digest = _read_weights(folder)
    state = {}
    for key, value in raw.items():
        state.setdefault(_canonical(key), value)
    notes = []
    if "cls.predictions.bias" not in state and "cls.predictions.decoder.bias" in state:
        state["cls.predictions.bias"] = state["cls.predictions.decoder.bias"]
    has_mlm = any(k.startswith("cls.predictions.transform.") for k in state)
    if has_mlm and "cls.predictions.bias" not in state:
        state["cls.predictions.bias"] = np.zeros(cfg["vocab_size"], np.float32)
        notes.append("the file has no masked-LM output bias (cls.predictions.bias): zeros, as transformers does")
    head = "classifier" if "classifier.weight" in state else "mlm" if has_mlm else None
    kind = ("bert_classifier" if head == "classifier" else
            "bert_pretraining" if head == "mlm" and "cls.seq_relationship.weight" in state else
            "bert_mlm" if head == "mlm" else "bert")
    layers, heads = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
    rows = _mapping(layers, "pooler.dense.weight" in state, head)
    missing = [k for k, _, _ in rows if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not the state_dict of a BERT with config.json's {layers} layers: it lacks "
                              f"{', '.join(missing[:3])}"
                              f"{f' and {len(missing) - 3} more keys' if len(missing) > 3 else ''}"
                              f" (it has e.g. {', '.join(sorted(raw)[:3])}).")
    params, used = {}, set()
    for key, ours, how in rows:
        value = _to_ours(np.asarray(state[key], np.float32), how, heads)
        _set(params, ours, np.ascontiguousarray(value))
        used.add(key)
    _check_shapes(params, cfg, path)
    decoder = state.get("cls.predictions.decoder.weight")
    if decoder is not None:
        if not np.array_equal(decoder, state["embeddings.word_embeddings.weight"]):
            raise CheckpointError(f"{path} has a masked-LM decoder (cls.predictions.decoder.weight) that is not tied "
                                  f"to the word embeddings; ptft_jax's BERT ties them.")
        used.add("cls.predictions.decoder.weight")
        notes.append("cls.predictions.decoder.weight: tied to embeddings/word/embedding (equal), not stored again")
    used.add("cls.predictions.decoder.bias")
    if "cls.seq_relationship.weight" in state:
        used |= {"cls.seq_relationship.weight", "cls.seq_relationship.bias"}
        notes.append("cls.seq_relationship (the next-sentence head) is not imported: ptft_jax has no such head")
    unused = sorted(k for k in state if k not in used and not k.endswith("position_ids"))
    if unused:
        notes.append(f"unused keys: {', '.join(unused)}")
    model = dict(num_layers=layers, hidden_size=int(cfg["hidden_size"]), num_heads=heads,
                 intermediate_size=int(cfg["intermediate_size"]), vocab_size=int(cfg["vocab_size"]),
                 max_position=int(cfg["max_position_embeddings"]), type_vocab_size=int(cfg.get("type_vocab_size", 2)),
                 dropout_rate=float(cfg.get("hidden_dropout_prob", 0.1)),
                 attention_dropout_rate=float(cfg.get("attention_probs_dropout_prob", 0.1)))
    num_classes = class_names = None
    if head == "classifier":
        num_classes = int(params["head"]["kernel"].shape[1])
        id2label = cfg.get("id2label") or {}
        names = tuple(str(id2label.get(str(i), id2label.get(i, ""))) for i in range(num_classes))
        if all(names) and names != tuple(f"LABEL_{i}" for i in range(num_classes)):
            class_names = names
        if cfg.get("classifier_dropout") not in (None, cfg.get("hidden_dropout_prob")):
            notes.append(f"classifier_dropout {cfg['classifier_dropout']} is not kept: ptft_jax's head dropout is "
                         f"dropout_rate {model['dropout_rate']}")
    tokenizer_dir = folder if any(os.path.isfile(os.path.join(folder, f)) for f in ("vocab.txt", "tokenizer.json")) \
        else None
    return Imported(variables={"params": params}, model=model, source=path, sha256=digest, kind=kind,
                    num_classes=num_classes, class_names=class_names, tokenizer_dir=tokenizer_dir, notes=notes)


def _check_shapes(params, cfg, path):
    h, v = cfg["hidden_size"], cfg["vocab_size"]
    want = {"embeddings/word/embedding": (v, h), "embeddings/position/embedding": (cfg["max_position_embeddings"], h),
            "embeddings/token_type/embedding": (cfg.get("type_vocab_size", 2), h),
            "layer_0/intermediate/kernel": (h, cfg["intermediate_size"])}
    if "mlm" in params:
        want["mlm/bias"] = (v,)
    for ours, shape in want.items():
        got = tuple(_get(params, ours).shape)
        if got != tuple(shape):
            raise CheckpointError(f"{path}: {ours} has shape {got} but config.json's sizes give {tuple(shape)}.")


def write(out_dir: str, variables: dict, model: dict, tokenizer_dir: str | None, kind: str = "classifier",
          class_names=None) -> str:
    """A folder transformers loads (AutoModelForSequenceClassification for kind "classifier", BertForMaskedLM for
    "mlm", AutoTokenizer): model.safetensors, config.json and the tokenizer files. Returns out_dir."""
    from safetensors.numpy import save_file

    if kind not in _ARCH:
        raise ConfigError.choice("kind", kind, _ARCH)
    params = variables.get("params", variables)
    layers = sum(1 for k in params if k.startswith("layer_"))
    heads = int(params["layer_0"]["query"]["kernel"].shape[1])
    pooler = kind == "classifier"
    if pooler and "pooler" not in params:
        raise CheckpointError("the model has no pooler (use_pooler=False); transformers' "
                              "BertForSequenceClassification needs one.")
    if kind == "classifier" and "head" not in params or kind == "mlm" and "mlm" not in params:
        raise CheckpointError(f"the params have no {'head' if kind == 'classifier' else 'mlm'}/ subtree; "
                              f"kind={kind!r} needs one.")
    state = {}
    for key, ours, how in _mapping(layers, pooler, kind):
        hf = key if key.startswith(("classifier.", "cls.")) else f"bert.{key}"
        state[hf] = np.ascontiguousarray(_to_hf(np.asarray(_get(params, ours), np.float32), how))
    word = params["embeddings"]["word"]["embedding"]
    hidden = int(word.shape[1])
    cfg = {"architectures": [_ARCH[kind]], "model_type": "bert", "vocab_size": int(word.shape[0]),
           "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
           "intermediate_size": int(params["layer_0"]["intermediate"]["kernel"].shape[1]),
           "max_position_embeddings": int(params["embeddings"]["position"]["embedding"].shape[0]),
           "type_vocab_size": int(params["embeddings"]["token_type"]["embedding"].shape[0]),
           "hidden_act": "gelu", "layer_norm_eps": 1e-12, "position_embedding_type": "absolute",
           "hidden_dropout_prob": float(model.get("dropout_rate", 0.1)),
           "attention_probs_dropout_prob": float(model.get("attention_dropout_rate", 0.0)),
           "initializer_range": 0.02, "tie_word_embeddings": True, "pad_token_id": 0}
    tok = WordPieceTokenizer.load(tokenizer_dir) if tokenizer_dir else None
    if tok is not None:
        cfg["pad_token_id"] = int(tok.pad_id)
    if kind == "classifier":
        n = int(params["head"]["kernel"].shape[1])
        names = [str(c) for c in class_names] if class_names else [f"LABEL_{i}" for i in range(n)]
        if len(names) != n:
            raise ConfigError(f"{len(names)} class names for a head of {n} classes.")
        cfg["id2label"] = {str(i): c for i, c in enumerate(names)}
        cfg["label2id"] = {c: i for i, c in enumerate(names)}
    os.makedirs(out_dir, exist_ok=True)
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
    if tok is not None:
        tok.save(out_dir, model_max_length=cfg["max_position_embeddings"])
    return out_dir
