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
import json
import os
import re
import sys
from typing import Any, Callable, Iterable, Mapping

import ml_collections

from ptft_jax.errors import ConfigError

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
        compile_cache="auto",    # folder for compiled XLA executables, reused by later runs; auto:
                                 # ~/.cache/ptft_jax/xla on GPU/TPU, off on CPU; "": off (compile_cache.py)
    ))
    c.init_from = None           # fine-tuning: a pretrained run's workdir or one of its checkpoint step dirs
    c.init_step = None           # with a workdir in init_from: which step (default: latest; "best": its keep_best)
    c.graft = None               # fine-tuning: [(regex, "load"|"init"|"zero"), ...]; default: all but head load
    c.finetune = ml_collections.ConfigDict(dict(
        strategy="full",         # full | linear_probe
        lr_mults=None,           # [(regex, multiplier), ...]
        layer_decay=None,        # lr *= layer_decay ** (depth from the head) for numbered blocks
    ))
    return c


# The allowed values of the keys that take one of a few (checked by validate(), which names the key and these).
TRI_STATE = ("auto", "true", "false")
CHOICES: dict[str, tuple] = {
    "optim.name": ("sgd", "adam", "adamw"),
    "optim.schedule": ("constant", "cosine"),
    "finetune.strategy": ("full", "linear_probe"),
    "train.on_nonfinite": ("stop", "skip"),
    "data.in_memory": TRI_STATE,
    "data.device_resident": TRI_STATE,
    "data.augment": (None, "crop_flip", "inception_crop"),
}
# Keys given as true/false or "auto" (any case, or a bool): validate() stores them as "auto" | "true" | "false".
TRI_STATE_KEYS = tuple(k for k, v in CHOICES.items() if v is TRI_STATE)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# Numeric bounds: key -> (holds(value), the one-sentence error for a value that breaks it).
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "optim.lr": (lambda v: _number(v) and v > 0, "optim.lr must be positive, not {value}."),
    "data.mask_prob": (lambda v: _number(v) and 0.0 < v < 1.0,
                       "data.mask_prob {value} must be a number between 0 and 1 (BERT uses 0.15)."),
    "data.max_len": (lambda v: _number(v) and v >= 3,
                     "data.max_len {value} leaves no room for text after [CLS] and [SEP]; use e.g. 128."),
    "data.max_documents": (lambda v: v is None or (_number(v) and v >= 1),
                           "data.max_documents {value} must be at least 1 (or None for every document)."),
    "data.val_fraction": (lambda v: v is None or (_number(v) and 0 < v < 1),
                          "data.val_fraction {value} must be between 0 and 1 (e.g. 0.1), or None for no validation "
                          "split."),
    "train.early_stop": (lambda v: v is None or (_number(v) and v >= 1 and float(v).is_integer()),
                         "train.early_stop {value} must be a whole number of evaluations, at least 1 (or None)."),
    "train.keep_best": (lambda v: v is None or (isinstance(v, str) and selection(v) is not None),
                        "train.keep_best {value!r} is not a validation metric; write val/accuracy, val/loss, "
                        "val/f1 or val/macro_f1, optionally with :max or :min."),
    "init_step": (lambda v: v is None or v == "best" or (_number(v) and v >= 0 and float(v).is_integer()),
                  "init_step {value!r} must be a checkpoint step (a whole number) or \"best\"."),
}

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
    if value is None or current is None:
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
            raise ConfigError(message.format(value=flat[key]))
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
    if config.data.augment == "inception_crop" and not config.data.image_size:
        raise ConfigError("data.augment=inception_crop needs data.image_size (e.g. 224), the size of the crops.")
    if config.graft is not None:
        normalize_rules(config.graft)


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


def import_config_module(path: str):
    """Imports a recipe file as a module; a missing or broken file is a ConfigError."""
    if not os.path.isfile(path):
        raise ConfigError(f"Config file {path!r} does not exist: pass --config=configs/NAME.py (see configs/).")
    name = "ptft_config_" + os.path.splitext(os.path.basename(path))[0]
    try:
        spec_ = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec_)
        spec_.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any failure in user code is reported as one sentence
        raise ConfigError(f"Config file {path!r} failed to import ({type(e).__name__}: {e}); fix the file.") from e
    return module


def recipe(name: str, preset: str | None = None) -> ml_collections.ConfigDict:
    """Another recipe's config, for a recipe built on it: `c = recipe("bert_sst2_finetune", preset)`.

    `name` is a recipe file (".py" optional), relative to the folder of the recipe that calls this, or a path."""
    if not name.endswith(".py"):
        name += ".py"
    caller = sys._getframe(1).f_globals.get("__file__")
    path = os.path.join(os.path.dirname(os.path.abspath(caller)) if caller else os.getcwd(), name)
    module = import_config_module(path)
    return module.get_config(preset) if preset is not None else module.get_config()


def load_config(spec: str, overrides=None) -> ml_collections.ConfigDict:
    """Loads `path/to/recipe.py[:preset]`, applies overrides and validates the result."""
    path, _, preset = spec.partition(":")
    module = import_config_module(path)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"Config file {path!r} has no get_config() function; define one returning a ConfigDict.")
    try:
        config = module.get_config(preset) if preset else module.get_config()
    except TypeError as e:
        raise ConfigError(f"Config file {path!r}: get_config() does not take the preset {preset!r} ({e}).") from e
    return validate(apply_overrides(_complete(config), overrides))


def to_json(config) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
