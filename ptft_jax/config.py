"""Configs: the defaults every recipe starts from, loading a recipe file, overrides and validation.

A recipe is a Python file whose `get_config(preset=None)` returns an `ml_collections.ConfigDict` built on
`defaults()` (or on another recipe's config: `recipe("NAME", preset)`). Overrides are `key.path=value` strings
(as on the command line) or a dict; a key that does not exist is an error naming it and the nearest valid keys.

`defaults()` is the whole schema: every key and its default, with the allowed values beside it in `CHOICES`
(enumerations), `TRI_STATE` (auto | true | false, normalised to those lowercase strings) and `RANGES` (numeric
bounds). `validate()` checks all of them, once, so the code that reads a validated config checks nothing again.
`durations(config, steps_per_epoch)` turns epochs and the None defaults into steps, in one place.

The override parser is our own on purpose: ml_collections' `config_flags` was tried and prints a traceback for a
bad key or value, cannot override a field whose default is None, and cannot add the open `model.*` keys.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import inspect
import json
import math
import os
import re
import sys
from typing import Any, Callable, Iterable, Mapping

import ml_collections

from ptft_jax.errors import ConfigError, UserError

# Keys whose value may be any mapping (checked elsewhere against the model's own fields).
_OPEN_SECTIONS = ("model",)


def defaults() -> ml_collections.ConfigDict:
    """Every key a config may have, with its default value."""
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({"name": "mlp"})  # other keys: the model's fields (see models/)
    c.data = ml_collections.ConfigDict(dict(
        source="mnist5k",        # images: mnist5k | digits | tfds:NAME | npz:PATH | folder:PATH[@HxW]
                                 # text (BERT): pydocs | pydocs_mlm | csv:PATH | jsonl:PATH | text:PATH |
                                 # tfds:NAME (see data/text_sources.py)
        data_dir=None,           # TFDS data_dir; default $TFDS_DATA_DIR or ~/tensorflow_datasets
        batch_size=128,          # global batch, split over every device of every process
        eval_batch_size=500,
        test_fraction=0.2,       # embedded sets: stratified split, seeded by split_seed
        val_fraction=None,       # carve a validation split out of the training split (stratified, seeded by
                                 # split_seed): evaluations during training run on it, the test split once at the end
        val_split=None,          # TFDS: the validation split instead, e.g. "train[90%:]" (with train_split
                                 # "train[:90%]")
        split_seed=0,
        train_split="train",     # TFDS split names
        test_split="test",
        classes=None,            # keep only these labels (renumbered 0..k-1 in this order)
        label_map=None,          # list: new label for each (kept) label, e.g. [0,0,0,0,0,1,1,1,1,1]
        train_per_class=None,    # keep only the first N training examples of each class (few-shot)
        in_memory="auto",        # auto | true | false: hold the splits as arrays in host memory
        device_resident="auto",  # auto | true | false: keep the training split on the devices (fast path)
        device_budget_mb=2048,   # "auto" puts a split on the devices when it is smaller than this
        mean=None,               # per-channel normalisation after scaling to [0, 1]; default: the dataset's
        std=None,
        augment=None,            # training augmentation on the host (NumPy, per (seed, step)): None | crop_flip
                                 # (pad, random crop, horizontal flip) | inception_crop (random-resized crop + flip)
        image_size=None,         # every image -> size x size: resized whole, or with inception_crop (which needs it)
                                 # shorter side to size/0.875 and centre-cropped (the evaluation view)
        crop_padding=4,          # crop_flip: zero padding on each side before the random crop
        crop_scale=(0.08, 1.0),  # inception_crop: range of the crop's area as a fraction of the image's
        flip=True,               # crop_flip / inception_crop: random horizontal flips (false for digits, text)
        vocab_size=8000,         # text: size of the WordPiece vocabulary trained on a fresh run's training texts
        max_len=128,             # text: tokens per sequence ([CLS] ... [SEP], padded; masked-LM: packed)
        lowercase=None,          # text: lower-case before WordPiece; None: the vocabulary's own do_lower_case
                                 # (True for a trained one); contradicting a vocabulary's is an error
        vocab=None,              # text: a BERT vocab.txt (or a folder holding one) instead of training one;
                                 # a run with init_from reuses that run's WORKDIR/tokenizer/ without it
        text_fields=None,        # text, tfds: the feature(s) holding the text: one name, or two for sentence
                                 # pairs; None: found by name (sentence1+sentence2, sentence, text, ...)
        max_documents=None,      # text: read at most this many examples (documents) of each split
        mask_prob=0.15,          # masked-LM: fraction of the tokens selected (80% [MASK], 10% random, 10% kept)
        whole_word=False,        # masked-LM: select whole words (a word and its ## pieces) rather than tokens
        stream="auto",           # masked-LM text:, jsonl:, tfds: sources: auto | true stream the training documents
                                 # from disk (read, tokenised, packed and masked per step: text/stream.py);
                                 # false tokenises them into memory first (the same batches); others never stream
        tokenizer_sample=100_000,  # text: a trained tokenizer sees at most this many training documents (seeded)
        max_test_documents=10_000,  # masked-LM text:, jsonl:, tfds: at most this many held-out documents are
                                 # packed (in memory) for the test split
        skip_bad_documents=False,  # text:, jsonl:: skip (and count, skipped_documents in metrics.jsonl) documents
                                 # that are not UTF-8 / not JSON, empty and unreadable files, instead of stopping
        num_workers=1,           # masked-LM streams: threads that read, tokenise, pack and mask the lanes
        num_threads=4,           # grain threads reading and batching on the host
        prefetch=8,              # batches read ahead of the step
        device_prefetch=1,       # chunks of batches (one jitted call's) waiting on the devices ahead of the step
    ))
    c.optim = ml_collections.ConfigDict(dict(
        name="sgd",              # sgd | adam | adamw
        lr=0.01,
        momentum=0.0,            # sgd only
        nesterov=False,
        b1=0.9, b2=0.999, eps=1e-8,
        weight_decay=0.0,        # decoupled for adamw, added to the gradient for sgd/adam; on `kernel`
                                 # leaves only (biases and BatchNorm scales/offsets do not decay)
        schedule="constant",     # constant | cosine (warmup then cosine decay to min_lr_ratio * lr)
        warmup_steps=0,
        warmup_epochs=None,      # warmup in epochs instead (converted to steps with the run's steps per epoch)
        min_lr_ratio=0.0,
        clip_norm=None,          # clip the global gradient norm to this value
    ))
    c.train = ml_collections.ConfigDict(dict(
        epochs=10,               # duration in epochs, unless `steps` is given
        steps=None,
        seed=0,                  # params init, data order and dropout
        log_every=50,            # steps between console lines and train metrics
        eval_every=None,         # steps between test evaluations; None: once per epoch
        checkpoint_every=None,   # steps between checkpoints; None: once per epoch, but not within
        checkpoint_min_secs=60,  # this many seconds of the last save (the last step and a stop signal always save)
        keep=3,                  # checkpoints kept
        keep_best=None,          # also keep the best checkpoint by a validation metric in WORKDIR/best:
                                 # "val/accuracy" (higher is better), "val/loss" (lower), ":max" / ":min" to say
                                 # which; the final test evaluation is then of that checkpoint (init_step="best")
        early_stop=None,         # stop after this many validation evaluations without improvement (of keep_best's
                                 # metric, else val/accuracy)
        steps_per_call=None,     # steps per jitted call; None: up to log_every, at most 256 MB of host batches
                                 # (1 for conv nets on CPU)
        label_smoothing=0.0,     # training loss targets: (1 - x) one-hot + x / classes
        mixup_alpha=0.0,         # > 0: mix each batch with its reverse, weight ~ Beta(alpha, alpha), in the step
        on_nonfinite="stop",     # stop | skip: a non-finite loss or gradient stops the run, or the step is skipped
        grad_accum=1,            # micro-batches per optimiser step: data.batch_size stays the batch of a step, each
                                 # device's share split in grad_accum parts run one after another (less activation
                                 # memory); gradients equal one step on the whole batch, except that BatchNorm
                                 # normalises each micro-batch on its own and dropout / mixup draw per micro-batch
        remat=False,             # recompute each block (BERT layer, ResNet block, MLP layer) in the backward pass
                                 # instead of keeping its activations: true, or a jax.checkpoint_policies name
                                 # (e.g. dots_with_no_batch_dims_saveable keeps the matmuls' outputs); same numbers
        compile_cache="auto",    # folder for compiled XLA executables, reused by later runs; auto:
                                 # ~/.cache/ptft_jax/xla on GPU/TPU, off on CPU; "": off (compile_cache.py)
    ))
    c.init_from = None           # fine-tuning: a pretrained run's workdir or one of its checkpoint step dirs
    c.init_step = None           # with a workdir in init_from: which step (default: latest; "best": its keep_best)
    c.graft = None               # fine-tuning: [(regex, "load"|"init"|"zero"), ...]; default: all but head load
    c.finetune = ml_collections.ConfigDict(dict(
        strategy="full",         # full | linear_probe (the head only) | bitfit (the head, biases and norm scales)
                                 # | lora (low-rank factors on frozen kernels, the head in full: lora.py)
        lr_mults=None,           # [(regex, multiplier), ...]
        layer_decay=None,        # lr *= layer_decay ** (depth from the head) for numbered blocks
        lora_rank=8,             # lora: the factors' rank r
        lora_alpha=16.0,         # lora: the update is (lora_alpha / lora_rank) * a @ b
        lora_targets=None,       # lora: regex over kernel paths; None: the model's default (lora.DEFAULT_TARGETS)
        lora_dropout=0.0,        # lora: only 0 (the factors are merged into the kernels inside the step)
    ))
    return c


# The allowed values of the keys that take one of a few (checked by validate(), which names the key and these).
TRI_STATE = ("auto", "true", "false")
CHOICES: dict[str, tuple] = {
    "optim.name": ("sgd", "adam", "adamw"),
    "optim.schedule": ("constant", "cosine"),
    "finetune.strategy": ("full", "linear_probe", "bitfit", "lora"),
    # jax.checkpoint_policies that take no arguments (tests/test_budget.py checks that jax has each).
    "train.remat": (False, True, "everything_saveable", "nothing_saveable", "dots_saveable",
                    "dots_with_no_batch_dims_saveable", "checkpoint_dots", "checkpoint_dots_with_no_batch_dims"),
    "train.on_nonfinite": ("stop", "skip"),
    "data.in_memory": TRI_STATE,
    "data.stream": TRI_STATE,
    "data.device_resident": TRI_STATE,
    "data.augment": (None, "crop_flip", "inception_crop"),
}
# Keys that take true / false or a name (validate() checks which, by CHOICES).
BOOL_OR_NAME_KEYS = ("train.remat",)
# Keys given as true/false or "auto" (any case, or a bool): validate() stores them as "auto" | "true" | "false".
TRI_STATE_KEYS = tuple(k for k, v in CHOICES.items() if v is TRI_STATE)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _real(v) -> bool:
    """A finite int or float (not a bool): NaN and infinity pass no range."""
    return _number(v) and math.isfinite(v)


def _whole(v) -> bool:
    """An int (not a bool): the keys that count steps, examples or checkpoints take no fractions."""
    return isinstance(v, int) and not isinstance(v, bool)


def _reals(v, holds=lambda x: True) -> bool:
    """A non-empty list or tuple of finite numbers, each of which `holds`."""
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(_real(x) and holds(x) for x in v)


_SEED_MAX = 2**32 - 1  # scikit-learn's split takes seeds 0..2**32-1, NumPy's generators no negative ones


# Numeric bounds: key -> (holds(value), the one-sentence error for a value that breaks it: the key, the value, the
# fix). `validate()` checks them before jax is imported, so a bad value fails at once and touches no workdir.
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "optim.lr": (lambda v: _real(v) and v > 0, "optim.lr must be positive, not {value}."),
    "optim.momentum": (lambda v: _real(v) and 0 <= v < 1,
                       "optim.momentum must be in [0, 1), not {value}: 0 is plain SGD, 0.9 the usual momentum."),
    "optim.b1": (lambda v: _real(v) and 0 <= v < 1,
                 "optim.b1 must be in [0, 1), not {value}: it is Adam's first-moment decay, usually 0.9."),
    "optim.b2": (lambda v: _real(v) and 0 <= v < 1,
                 "optim.b2 must be in [0, 1), not {value}: it is Adam's second-moment decay, usually 0.999."),
    "optim.eps": (lambda v: _real(v) and v > 0,
                  "optim.eps must be positive, not {value}: it keeps Adam's step finite, usually 1e-8."),
    "optim.weight_decay": (lambda v: _real(v) and v >= 0,
                           "optim.weight_decay must be 0 or more, not {value}: a negative decay grows the weights."),
    "optim.warmup_steps": (lambda v: _whole(v) and v >= 0,
                           "optim.warmup_steps must be a whole number of 0 or more, not {value}."),
    "optim.warmup_epochs": (lambda v: v is None or (_real(v) and v >= 0),
                            "optim.warmup_epochs must be 0 or more (or None for optim.warmup_steps), not {value}."),
    "optim.min_lr_ratio": (lambda v: _real(v) and 0 <= v <= 1,
                           "optim.min_lr_ratio must be in [0, 1], not {value}: it is the final learning rate as a "
                           "fraction of optim.lr."),
    "optim.clip_norm": (lambda v: v is None or (_real(v) and v > 0),
                        "optim.clip_norm must be positive (or None for no clipping), not {value}: e.g. 1.0."),
    "train.epochs": (lambda v: v is None or (_real(v) and v > 0),
                     "train.epochs must be positive (or None when train.steps is set), not {value}."),
    "train.steps": (lambda v: v is None or (_whole(v) and v >= 1),
                    "train.steps must be a whole number of at least 1 (or None to train train.epochs), not {value}."),
    "train.seed": (lambda v: _whole(v) and 0 <= v <= _SEED_MAX,
                   "train.seed must be a whole number from 0 to 2**32-1, not {value}."),
    "train.log_every": (lambda v: _whole(v) and v >= 1,
                        "train.log_every must be a whole number of at least 1, not {value}: it is the steps between "
                        "log lines."),
    "train.eval_every": (lambda v: v is None or (_whole(v) and v >= 1),
                         "train.eval_every must be a whole number of at least 1 (or None for once an epoch), "
                         "not {value}."),
    "train.checkpoint_every": (lambda v: v is None or (_whole(v) and v >= 1),
                               "train.checkpoint_every must be a whole number of at least 1 (or None for once an "
                               "epoch), not {value}."),
    "train.keep": (lambda v: _whole(v) and v >= 1,
                   "train.keep must be at least 1, not {value}: it is the number of checkpoints kept."),
    "train.steps_per_call": (lambda v: v is None or (_whole(v) and v >= 1),
                             "train.steps_per_call must be a whole number of at least 1 (or None to choose), "
                             "not {value}."),
    "train.grad_accum": (lambda v: _whole(v) and v >= 1,
                         "train.grad_accum must be a whole number of at least 1, not {value}: e.g. 4 runs each step "
                         "as 4 micro-batches."),
    "train.label_smoothing": (lambda v: _real(v) and 0 <= v < 1,
                              "train.label_smoothing must be in [0, 1), not {value}: e.g. 0.1, or 0 for none."),
    "train.mixup_alpha": (lambda v: _real(v) and v >= 0,
                          "train.mixup_alpha must be 0 or more, not {value}: e.g. 0.2, or 0 for no mixup."),
    "data.batch_size": (lambda v: _whole(v) and v >= 1,
                        "data.batch_size must be a whole number of at least 1, not {value}."),
    "data.eval_batch_size": (lambda v: _whole(v) and v >= 1,
                             "data.eval_batch_size must be a whole number of at least 1, not {value}."),
    "data.test_fraction": (lambda v: _real(v) and 0 < v < 1,
                           "data.test_fraction must be between 0 and 1 (exclusive), not {value}: e.g. 0.2 holds out "
                           "a fifth for testing."),
    "data.split_seed": (lambda v: _whole(v) and 0 <= v <= _SEED_MAX,
                        "data.split_seed must be a whole number from 0 to 2**32-1, not {value}."),
    "data.image_size": (lambda v: v is None or (_whole(v) and v >= 1),
                        "data.image_size must be a whole number of at least 1 (or None for the images' own size), "
                        "not {value}."),
    "data.mean": (lambda v: v is None or _reals(v),
                  "data.mean must be a list of finite numbers, one per channel (or None for the dataset's), "
                  "not {value}."),
    "data.std": (lambda v: v is None or _reals(v, lambda x: x > 0),
                 "data.std must be a list of positive numbers, one per channel (or None for the dataset's), "
                 "not {value}: a zero or negative std breaks the normalisation."),
    "data.mask_prob": (lambda v: _real(v) and 0.0 < v < 1.0,
                       "data.mask_prob {value} must be a number between 0 and 1 (BERT uses 0.15)."),
    "data.max_len": (lambda v: _whole(v) and v >= 3,
                     "data.max_len {value} leaves no room for text after [CLS] and [SEP]; use e.g. 128."),
    "data.max_documents": (lambda v: v is None or (_whole(v) and v >= 1),
                           "data.max_documents {value} must be at least 1 (or None for every document)."),
    "finetune.layer_decay": (lambda v: v is None or (_real(v) and 0 < v <= 1),
                             "finetune.layer_decay must be in (0, 1] (or None for none), not {value}: e.g. 0.8."),
    "finetune.lora_rank": (lambda v: _whole(v) and v >= 1,
                           "finetune.lora_rank must be a whole number of at least 1, not {value}: e.g. 8."),
    "finetune.lora_alpha": (lambda v: _real(v) and v > 0,
                            "finetune.lora_alpha must be positive, not {value}: e.g. 16 (the update is scaled by "
                            "lora_alpha / lora_rank)."),
    "finetune.lora_dropout": (lambda v: _real(v) and 0 <= v < 1,
                              "finetune.lora_dropout must be in [0, 1), not {value}."),
    "data.tokenizer_sample": (lambda v: _whole(v) and v >= 1,
                              "data.tokenizer_sample {value} must be a whole number of documents, at least 1."),
    "data.max_test_documents": (lambda v: v is None or (_whole(v) and v >= 1),
                                "data.max_test_documents {value} must be at least 1 (or None for every held-out "
                                "document)."),
    "data.num_workers": (lambda v: _whole(v) and 1 <= v <= 256,
                         "data.num_workers {value} must be a whole number from 1 to 256."),
    "data.val_fraction": (lambda v: v is None or (_real(v) and 0 < v < 1),
                          "data.val_fraction {value} must be between 0 and 1 (e.g. 0.1), or None for no validation "
                          "split."),
    "train.early_stop": (lambda v: v is None or (_whole(v) and v >= 1),
                         "train.early_stop {value} must be a whole number of evaluations, at least 1 (or None)."),
    "train.keep_best": (lambda v: v is None or (isinstance(v, str) and selection(v) is not None),
                        "train.keep_best {value} is not a validation metric; write val/accuracy, val/loss, "
                        "val/f1 or val/macro_f1, optionally with :max or :min."),
    "init_step": (lambda v: v is None or v == "best" or (_whole(v) and v >= 0),
                  "init_step {value} must be a checkpoint step (a whole number) or \"best\"."),
}

# data.source prefixes and what must follow them.
SOURCE_ARGUMENTS = {"npz:": "PATH", "folder:": "PATH[@HxW]", "csv:": "PATH", "jsonl:": "PATH", "text:": "PATH",
                    "tfds:": "NAME"}

SELECTABLE = ("accuracy", "loss", "f1", "macro_f1")  # the metrics an evaluation logs


def selection(spec: str | None) -> tuple[str, str] | None:
    """"val/accuracy" -> ("accuracy", "max"), "val/loss" -> ("loss", "min"), "val/loss:max" -> ("loss", "max");
    None when `spec` names no validation metric."""
    spec = spec or "val/accuracy"
    name, _, mode = spec.partition(":")
    split, _, metric = name.partition("/")
    if split != "val" or metric not in SELECTABLE or mode not in ("", "min", "max"):
        return None
    return metric, mode or ("min" if metric == "loss" else "max")


def flatten(cfg: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}: the config's dotted keys. Lists (graft rules), None values and
    empty sections stay leaves, unlike a pytree flattening (which drops None and descends into lists)."""
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, (ml_collections.ConfigDict, dict)) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _unknown_key(path: str, valid: Iterable[str]) -> ConfigError:
    valid = sorted(valid)
    parent, _, leaf = path.rpartition(".")
    siblings = [v for v in valid if v.rpartition(".")[0] == parent]
    near = difflib.get_close_matches(leaf, [s.rpartition(".")[2] for s in siblings], n=1, cutoff=0.6)
    near = [f"{parent}.{near[0]}" if parent else near[0]] if near else difflib.get_close_matches(path, valid, n=1)
    if near:
        hint = f"did you mean {near[0]!r}?"
    elif siblings:
        hint = f"valid keys there: {', '.join(siblings)}."
    else:
        hint = "see ptft_jax/config.py for the valid keys."
    return ConfigError(f"Unknown config key '{path}': {hint}")


def parse_value(text: str, current: Any, path: str) -> Any:
    """Parses a command-line override string into the type of the current value."""
    if path in BOOL_OR_NAME_KEYS:
        low = text.strip().lower()
        return {"true": True, "false": False}.get(low, text.strip())
    if isinstance(current, bool):
        low = text.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ConfigError(f"Config key '{path}' takes true or false, not {text!r}.")
    if isinstance(current, str) and text.strip().lower() not in ("none", "null"):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if current is None or isinstance(current, str):
            return text  # a bare string such as a path
        raise ConfigError(f"Config key '{path}' expects a {type(current).__name__}, not {text!r}.") from None
    return value


def _tri_state(value: Any) -> Any:
    """True / "TRUE" / "auto" ... -> "true" | "false" | "auto"; anything else is returned as is (validate() names
    it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.strip().lower() in TRI_STATE:
        return value.strip().lower()
    return value


def _check_type(path: str, current: Any, value: Any) -> Any:
    if path in TRI_STATE_KEYS:
        return _tri_state(value)
    if value is None or current is None or path in BOOL_OR_NAME_KEYS:
        return value
    if isinstance(current, bool) or isinstance(value, bool):
        if isinstance(current, bool) and isinstance(value, bool):
            return value
        raise ConfigError(f"Config key '{path}' takes true or false, not {value!r}.")
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    if isinstance(current, (int, float)) and isinstance(value, (int, float)):
        if isinstance(current, int) and isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"Config key '{path}' expects a whole number, not {value!r}.")
            return int(value)
        return value
    if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(current)(value)
    if isinstance(current, str) and isinstance(value, str):
        return value
    if type(current) is not type(value):
        raise ConfigError(
            f"Config key '{path}' expects a {type(current).__name__} (like {current!r}), not {value!r}.")
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
    """Returns a copy of `config` with overrides applied: a dict {"a.b": value} or a list of "a.b=value"."""
    config = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
    if not overrides:
        return config
    if isinstance(overrides, Mapping):
        items = [(k, v, False) for k, v in overrides.items()]
    else:
        items = []
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"Config override {item!r} has no '=': write it as key.path=value.")
            k, v = item.split("=", 1)
            items.append((k.strip(), v, True))
    flat = flatten(config)
    for path, value, is_text in items:
        parts = path.split(".")
        node = config
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
                raise _unknown_key(path, flat)
            node = node[part]
        leaf = parts[-1]
        open_section = parts[0] in _OPEN_SECTIONS and len(parts) == 2
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or (leaf not in node and not open_section):
            raise _unknown_key(path, flat)
        current = node.get(leaf)
        if is_text:
            value = parse_value(value, current, path)
        node[leaf] = _check_type(path, current, value)
    return config


def _complete(config) -> ml_collections.ConfigDict:
    """Checks every key against `defaults()` and fills in missing ones (types as the defaults'); a new ConfigDict."""
    if isinstance(config, Mapping) and not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(config)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"A config must be an ml_collections.ConfigDict or a dict, not {type(config).__name__}.")
    base = defaults()
    valid = flatten(base)
    given = {}
    for path, value in flatten(config).items():
        if path.split(".")[0] in _OPEN_SECTIONS:
            given[path] = value
            continue
        if path not in valid:
            # A section given as a whole value (e.g. graft as a list) is fine when the default is a leaf.
            raise _unknown_key(path, valid)
        given[path] = value
    return apply_overrides(base, given)


def _check_values(config):
    """The schema's allowed values (CHOICES, RANGES) and the rules between keys; raises the first violation."""
    flat = flatten(config)
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError.choice(key, flat[key], allowed)
    for key, (holds, message) in RANGES.items():
        if not holds(flat[key]):
            raise ConfigError(message.format(value=_show(flat[key])))
    if config.train.steps is None and config.train.epochs is None:
        raise ConfigError("train.steps and train.epochs are both None, so the run has no length; set one of them, "
                          "e.g. train.epochs=10.")
    d, t = config.data, config.train
    if (t.keep_best or t.early_stop) and not (d.val_fraction or d.val_split):
        key = "train.keep_best" if t.keep_best else "train.early_stop"
        raise ConfigError(f"{key} selects on a validation split, and this config has none: set data.val_fraction "
                          f"(e.g. 0.1) or, for TFDS, data.val_split.")
    if d.val_split and not str(d.source).startswith("tfds:"):
        raise ConfigError(f"data.val_split names a TFDS split, and data.source {d.source} is not TFDS; use "
                          f"data.val_fraction (e.g. 0.1) to carve a validation split out of the training data.")
    if d.val_fraction and d.val_split:
        raise ConfigError("data.val_fraction and data.val_split both name a validation split; set one of them.")
    if d.batch_size % t.grad_accum:
        raise ConfigError(f"data.batch_size {d.batch_size} is not divisible by train.grad_accum {t.grad_accum}; "
                          f"choose a grad_accum that divides the batch (per device, too).")
    if config.data.augment == "inception_crop" and not config.data.image_size:
        raise ConfigError("data.augment=inception_crop needs data.image_size (e.g. 224), the size of the crops.")
    _check_source(config.data.source)
    _check_classes(config.data.classes, config.data.label_map)
    if config.graft is not None:
        normalize_rules(config.graft)
    if config.finetune.lr_mults is not None:
        lr_mult_rules(config.finetune.lr_mults)
    _check_lora(config.finetune)
    if config.finetune.strategy == "lora" and not config.init_from:
        raise ConfigError("finetune.strategy=lora adapts a pretrained model, and init_from is not set; point "
                          "init_from at a pretraining run (or hf:DIR / torch:FILE), or use finetune.strategy=full.")


def _check_lora(finetune):
    """finetune.lora_targets (a regex, or None for the model's default) and lora_dropout (only 0)."""
    t = finetune.lora_targets
    if t is not None:
        if not isinstance(t, str) or not t:
            raise ConfigError(f"finetune.lora_targets must be a regex over kernel paths (a string) or None for the "
                              f"model's default, not {_show(t)}: e.g. 'layer_\\d+/(query|value)/kernel'.")
        try:
            re.compile(t)
        except re.error as e:
            raise ConfigError(f"finetune.lora_targets regex {t!r} does not compile ({e}); fix the pattern, e.g. "
                              f"'layer_\\d+/(query|value)/kernel'.") from None
    if finetune.strategy == "lora" and finetune.lora_dropout:
        raise ConfigError(f"finetune.lora_dropout {finetune.lora_dropout} is not supported (the factors are merged "
                          f"into the kernels inside the step, so there is no x @ a path to drop out); set "
                          f"finetune.lora_dropout=0.0.")


def _show(value) -> str:
    """A value as a message shows it: lists of a ConfigDict as lists, strings quoted."""
    if isinstance(value, (list, tuple)):
        return repr(list(value))
    return repr(value) if isinstance(value, str) else str(value)


def _check_source(source):
    """`npz:` with nothing after it would read the path '' ("error:  does not exist"): say what the prefix needs."""
    source = str(source)
    for prefix, argument in SOURCE_ARGUMENTS.items():
        rest = source[len(prefix):] if source.startswith(prefix) else None
        if prefix == "folder:" and rest is not None:
            rest = re.sub(r"@\d+x\d+$", "", rest)
        if rest is not None and not rest.strip():
            what = "a dataset name" if argument == "NAME" else "a path"
            raise ConfigError(f"data.source {source!r} needs {what} after the colon: write {prefix}{argument}.")


def _class_indices(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(_whole(x) and x >= 0 for x in v)


def _check_classes(classes, label_map):
    """data.classes and data.label_map: class indices, at least two classes kept (one class trains to loss 0 and
    accuracy 1 and learns nothing), and a label_map that numbers its new labels 0..k-1 (a gap is an empty class)."""
    if classes is not None:
        if not _class_indices(classes):
            raise ConfigError(f"data.classes must be a list of class indices (whole numbers 0 or more), not "
                              f"{_show(classes)}: e.g. [0, 1, 2].")
        if len(set(classes)) != len(classes):
            raise ConfigError(f"data.classes {_show(classes)} names a class twice; list each kept class once.")
        if len(classes) < 2:
            raise ConfigError(f"data.classes {_show(classes)} keeps only class {classes[0]}, and a classifier of one "
                              f"class learns nothing: keep at least 2, e.g. data.classes=[{classes[0]}, "
                              f"{1 if classes[0] == 0 else 0}].")
    if label_map is not None:
        if not _class_indices(label_map):
            raise ConfigError(f"data.label_map must give a new label (a whole number 0 or more) to each class, not "
                              f"{_show(label_map)}: e.g. [0, 0, 1, 1].")
        used = set(label_map)
        if len(used) < 2:
            raise ConfigError(f"data.label_map {_show(label_map)} maps every class to label {label_map[0]}, and a "
                              f"classifier of one class learns nothing: map the classes to at least 2 labels, "
                              f"e.g. [0, 0, 1, 1].")
        gap = min(set(range(max(used) + 1)) - used, default=None)
        if gap is not None:
            raise ConfigError(f"data.label_map {_show(label_map)} leaves label {gap} unused, an empty class; number "
                              f"the new labels 0..k-1 without gaps.")


def lr_mult_rules(rules) -> list[tuple[re.Pattern, float]]:
    """finetune.lr_mults as (compiled regex, multiplier) pairs; a bad entry is a ConfigError naming it (checked by
    validate(); optim.path_multipliers uses the result)."""
    if not isinstance(rules, (list, tuple)):
        raise ConfigError(f"finetune.lr_mults must be a list of (regex, multiplier) pairs, not {_show(rules)}: "
                          f"e.g. [('dense_.*', 0.1)].")
    out = []
    for rule in rules:
        if not isinstance(rule, (list, tuple)) or len(rule) != 2:
            raise ConfigError(f"finetune.lr_mults entry {_show(rule)} is not a (regex, multiplier) pair; write "
                              f"e.g. ('dense_.*', 0.1).")
        pattern, mult = str(rule[0]), rule[1]
        try:
            compiled = re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"finetune.lr_mults regex {pattern!r} does not compile ({e}); fix the pattern, "
                              f"e.g. 'dense_.*'.") from None
        if not _real(mult) or mult < 0:
            raise ConfigError(f"finetune.lr_mults multiplier {mult!r} for {pattern!r} must be a number of 0 or "
                              f"more (0 freezes those leaves), e.g. 0.1.")
        out.append((compiled, float(mult)))
    return out


GRAFT_ACTIONS = ("load", "init", "zero", "skip", "load_or_init", "load_if_fits")  # see graft.py
DEFAULT_RULES = (("head/.*", "init"), (".*", "load"))  # config.graft None: everything but the head loads


def normalize_rules(rules) -> list[tuple[str, str]]:
    rules = DEFAULT_RULES if rules is None else rules
    out = []
    for rule in rules:
        if not isinstance(rule, (list, tuple)) or len(rule) != 2:
            raise ConfigError(f"Graft rule {rule!r} is not a (regex, action) pair; write e.g. ('head/.*', 'init').")
        pattern, action = str(rule[0]), str(rule[1])
        if action not in GRAFT_ACTIONS:
            raise ConfigError(f"Graft rule {rule!r} has action {action!r}; use one of {', '.join(GRAFT_ACTIONS)}.")
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"Graft rule regex {pattern!r} does not compile ({e}).") from None
        out.append((pattern, action))
    return out


def validate(config) -> ml_collections.ConfigDict:
    """Checks every key against `defaults()`, fills in missing ones and checks the values against the schema
    (CHOICES, TRI_STATE, RANGES); returns a new ConfigDict, with the tri-state keys as "auto" | "true" | "false"."""
    config = _complete(config)
    _check_values(config)
    return config


def warmup_steps(optim_cfg, steps_per_epoch: int | None = None) -> int:
    """optim.warmup_steps, or optim.warmup_epochs converted to steps (the one place that converts it)."""
    if optim_cfg.get("warmup_epochs"):
        if not steps_per_epoch:
            raise ConfigError("optim.warmup_epochs needs the steps per epoch; set optim.warmup_steps instead.")
        return int(round(optim_cfg.warmup_epochs * steps_per_epoch))
    return int(optim_cfg.warmup_steps)


@dataclasses.dataclass(frozen=True)
class Durations:
    """A run's lengths in steps: train.steps/epochs, the warmup, and the log / eval / checkpoint intervals."""
    total_steps: int
    warmup_steps: int
    log_every: int
    eval_every: int
    checkpoint_every: int


def durations(config, steps_per_epoch: int) -> Durations:
    """`config`'s durations in steps: train.steps (else train.epochs x steps_per_epoch, rounded), optim.warmup_steps
    (else optim.warmup_epochs x steps_per_epoch), and train.eval_every / checkpoint_every (None: once an epoch)."""
    t = config.train
    if t.steps is not None:
        total = int(t.steps)
    else:
        total = int(round(t.epochs * steps_per_epoch)) if t.epochs is not None else 0
    if total <= 0:
        raise ConfigError("train.steps / train.epochs give no training steps; set a positive duration.")
    return Durations(total_steps=total, warmup_steps=warmup_steps(config.optim, steps_per_epoch),
                     log_every=int(t.log_every), eval_every=int(t.eval_every or steps_per_epoch),
                     checkpoint_every=int(t.checkpoint_every or steps_per_epoch))


def _exception(e: BaseException) -> str:
    """'ValueError: the message' on one line (a message's newlines would break the one `error:` line)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def import_config_module(path: str):
    """Imports a recipe file as a module; a missing, wrong or broken file is a ConfigError."""
    if os.path.isdir(path):
        raise ConfigError(f"Config file {path!r} is a directory: pass a recipe file, --config=configs/NAME.py.")
    if not os.path.exists(path):
        raise ConfigError(f"Config file {path!r} does not exist: pass --config=configs/NAME.py (see configs/).")
    if not os.path.isfile(path) or not path.endswith(".py"):
        raise ConfigError(f"Config file {path!r} is not a Python file: pass a recipe .py file that defines "
                          f"get_config(), --config=configs/NAME.py.")
    name = "ptft_config_" + os.path.splitext(os.path.basename(path))[0]
    try:
        spec_ = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec_)
        spec_.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any failure in user code is reported as one sentence
        raise ConfigError(f"Config file {path!r} failed to import ({_exception(e)}); fix the file.") from e
    return module


def _takes_preset(get_config) -> bool:
    try:
        inspect.signature(get_config).bind("preset")
    except (TypeError, ValueError):
        return False
    return True


def call_get_config(module, path: str, preset: str | None = None):
    """`module.get_config(preset)` (or without a preset); what it raises is a ConfigError naming the file: a preset
    its signature cannot take, or whatever its code raised (a TypeError inside it is the code's, not the preset's)."""
    if not hasattr(module, "get_config"):
        raise ConfigError(f"Config file {path!r} has no get_config() function; define one returning a ConfigDict.")
    if preset and not _takes_preset(module.get_config):
        raise ConfigError(f"Config file {path!r}: get_config() does not take the preset {preset!r}; drop "
                          f"':{preset}' or define get_config(preset=None).")
    try:
        return module.get_config(preset) if preset else module.get_config()
    except UserError:
        raise  # e.g. recipe() naming a missing file: already one sentence
    except Exception as e:  # noqa: BLE001 - any failure in user code is reported as one sentence
        raise ConfigError(f"Config file {path!r}: get_config() raised {_exception(e)}; fix the file.") from e


def recipe(name: str, preset: str | None = None) -> ml_collections.ConfigDict:
    """Another recipe's config, for a recipe built on it: `c = recipe("bert_sst2_finetune", preset)`.

    `name` is a recipe file (".py" optional), relative to the folder of the recipe that calls this, or a path."""
    if not name.endswith(".py"):
        name += ".py"
    caller = sys._getframe(1).f_globals.get("__file__")
    path = os.path.join(os.path.dirname(os.path.abspath(caller)) if caller else os.getcwd(), name)
    return call_get_config(import_config_module(path), path, preset)


def load_config(spec: str, overrides=None) -> ml_collections.ConfigDict:
    """Loads `path/to/recipe.py[:preset]`, applies overrides and validates the result."""
    path, _, preset = spec.partition(":")
    config = call_get_config(import_config_module(path), path, preset or None)
    return validate(apply_overrides(_complete(config), overrides))


def to_json(config) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
