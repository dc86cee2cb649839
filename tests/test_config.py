"""The config schema (allowed values, tri-states, ranges), durations, recipes, and the atomic file writes."""
import os

import jax
import numpy as np
import optax
import pytest

import ptft_jax
from ptft_jax import config as config_lib
from ptft_jax import files, optim
from ptft_jax.config import CHOICES, RANGES, TRI_STATE_KEYS, Durations, durations, validate

from conftest import CONFIGS


def _one_sentence(msg: str):
    assert msg.endswith(".") and ". " not in msg.replace("e.g. ", ""), f"not one sentence: {msg!r}"


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_a_bad_choice_names_the_key_and_every_allowed_value(key):
    with pytest.raises(ptft_jax.ConfigError) as e:
        validate({key.split(".")[0]: {key.split(".")[1]: "nonsense"}})
    msg = str(e.value)
    _one_sentence(msg)
    assert msg == f"{key} is 'nonsense'; use one of: {', '.join(str(a) for a in CHOICES[key])}."


def test_every_default_is_allowed_and_choices_are_checked_after_overrides():
    base = validate(ptft_jax.defaults())
    assert all(config_lib.flatten(base)[k] in v for k, v in CHOICES.items())
    recipe = os.path.join(CONFIGS, "digits_mlp_pretrain.py")
    with pytest.raises(ptft_jax.ConfigError, match=r"^optim.schedule is 'linear'; use one of: constant, cosine\.$"):
        ptft_jax.load_config(recipe, ["optim.schedule=linear"])
    with pytest.raises(ptft_jax.ConfigError,
                       match=r"^finetune.strategy is 'dora'; use one of: full, linear_probe, bitfit, lora\.$"):
        ptft_jax.load_config(recipe, {"finetune.strategy": "dora"})
    # an override may repair what the recipe set: only the result is checked
    assert ptft_jax.load_config(recipe, {"data.augment": "crop_flip"}).data.augment == "crop_flip"


@pytest.mark.parametrize("given, stored", [
    (True, "true"), (False, "false"), ("auto", "auto"), ("TRUE", "true"), ("False", "false"), (" Auto ", "auto")])
def test_tri_states_normalise_to_lowercase_strings(given, stored):
    for key in TRI_STATE_KEYS:
        section, leaf = key.split(".")
        assert validate({section: {leaf: given}})[section][leaf] == stored
        over = ptft_jax.apply_overrides(validate({}), {key: given})
        assert validate(over)[section][leaf] == stored
    recipe = os.path.join(CONFIGS, "digits_mlp_pretrain.py")
    if isinstance(given, str):  # as on the command line
        c = ptft_jax.load_config(recipe, [f"data.in_memory={given}", f"data.device_resident={given}"])
        assert c.data.in_memory == c.data.device_resident == stored


def test_a_bad_tri_state_is_a_choice_error():
    with pytest.raises(ptft_jax.ConfigError, match=r"^data.device_resident is 'yes'; use one of: auto, true, false\.$"):
        validate({"data": {"device_resident": "yes"}})
    with pytest.raises(ptft_jax.ConfigError, match=r"^data.in_memory is 1; use one of: auto, true, false\.$"):
        validate({"data": {"in_memory": 1}})


@pytest.mark.parametrize("key, bad, good, words", [
    ("optim.lr", 0.0, 1e-3, "optim.lr must be positive, not 0.0."),
    ("optim.lr", -1.0, 1e-3, "optim.lr must be positive, not -1.0."),
    ("data.mask_prob", 1.5, 0.3, "data.mask_prob 1.5 must be a number between 0 and 1 (BERT uses 0.15)."),
    ("data.mask_prob", 0.0, 0.3, "data.mask_prob 0.0 must be a number between 0 and 1"),
    ("data.max_len", 2, 3, "data.max_len 2 leaves no room for text after [CLS] and [SEP]"),
    ("data.max_documents", 0, 1, "data.max_documents 0 must be at least 1 (or None for every document)."),
])
def test_ranges(key, bad, good, words):
    assert key in RANGES
    section, leaf = key.split(".")
    with pytest.raises(ptft_jax.ConfigError) as e:
        validate({section: {leaf: bad}})
    assert words in str(e.value)
    _one_sentence(str(e.value))
    assert validate({section: {leaf: good}})[section][leaf] == good


def test_rules_between_keys_and_graft_rules_are_checked_on_load():
    with pytest.raises(ptft_jax.ConfigError, match="needs data.image_size"):
        validate({"data": {"augment": "inception_crop"}})
    assert validate({"data": {"augment": "inception_crop", "image_size": 32}}).data.image_size == 32
    with pytest.raises(ptft_jax.ConfigError, match="action 'keep'"):
        validate({"graft": [(".*", "keep")]})


def test_choice_message_shape():
    e = ptft_jax.ConfigError.choice("data.augment", "cutout", (None, "crop_flip"))
    assert isinstance(e, ptft_jax.ConfigError) and str(e) == "data.augment is 'cutout'; use one of: None, crop_flip."
    from ptft_jax import models
    with pytest.raises(ptft_jax.ConfigError, match=r"^model.dtype is 'fp8'; use one of: float32, bfloat16, float16\.$"):
        models.build({"name": "resnet18", "dtype": "fp8"}, 3)


def _cfg(**over):
    return ptft_jax.apply_overrides(validate({}), over)


def test_durations_convert_epochs_and_the_none_defaults():
    d = durations(_cfg(**{"train.epochs": 3, "train.log_every": 7}), steps_per_epoch=11)
    assert d == Durations(total_steps=33, warmup_steps=0, log_every=7, eval_every=11, checkpoint_every=11)
    d = durations(_cfg(**{"train.steps": 30, "train.epochs": 99, "train.eval_every": 4, "train.checkpoint_every": 6,
                          "optim.warmup_epochs": 0.25}), steps_per_epoch=10)
    assert (d.total_steps, d.warmup_steps, d.eval_every, d.checkpoint_every) == (30, 2, 4, 6)  # round(2.5) == 2
    d = durations(_cfg(**{"optim.warmup_steps": 5}), steps_per_epoch=3)
    assert (d.total_steps, d.warmup_steps) == (30, 5)
    with pytest.raises(AttributeError):
        d.total_steps = 1  # frozen


@pytest.mark.parametrize("over", [{"train.steps": 0}, {"train.epochs": 0}, {"train.epochs": None}, {"train.steps": -3}])
def test_no_training_steps_is_a_config_error(over):
    with pytest.raises(ptft_jax.ConfigError, match=r"^train.steps / train.epochs give no training steps"):
        durations(_cfg(**over), steps_per_epoch=10)


def test_optimiser_takes_its_warmup_from_durations():
    cfg = _cfg(**{"optim.lr": 1.0, "optim.schedule": "cosine", "optim.warmup_epochs": 2.0, "train.steps": 100})
    params = {"w": np.ones(3, np.float32)}
    grads = {"w": np.ones(3, np.float32)}

    def first_update(tx):
        state = tx.init(params)
        for _ in range(5):
            updates, state = tx.update(grads, state, params)
        return np.asarray(updates["w"])

    d = durations(cfg, steps_per_epoch=10)
    new = first_update(optim.build(cfg.optim, durations=d))
    old = first_update(optim.build(cfg.optim, 100, steps_per_epoch=10))
    np.testing.assert_array_equal(new, old)
    assert new[0] == pytest.approx(-4 / 20)  # step 4 of a 20-step warmup to lr 1
    other = first_update(optim.build(cfg.optim, durations=durations(cfg, steps_per_epoch=40)))
    assert other[0] == pytest.approx(-4 / 80)


def test_constant_schedule_with_warmup_matches_the_joined_linear_and_constant():
    cfg = _cfg(**{"optim.lr": 0.3, "optim.warmup_steps": 7}).optim
    old = optax.join_schedules([optax.linear_schedule(0.0, 0.3, 7), optax.constant_schedule(0.3)], [7])
    new = optim.schedule(cfg, 100)
    steps = np.arange(0, 30)
    np.testing.assert_array_equal(jax.vmap(new)(steps), jax.vmap(old)(steps))
    assert float(new(0)) == 0.0 and float(new(7)) == pytest.approx(0.3) and float(new(3)) == pytest.approx(0.3 * 3 / 7)
    assert optim.schedule(_cfg(**{"optim.lr": 0.3}).optim, 100) == 0.3  # no warmup: a plain float


def test_tree_paths_are_slash_joined_keys():
    from ptft_jax.graft import flatten, unflatten
    tree = {"params": {"dense_0": {"kernel": 1, "bias": 2}}, "opt": [{"mu": 3}, None, (4, 5)], "none": None}
    flat = flatten(tree)
    assert flat == {"params/dense_0/kernel": 1, "params/dense_0/bias": 2, "opt/0/mu": 3, "opt/2/0": 4, "opt/2/1": 5}
    assert unflatten({k: v for k, v in flat.items() if k.startswith("params/")}) == {"params": tree["params"]}
    paths = [optim._path(p) for p, _ in jax.tree_util.tree_leaves_with_path({"head": {"kernel": 0}, "b": [1]})]
    assert paths == ["b/0", "head/kernel"]


def test_recipes_inherit_through_recipe(tmp_path):
    (tmp_path / "base.py").write_text("from ptft_jax.config import defaults\n\n"
                                      "def get_config(preset=None):\n    c = defaults()\n"
                                      "    c.optim.lr = 0.5 if preset == 'fast' else 0.1\n    return c\n")
    (tmp_path / "child.py").write_text("from ptft_jax.config import recipe\n\n"
                                       "def get_config(preset=None):\n    c = recipe('base', preset)\n"
                                       "    c.train.steps = 3\n    return c\n")
    assert ptft_jax.load_config(str(tmp_path / "child.py")).optim.lr == 0.1
    fast = ptft_jax.load_config(f"{tmp_path / 'child.py'}:fast")
    assert fast.optim.lr == 0.5 and fast.train.steps == 3
    (tmp_path / "orphan.py").write_text("from ptft_jax.config import recipe\n\n"
                                        "def get_config():\n    return recipe('missing')\n")
    with pytest.raises(ptft_jax.ConfigError, match="missing.py' does not exist"):
        ptft_jax.load_config(str(tmp_path / "orphan.py"))


def test_atomic_writes_replace_whole_files_and_leave_nothing_on_error(tmp_path):
    path = tmp_path / "x.json"
    files.write_json(path, {"a": 1})
    assert path.read_text() == '{\n  "a": 1\n}'
    files.write_text(path, "new")
    assert path.read_text() == "new"
    with pytest.raises(RuntimeError):
        with files.atomic(path) as f:
            f.write("half")
            raise RuntimeError("disk on fire")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["x.json"]
    with files.atomic(tmp_path / "b.bin", "wb") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    umask = os.umask(0)
    os.umask(umask)
    assert (os.stat(path).st_mode & 0o777) == (0o666 & ~umask)
    with pytest.raises(ValueError):
        with files.atomic(path, "a"):
            pass
