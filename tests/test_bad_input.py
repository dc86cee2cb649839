"""Every bad value of issue 19 (items 1, 8, 9, 10) gets one sentence: a UserError whose one-line message starts
with what it names, raised by validate() wherever a config value can be checked there (before jax is imported),
else when the run is built (load_config for the recipe file itself), and an existing run's workdir pointed at by
the bad run is left byte for byte as it was. A few cases also go through the real command line: one `error:`
line, the same sentence, exit status 2, no traceback."""
import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest

import ptft_jax
from ptft_jax import config as config_lib

from conftest import CONFIGS, DIGITS, copy_run, digits_images, launch, quiet

TEXT = os.path.join(CONFIGS, "pydocs_bert_finetune.py")  # a text classifier (bert); init_from unset below


@dataclasses.dataclass
class Bad:
    id: str
    over: tuple = ()          # key=value overrides, as on the command line ({tmp}: the case's folder)
    starts: str = ""          # the message starts with what it names
    phrase: str = ""          # and says this
    fires: str = "validate"   # validate | load (the recipe file, in load_config) | run (when train builds the run)
    spec: str = DIGITS        # the recipe ({tmp}: the case's folder)
    files: object = None      # makes the case's files in {tmp}
    cli: bool = False         # also through launch.py
    shows: str | None = None  # the bad value, as the message shows it
    slow: bool = False        # over 10 s (a command line that imports jax)


def _range(key, value, phrase, cli=False):
    """A config value that validate() refuses, the message naming the key and the value."""
    return Bad(f"{key}={value}", (f"{key}={value}",), key, phrase, cli=cli, shows=str(value))


# --- the cases' files --------------------------------------------------------------------------------------------

def _recipe(body):
    def make(tmp):
        (tmp / "recipe.py").write_text("from ptft_jax.config import defaults\n\n\n" + body)
    return make


def _npz_one_class(tmp):
    x, _ = digits_images(40)
    np.savez(tmp / "one.npz", x=x, y=np.zeros(40, np.int64))


def _folder_one_class(tmp):
    from PIL import Image
    (tmp / "pets" / "cat").mkdir(parents=True)
    for i, img in enumerate(digits_images(10)[0]):
        Image.fromarray(img[..., 0]).save(tmp / "pets" / "cat" / f"{i}.png")


def _csv(rows):
    def make(tmp):
        (tmp / "texts.csv").write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows))
    return make


def _jsonl_empty_text(tmp):
    rows = [{"text": "a fine day", "label": 0}, {"text": "  ", "label": 1}, {"text": "a bad day", "label": 1}]
    (tmp / "texts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


_TEXT_RUN = ("init_from=None", "graft=None", "data.max_len=16")
_WORDS = [f"word{i} and more words" for i in range(12)]

CASES = [
    # 1: checkpoints kept
    _range("train.keep", 0, "at least 1", cli=True),
    _range("train.keep", -1, "at least 1"),
    # 8: values that trained wrongly without a word
    _range("train.checkpoint_every", -1, "at least 1"),
    _range("train.checkpoint_every", 0, "at least 1"),
    _range("train.eval_every", -1, "at least 1"),
    _range("train.eval_every", 0, "at least 1"),
    _range("train.log_every", -1, "at least 1"),
    _range("train.steps", 0, "at least 1"),
    _range("train.steps", -5, "at least 1"),
    _range("train.epochs", 0, "must be positive"),
    _range("train.epochs", -1, "must be positive"),
    Bad("train.steps=train.epochs=None", ("train.steps=None", "train.epochs=None"), "train.steps", "both None"),
    _range("data.label_map", "[-1, 0, 0, 0, 0, 1, 1, 1, 1, 1]", "whole number 0 or more"),
    _range("data.label_map", "[0, 0, 0, 0, 0, 1, 1, 1, 1, 0.5]", "whole number 0 or more"),
    _range("data.label_map", "[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]", "one class"),
    _range("data.label_map", "[0, 0, 0, 0, 0, 2, 2, 2, 2, 2]", "leaves label 1 unused"),
    _range("data.classes", "[3]", "one class"),
    _range("train.label_smoothing", "1.0", "[0, 1)"),
    _range("train.label_smoothing", "-0.1", "[0, 1)"),
    _range("optim.clip_norm", 0, "must be positive"),
    _range("optim.clip_norm", "-1.0", "must be positive"),
    _range("finetune.layer_decay", 0, "(0, 1]"),
    _range("finetune.layer_decay", "1.5", "(0, 1]"),
    _range("train.mixup_alpha", "-0.2", "0 or more"),
    _range("data.std", "[0.0]", "positive numbers"),
    _range("data.std", "[-0.4]", "positive numbers"),
    _range("optim.momentum", "1.0", "[0, 1)"),
    _range("optim.momentum", "-0.1", "[0, 1)"),
    _range("optim.b1", "1.0", "[0, 1)"),
    _range("optim.b2", "-0.1", "[0, 1)"),
    _range("optim.eps", "0.0", "must be positive"),
    _range("optim.weight_decay", "-0.01", "0 or more"),
    _range("optim.min_lr_ratio", "1.5", "[0, 1]"),
    _range("optim.min_lr_ratio", "-0.1", "[0, 1]"),
    _range("optim.warmup_steps", -1, "0 or more"),
    _range("optim.warmup_epochs", "-1.0", "0 or more"),
    Bad("one-class-npz", ("data.source=npz:{tmp}/one.npz",), "{tmp}/one.npz", "every training example is of class 0",
        "run", files=_npz_one_class),
    Bad("one-class-folder", ("data.source=folder:{tmp}/pets",), "data.source folder:{tmp}/pets",
        "every training example is of class 'cat'", "run", files=_folder_one_class),
    Bad("one-class-csv", ("data.source=csv:{tmp}/texts.csv", *_TEXT_RUN), "{tmp}/texts.csv",
        "every training example is of class 'pos'", "run", TEXT, _csv([(w, "pos") for w in _WORDS])),
    Bad("class-without-examples", ("data.classes=[3, 42]",), "data.source digits", "keep class 42", "run"),
    Bad("empty-text-csv", ("data.source=csv:{tmp}/texts.csv", *_TEXT_RUN), "{tmp}/texts.csv",
        "line 4 has an empty text", "run", TEXT, _csv([("good", "pos"), ("bad", "neg"), ("", "pos"), ("ok", "neg")])),
    Bad("empty-text-jsonl", ("data.source=jsonl:{tmp}/texts.jsonl", *_TEXT_RUN), "{tmp}/texts.jsonl",
        "line 2 has an empty text", "run", TEXT, _jsonl_empty_text),
    # 9: tracebacks before
    _range("data.batch_size", 0, "at least 1"),
    _range("data.batch_size", -1, "at least 1"),
    _range("data.eval_batch_size", 0, "at least 1"),
    _range("train.log_every", 0, "at least 1"),
    _range("train.steps_per_call", -1, "at least 1"),
    _range("train.seed", -1, "from 0 to 2**32-1"),
    _range("data.split_seed", -1, "from 0 to 2**32-1"),
    _range("data.test_fraction", "0.0", "between 0 and 1"),
    _range("data.test_fraction", "1.5", "between 0 and 1"),
    _range("data.image_size", -8, "at least 1"),
    Bad("model.hidden=(0,)", ("model.hidden=(0,)",), "model.hidden", "at least 1, not (0,)", "run"),
    Bad("model.hidden=(0,)-cli", ("model.hidden=(0,)",), "model.hidden", "at least 1, not (0,)", "run", cli=True,
        slow=True),
    Bad("model.hidden=(-1,)", ("model.hidden=(-1,)",), "model.hidden", "at least 1, not (-1,)", "run"),
    Bad("model.hidden=(1.5,)", ("model.hidden=(1.5,)",), "model.hidden", "at least 1, not (1.5,)", "run"),
    Bad("lr_mults-bad-regex", ("finetune.lr_mults=[('dense_(', 0.1)]",), "finetune.lr_mults", "does not compile",
        shows="'dense_('"),
    Bad("lr_mults-not-a-number", ("finetune.lr_mults=[('dense_.*', 'x')]",), "finetune.lr_mults",
        "must be a number of 0 or more", shows="'x'"),
    Bad("lr_mults-negative", ("finetune.lr_mults=[('dense_.*', -1.0)]",), "finetune.lr_mults",
        "must be a number of 0 or more", shows="-1.0"),
    # issue 15: LoRA
    _range("finetune.lora_rank", 0, "at least 1"),
    _range("finetune.lora_rank", -2, "at least 1"),
    Bad("finetune.lora_rank=1.5", ("finetune.lora_rank=1.5",), "Config key 'finetune.lora_rank'",
        "expects a whole number, not 1.5", "load"),  # refused by the override's type check
    _range("finetune.lora_alpha", "0.0", "must be positive"),
    _range("finetune.lora_alpha", "-16.0", "must be positive"),
    Bad("lora_targets-not-a-string", ("finetune.lora_targets=3",), "finetune.lora_targets", "must be a regex",
        shows="3"),
    Bad("lora_targets-bad-regex", ("finetune.lora_targets='dense_('",), "finetune.lora_targets",
        "does not compile", shows="'dense_('"),
    Bad("lora-without-init_from", ("finetune.strategy=lora",), "finetune.strategy=lora", "init_from is not set",
        cli=True),
    Bad("lora_dropout", ("finetune.strategy=lora", "finetune.lora_dropout=0.1"), "finetune.lora_dropout 0.1",
        "is not supported"),
    Bad("get_config-raises", (), "Config file '{tmp}/recipe.py'",
        "get_config() raised ValueError: no recipe here see the docs; fix the file", "load", "{tmp}/recipe.py",
        _recipe("def get_config():\n    raise ValueError('no recipe here\\nsee the docs')\n")),
    Bad("get_config-own-TypeError", (), "Config file '{tmp}/recipe.py'", "get_config() raised TypeError", "load",
        "{tmp}/recipe.py:tiny", _recipe("def get_config(preset=None):\n    return defaults() + len(preset)\n")),
    Bad("get_config-TypeError-no-preset", (), "Config file '{tmp}/recipe.py'", "get_config() raised TypeError",
        "load", "{tmp}/recipe.py", _recipe("def get_config():\n    return defaults() + 1\n")),
    Bad("get_config-takes-no-preset", (), "Config file '{tmp}/recipe.py'", "does not take the preset 'tiny'", "load",
        "{tmp}/recipe.py:tiny", _recipe("def get_config():\n    return defaults()\n")),
    # 10: misleading messages before
    Bad("config-is-a-directory", (), "Config file '{tmp}'", "is a directory", "load", "{tmp}", cli=True),
    Bad("config-is-dev-null", (), "Config file '/dev/null'", "is not a Python file", "load", "/dev/null"),
    *[Bad(f"source={prefix}", (f"data.source={prefix}",), "data.source", f"write {prefix}", cli=prefix == "npz:")
      for prefix in ("npz:", "folder:", "csv:", "jsonl:", "text:", "tfds:")],
]


def _snapshot(root):
    """Every folder and every file's SHA-256 under root."""
    out = {}
    for folder, dirs, names in os.walk(root):
        out[os.path.relpath(folder, root) + "/"] = None
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                out[os.path.relpath(os.path.join(folder, name), root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in CASES])
def test_bad_input_gets_one_sentence_and_leaves_the_run_alone(case, digits_pretrained, tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    if case.files:
        case.files(files)
    fill = lambda s: s.replace("{tmp}", str(files))  # noqa: E731
    spec, over, starts = fill(case.spec), [fill(o) for o in case.over], fill(case.starts)
    workdir = copy_run(digits_pretrained.workdir, tmp_path / "run")
    before = _snapshot(workdir)

    if case.fires == "run":  # the config is good as far as validate() can tell; building the run refuses it
        config = ptft_jax.load_config(spec, over)
        with pytest.raises(ptft_jax.UserError) as e:
            ptft_jax.train(config, workdir, log=quiet)
    else:
        with pytest.raises(ptft_jax.UserError) as e:
            ptft_jax.load_config(spec, over)
    msg = str(e.value)
    if case.fires == "validate":  # validate() itself, and train() given the unchecked config, say the same
        path, _, preset = spec.partition(":")
        raw = config_lib.call_get_config(config_lib.import_config_module(path), path, preset or None)
        raw = ptft_jax.apply_overrides(raw, over)
        with pytest.raises(ptft_jax.ConfigError) as v:
            config_lib.validate(raw)
        with pytest.raises(ptft_jax.ConfigError) as t:
            ptft_jax.train(raw, workdir, log=quiet)
        assert str(v.value) == str(t.value) == msg
    assert "\n" not in msg and msg.startswith(starts) and case.phrase in msg, msg
    if case.shows:
        assert case.shows in msg, msg

    if case.cli:
        out = launch(f"--config={spec}", f"--workdir={workdir}", *[f"--config.{o}" for o in over])
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert out.returncode == 2 and errors == [f"error: {msg}"], out.stderr[-2000:]
        assert "Traceback" not in out.stderr + out.stdout, out.stderr[-2000:]
    assert _snapshot(workdir) == before
