"""Model registry: `build(config.model, num_classes)` returns a flax.linen Module whose head is named `head`."""
from __future__ import annotations

import dataclasses
import difflib

import jax.numpy as jnp

from ptft_jax.errors import ConfigError
from ptft_jax.models.bert import BertClassifier, BertForMLM
from ptft_jax.models.mlp import MLP
from ptft_jax.models.resnet import ResNet18, ResNet34, ResNet50, ResNet101

REGISTRY = {"mlp": MLP, "resnet18": ResNet18, "resnet34": ResNet34, "resnet50": ResNet50, "resnet101": ResNet101,
            "bert": BertClassifier, "bert_mlm": BertForMLM}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def build(model_config, num_classes: int | None = None, vocab_size: int | None = None, remat=False):
    """Builds the model named by `model_config.name` with the other keys as its fields.

    `remat` (train.remat: true or a jax.checkpoint_policies name) sets the model's `remat` field: a training
    choice, not part of the architecture (the params are the same), so it lives in config.train and the models
    built to predict, export or convert leave it off.

    `num_classes` and `vocab_size` (the tokenizer's) fill the model's fields of those names when the config
    leaves them unset (or None); a configured vocab_size smaller than the tokenizer's is an error (larger is
    allowed: e.g. a published checkpoint's vocabulary padded to a multiple of 8)."""
    kwargs = dict(model_config)
    name = kwargs.pop("name", None)
    if name not in REGISTRY:
        near = difflib.get_close_matches(str(name), REGISTRY, n=1)
        hint = f"did you mean {near[0]!r}?" if near else f"choose one of {', '.join(sorted(REGISTRY))}."
        raise ConfigError(f"Unknown model {name!r}: {hint}")
    cls = REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}
    for key in kwargs:
        if key not in fields:
            near = difflib.get_close_matches(key, fields, n=1)
            hint = f"did you mean 'model.{near[0]}'?" if near else f"valid: {', '.join(sorted(fields))}."
            raise ConfigError(f"Unknown config key 'model.{key}' for model {name!r}: {hint}")
    if "dtype" in kwargs and isinstance(kwargs["dtype"], str):
        if kwargs["dtype"] not in _DTYPES:
            raise ConfigError.choice("model.dtype", kwargs["dtype"], _DTYPES)
        kwargs["dtype"] = _DTYPES[kwargs["dtype"]]
    for key, value in kwargs.items():
        if isinstance(value, list):
            kwargs[key] = tuple(value)
    if remat:
        if "remat" not in fields:
            raise ConfigError(f"train.remat is not supported by model {name!r}; set train.remat=false.")
        kwargs["remat"] = remat
    if num_classes is not None and "num_classes" in fields and kwargs.get("num_classes") is None:
        kwargs["num_classes"] = num_classes
    if vocab_size is not None and "vocab_size" in fields:
        if kwargs.get("vocab_size") is None:
            kwargs["vocab_size"] = vocab_size
        elif int(kwargs["vocab_size"]) < vocab_size:
            raise ConfigError(f"model.vocab_size {kwargs['vocab_size']} is smaller than the tokenizer's {vocab_size} "
                              f"tokens; leave it unset to use the tokenizer's size.")
    return cls(**kwargs)


def count_params(params) -> int:
    import jax
    return sum(int(x.size) for x in jax.tree.leaves(params))
