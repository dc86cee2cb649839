"""The user's own data: npz:, folder:[@HxW], csv:/jsonl: (text), and the errors for bad input."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

import ptft_jax
from ptft_jax.data.sources import get_source, load
from ptft_jax.dataset import TextDataset
from ptft_jax.errors import DataError
from ptft_jax.text.sources import load_text


def data_cfg(source, **kw):
    cfg = ptft_jax.defaults().data
    cfg.source = source
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def expect_error(fn, *words):
    """fn() raises a one-sentence DataError that mentions every word."""
    with pytest.raises(DataError) as info:
        fn()
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    assert msg.endswith(".") and ". " not in msg, f"not one sentence: {msg!r}"
    return msg


def save_img(path, size=(6, 4), mode="RGB", value=100, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 2 * value % 256, 30)).save(path, format=fmt)


# --- npz ---------------------------------------------------------------------------------------------------------

def test_npz_stratified_split_and_stats(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 5, 7), dtype=np.uint8)
    y = np.repeat([0, 1, 2], 20)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load(data_cfg(f"npz:{tmp_path / 'd.npz'}", test_fraction=0.2))
    assert (ds.name, ds.num_classes, ds.image_shape) == ("d", 3, (5, 7, 1))
    assert (len(ds.train), len(ds.test)) == (48, 12)
    tr, te = ds.train.arrays, ds.test.arrays
    assert tr["image"].dtype == np.uint8 and tr["label"].dtype == np.int32
    assert np.bincount(te["label"]).tolist() == [4, 4, 4]
    assert ds.mean == pytest.approx((tr["image"].mean() / 255,))
    assert ds.std == pytest.approx((tr["image"].std() / 255,))
    assert ds.class_names is None


def test_npz_given_test_split_float_2d(tmp_path):
    x = np.linspace(0, 1, 40 * 6).reshape(40, 6)
    y = np.arange(40) % 4
    xt = np.full((8, 6), 0.5, np.float32)
    np.savez(tmp_path / "f.npz", x=x, y=y.astype(float), x_test=xt, y_test=np.arange(8) % 4)
    ds = get_source(data_cfg(f"npz:{tmp_path / 'f.npz'}"))
    assert (len(ds.train), len(ds.test), ds.num_classes) == (40, 8, 4)
    assert ds.train.arrays["image"].shape == (40, 1, 6, 1)  # [N, D] -> [N, 1, D, 1]
    np.testing.assert_array_equal(ds.train.arrays["image"][:, 0, :, 0], np.round(x * 255).astype(np.uint8))
    np.testing.assert_array_equal(ds.train.arrays["label"], y)
    assert (ds.test.arrays["image"] == 128).all()


def test_npz_rgb_and_classes_may_leave_out_an_empty_class(tmp_path):
    x = np.zeros((20, 4, 4, 3), np.uint8)
    x[..., 1] = 255
    y = np.repeat([0, 2], 10)  # class 1 has no example, but data.classes leaves it out
    np.savez(tmp_path / "c.npz", x=x, y=y)
    ds = load(data_cfg(f"npz:{tmp_path / 'c.npz'}", classes=[0, 2]))
    assert ds.num_classes == 2 and set(ds.train.arrays["label"].tolist()) == {0, 1}
    assert ds.mean == pytest.approx((0.0, 1.0, 0.0)) and ds.std == pytest.approx((1e-3,) * 3)


def _npz(tmp_path, name="bad.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


X, Y = np.zeros((10, 3, 3), np.uint8), np.arange(10) % 2


@pytest.mark.parametrize("arrays, words", [
    (dict(x=X), ["'y'", "has no array"]),
    (dict(y=Y), ["'x'", "has no array"]),
    (dict(x=X, y=Y, x_test=X), ["'y_test'"]),
    (dict(x=X, y=Y[:9]), ["x has 10 examples but y has 9"]),
    (dict(x=X, y=Y + 0.5), ["not integers"]),
    (dict(x=X, y=Y - 1), ["negative label -1"]),
    (dict(x=X, y=Y * 2), ["empty class 1"]),
    (dict(x=X, y=Y, x_test=X[:4], y_test=np.array([0, 1, 2, 0])), ["y_test", "label 2 is outside the 2 classes"]),
    (dict(x=X, y=Y, x_test=X[:2, :2], y_test=Y[:2]), ["x_test images are"]),
    (dict(x=np.full((10, 3, 3), 2.0), y=Y), ["must be in [0, 1]"]),
    (dict(x=np.array(["a"] * 10), y=Y), ["dtype <U1"]),
    (dict(x=X, y=np.eye(2)[Y]), ["shape (10, 2)"]),
    (dict(x=X[:3], y=Y[:3]), ["class 1 has only 1 example"]),
])
def test_npz_bad_contents(tmp_path, arrays, words):
    path = _npz(tmp_path, **arrays)
    expect_error(lambda: get_source(data_cfg(f"npz:{path}")), "bad.npz", *words)


def test_npz_object_arrays(tmp_path):
    ragged = np.empty(2, dtype=object)
    ragged[:] = [np.zeros((3, 3)), np.zeros((4, 4))]
    path = _npz(tmp_path, x=ragged, y=np.array([0, 1]))
    expect_error(lambda: get_source(data_cfg(f"npz:{path}")), "bad.npz", "object arrays (ragged shapes?)")


def test_npz_bad_files(tmp_path):
    expect_error(lambda: get_source(data_cfg(f"npz:{tmp_path}/nope.npz")), "nope.npz", "does not exist")
    (tmp_path / "empty.npz").write_bytes(b"")
    expect_error(lambda: get_source(data_cfg(f"npz:{tmp_path}/empty.npz")), "empty.npz", "empty file")
    (tmp_path / "junk.npz").write_text("hello, not numpy")
    expect_error(lambda: get_source(data_cfg(f"npz:{tmp_path}/junk.npz")), "junk.npz", "not a readable .npz")
    _npz(tmp_path, "few.npz", x=X, y=Y)
    expect_error(lambda: get_source(data_cfg(f"npz:{tmp_path}/few.npz", test_fraction=0.05)), "few.npz",
                 "cannot split into train and test", "test_size")
    np.save(tmp_path / "one.npy", X)
    expect_error(lambda: get_source(data_cfg(f"npz:{tmp_path}/one.npy")), "one.npy", "single array")


# --- image folders -----------------------------------------------------------------------------------------------

def test_folder_png_jpeg_mixed_sizes(tmp_path):
    root = tmp_path / "pets"
    for i in range(5):
        save_img(str(root / "dog" / f"{i}.png"), value=200)
        save_img(str(root / "cat" / f"{i}.jpg"), value=50)
    save_img(str(root / "cat" / "big.JPEG"), size=(10, 9), value=50)  # resized to the common 6x4 (W x H)
    (root / "cat" / "notes.txt").write_text("ignored")
    ds = load(data_cfg(f"folder:{root}", test_fraction=0.3))
    assert ds.class_names == ("cat", "dog") and ds.num_classes == 2 and ds.name == "pets"
    assert ds.image_shape == (4, 6, 3) and len(ds.train) + len(ds.test) == 11
    imgs = np.concatenate([ds.train.arrays["image"], ds.test.arrays["image"]])
    labels = np.concatenate([ds.train.arrays["label"], ds.test.arrays["label"]])
    assert np.bincount(labels).tolist() == [6, 5]
    assert np.abs(imgs[labels == 1][..., 0].astype(int) - 200).max() <= 1  # PNG exact
    assert np.abs(imgs[labels == 0][..., 0].astype(int) - 50).max() <= 8   # JPEG close
    assert len(ds.mean) == 3 and min(ds.std) >= 1e-3


def test_folder_grayscale_explicit_size(tmp_path):
    for c in ("a", "b"):
        for i in range(3):
            save_img(str(tmp_path / "g" / c / f"{i}.bmp"), size=(8 + i, 8), mode="L", value=10 + 100 * (c == "b"))
    ds = get_source(data_cfg(f"folder:{tmp_path / 'g'}@3x5", test_fraction=0.34))
    assert ds.image_shape == (3, 5, 1) and len(ds.mean) == 1


def test_folder_train_test_subfolders(tmp_path):
    root = tmp_path / "tt"
    for split, n in (("train", 4), ("test", 2)):
        for c in ("x", "y", "z"):
            for i in range(n if c != "z" or split == "train" else 0):
                save_img(str(root / split / c / f"{i}.png"), mode="RGB" if c == "x" else "L")
    save_img(str(root / "test" / "z" / "0.webp"), fmt="WEBP")
    ds = get_source(data_cfg(f"folder:{root}"))
    assert (len(ds.train), len(ds.test), ds.class_names) == (12, 5, ("x", "y", "z"))
    assert ds.image_shape == (4, 6, 3)  # one RGB class makes every image RGB
    assert ds.test.arrays["label"].tolist() == [0, 0, 1, 1, 2]


def test_folder_errors(tmp_path):
    expect_error(lambda: get_source(data_cfg(f"folder:{tmp_path}/none")), "none", "does not exist")
    (tmp_path / "flat").mkdir()
    save_img(str(tmp_path / "flat" / "0.png"))
    expect_error(lambda: get_source(data_cfg(f"folder:{tmp_path}/flat")), "flat", "no class subfolders")
    for i in range(2):
        save_img(str(tmp_path / "e" / "full" / f"{i}.png"))
    (tmp_path / "e" / "hollow").mkdir()
    expect_error(lambda: get_source(data_cfg(f"folder:{tmp_path}/e")), "hollow", "empty class")
    save_img(str(tmp_path / "o" / "train" / "a" / "0.png"))
    save_img(str(tmp_path / "o" / "test" / "b" / "0.png"))
    expect_error(lambda: get_source(data_cfg(f"folder:{tmp_path}/o")), "b", "outside the classes")
    save_img(str(tmp_path / "h" / "train" / "a" / "0.png"))
    expect_error(lambda: get_source(data_cfg(f"folder:{tmp_path}/h")), "h", "only one of the train/ and test/")


@pytest.mark.parametrize("name, content", [("junk.png", b"not an image"), ("cut.jpg", "truncated")])
def test_folder_corrupt_image(tmp_path, name, content):
    for i in range(3):
        save_img(str(tmp_path / "d" / "a" / f"{i}.png"))
        save_img(str(tmp_path / "d" / "b" / f"{i}.png"))
    if content == "truncated":
        save_img(str(tmp_path / "big.jpg"), size=(64, 64))
        content = (tmp_path / "big.jpg").read_bytes()[:300]
    (tmp_path / "d" / "b" / name).write_bytes(content)
    expect_error(lambda: get_source(data_cfg(f"folder:{tmp_path}/d")), name, "not a readable image")


# --- text --------------------------------------------------------------------------------------------------------

def test_csv_string_labels(tmp_path):
    path = tmp_path / "rev.csv"
    rows = [("great, loved it", "pos"), ("awful", "neg"), ('said "meh"', "neutral")] * 4
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label"])
        w.writerows([(i, t, label) for i, (t, label) in enumerate(rows)])
    ds = load_text(str(path), test_fraction=0.25, split_seed=1)
    assert isinstance(ds, TextDataset) and ds.class_names == ("neg", "neutral", "pos") and ds.num_classes == 3
    assert (len(ds.train_texts), len(ds.test_texts)) == (9, 3) and ds.train_labels.dtype == np.int32
    for t, label in zip(ds.train_texts + ds.test_texts, ds.train_labels.tolist() + ds.test_labels.tolist()):
        assert dict(rows)[t] == ds.class_names[label]


def test_jsonl_int_labels(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"doc {i}", "label": i % 2}) for i in range(10)) + "\n\n")
    ds = load_text(f"jsonl:{path}", test_fraction=0.2)
    assert ds.class_names is None and ds.num_classes == 2 and len(ds.test_texts) == 2
    assert sorted(ds.train_texts + ds.test_texts) == sorted(f"doc {i}" for i in range(10))
    assert all(int(t.split()[1]) % 2 == label for t, label in zip(ds.test_texts, ds.test_labels.tolist()))


def test_text_errors(tmp_path):
    (tmp_path / "cols.csv").write_text("sentence,target\nhi,0\n")
    expect_error(lambda: load_text(str(tmp_path / "cols.csv")), "cols.csv", "found: sentence, target")
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 0}\n{"text": "b", "label": \n')
    expect_error(lambda: load_text(str(tmp_path / "bad.jsonl")), "bad.jsonl", "line 2 is not valid JSON")
    (tmp_path / "keys.jsonl").write_text('{"text": "a", "label": 0}\n["b", 1]\n')
    expect_error(lambda: load_text(str(tmp_path / "keys.jsonl")), "keys.jsonl", "line 2")
    (tmp_path / "empty.csv").write_text("")
    expect_error(lambda: load_text(str(tmp_path / "empty.csv")), "empty.csv", "empty file")
    (tmp_path / "header.csv").write_text("text,label\n")
    expect_error(lambda: load_text(str(tmp_path / "header.csv")), "header.csv", "no rows")
    (tmp_path / "neg.csv").write_text("text,label\n" + "a,-1\nb,0\n" * 3)
    expect_error(lambda: load_text(str(tmp_path / "neg.csv")), "neg.csv", "negative label")
    (tmp_path / "gap.csv").write_text("text,label\n" + "a,0\nb,2\n" * 3)
    expect_error(lambda: load_text(str(tmp_path / "gap.csv")), "gap.csv", "empty class 1")
    (tmp_path / "nolabel.csv").write_text('text,label\n"a\nb",0\nc\n')  # a quoted two-line text, then c
    expect_error(lambda: load_text(str(tmp_path / "nolabel.csv")), "nolabel.csv", "line 4")
    expect_error(lambda: load_text(str(tmp_path / "missing.jsonl")), "missing.jsonl", "does not exist")


def test_get_source_text_and_unknown(tmp_path):
    expect_error(lambda: get_source(data_cfg(f"csv:{tmp_path}/a.csv")), "a.csv", "text model", "model.name=bert")
    expect_error(lambda: get_source(data_cfg(f"jsonl:{tmp_path}/a.jsonl")), "a.jsonl", "bert_mlm")
    expect_error(lambda: get_source(data_cfg("zip:foo")), "'zip:foo'", "npz:PATH", "folder:PATH[@HxW]", "csv:PATH",
                 "jsonl:PATH")


# --- end to end --------------------------------------------------------------------------------------------------

def test_train_on_npz(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(200) % 2
    x = rng.uniform(0, 0.4, (200, 8, 8))
    x[y == 0, :4] += 0.6  # class 0: bright top half
    x[y == 1, 4:] += 0.6  # class 1: bright bottom half
    path = tmp_path / "halves.npz"
    np.savez(path, x=np.clip(x, 0, 1), y=y)
    cfg = ptft_jax.defaults()
    cfg.model = dict(name="mlp", hidden=(32,))
    cfg.data.source = f"npz:{path}"
    cfg.data.batch_size = 16
    cfg.data.eval_batch_size = 40
    cfg.train.epochs = 5
    cfg.train.log_every = 10  # an epoch: every call the same size, one compile
    cfg.optim.lr = 0.1
    result = ptft_jax.train(cfg, str(tmp_path / "run"))
    assert result["accuracy"] >= 0.9
