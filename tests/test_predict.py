"""predict and print_jsonl: the input forms users have (arrays of any pixel dtype within the contract, grayscale
without a channel axis, .npy/.npz, image files, folders), file names in the output, batches of bounded memory, the
evaluation view of inception_crop runs, and one sentence (never a traceback) for bad inputs and checkpoints.

Moved here from test_run_options.py: predict from an image folder equals predict from the array (its launch()
replaced by an in-process print_jsonl; test_graft.py keeps a --mode=predict launch that succeeds)."""
import io
import json
import os
import shutil
import tracemalloc

import jax
import numpy as np
import pytest
from PIL import Image

import ptft_jax
from ptft_jax import models, tasks
from ptft_jax.convert import convert
from ptft_jax.data import custom, sources
from ptft_jax.predict import print_jsonl

from conftest import DIGITS, ROOT, Log, copy_run, digits_images, launch, params_of, quiet

HF_CLASSIFIER = os.path.join(ROOT, "tests", "fixtures", "hf_bert", "classifier")


def read_json(workdir, name):
    with open(os.path.join(workdir, name)) as f:
        return json.load(f)


def by_hand(workdir, images, step=None):
    """The run's model applied to uint8 images [N,H,W,C] outside predict: its params, data.json's mean/std."""
    info, config = read_json(workdir, "data.json"), read_json(workdir, "config.json")
    model = models.build(config["model"], info["num_classes"])
    x = tasks.preprocess(images, info["mean"], info["std"])
    return np.asarray(jax.nn.softmax(model.apply({"params": params_of(workdir, step)}, x, train=False)))


def save_png(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


def rows_of(workdir, inputs, **kw):
    rows = []
    print_jsonl(workdir, inputs, print_fn=lambda line: rows.append(json.loads(line)), log=quiet, **kw)
    return rows


def one_sentence(e):
    message = str(e.value)
    assert "\n" not in message and message.endswith("."), message
    return message


# --- input forms --------------------------------------------------------------------------------------------------

def test_every_array_form_of_the_same_images_gives_the_model_s_probabilities(digits_pretrained):
    pt = digits_pretrained.workdir
    x, _ = digits_images(20)
    probs = ptft_jax.predict(pt, x)
    np.testing.assert_allclose(probs, by_hand(pt, x), rtol=1e-5, atol=1e-6)
    for same in (x[..., 0],                          # [N,H,W] for a one-channel model, as training takes it
                 x.reshape(20, -1),                  # flattened
                 x / 255.0,                          # floats in [0, 1]
                 (x / 255.0).astype(np.float16),
                 x.astype(np.int64),                 # NumPy's default integers, within 0..255
                 x.astype(np.uint16)):
        np.testing.assert_allclose(ptft_jax.predict(pt, same), probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ptft_jax.predict(pt, x[3, ..., 0]), probs[3:4], rtol=1e-5, atol=1e-6)  # one [H,W]
    np.testing.assert_allclose(ptft_jax.predict(pt, x[3]), probs[3:4], rtol=1e-5, atol=1e-6)          # one [H,W,C]


@pytest.mark.parametrize("make, found", [
    (lambda x: x.astype(np.float32), r"float images must be in \[0, 1\] \(found 0\.\.255\)"),
    (lambda x: x / 255.0 - 0.5, r"float images must be in \[0, 1\] \(found -0\.5\.\.0\.5\)"),
    (lambda x: np.where(x > 200, np.nan, x / 255.0), "NaN"),
    (lambda x: np.where(x > 200, np.inf, x / 255.0), "NaN or infinite"),
    (lambda x: x.astype(np.int64) * 2, r"integer images must be in 0\.\.255 \(found 0\.\.510\)"),
    (lambda x: x.astype(np.int64) - 1, r"integer images must be in 0\.\.255 \(found -1\.\.254\)"),
    (lambda x: x > 0, "dtype bool"),
    (lambda x: x.astype(np.complex64), "dtype complex64"),
])
def test_pixels_outside_the_contract_are_refused_naming_the_range(digits_pretrained, make, found):
    x, _ = digits_images(6)
    with pytest.raises(ptft_jax.DataError, match=found) as e:
        ptft_jax.predict(digits_pretrained.workdir, make(x))
    one_sentence(e)


def test_folder_rows_name_their_files_and_match_the_array(digits_pretrained, tmp_path):
    pt = digits_pretrained.workdir
    x, _ = digits_images(5, start=1000)
    files = ["cat/001.png", "cat/002.png", "dog/a/003.png", "top.png", "zebra/004.bmp"]  # sorted order
    for f, image in zip(files, x):
        save_png(str(tmp_path / "images" / f), image)
    (tmp_path / "images" / ".DS_Store").write_bytes(b"hidden: skipped")
    probs = ptft_jax.predict(pt, x)
    np.testing.assert_allclose(ptft_jax.predict(pt, str(tmp_path / "images")), probs, rtol=1e-6, atol=1e-7)
    rows = rows_of(pt, str(tmp_path / "images"))
    assert [r["file"] for r in rows] == files and [r["index"] for r in rows] == list(range(5))
    assert [r["class"] for r in rows] == probs.argmax(-1).tolist()
    np.testing.assert_allclose([r["probabilities"] for r in rows], probs, atol=1e-5)
    one = rows_of(pt, str(tmp_path / "images" / "dog" / "a" / "003.png"))
    assert [r["file"] for r in one] == ["003.png"]
    np.testing.assert_allclose(one[0]["probabilities"], probs[2], atol=1e-5)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x=x)
    for path in ("x.npy", "x.npz"):
        rows = rows_of(pt, str(tmp_path / path))
        assert [r["index"] for r in rows] == list(range(5)) and not any("file" in r for r in rows)
        np.testing.assert_allclose([r["probabilities"] for r in rows], probs, atol=1e-5)


# --- batches --------------------------------------------------------------------------------------------------

def test_batches_give_the_same_probabilities_and_lines_stream_as_batches_finish(digits_pretrained, tmp_path):
    pt = digits_pretrained.workdir
    x, _ = digits_images(12, start=300)
    probs = ptft_jax.predict(pt, x)
    np.testing.assert_allclose(ptft_jax.predict(pt, x, batch_size=5), probs, rtol=1e-6, atol=1e-7)  # 5+5+2 padded
    for i, image in enumerate(x):
        save_png(str(tmp_path / "images" / f"{i:02d}.png"), image)
    # a PNG whose header reads but whose pixels are cut off: found only when its batch is read
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG")
    (tmp_path / "images" / "10.png").write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
    rows = []
    with pytest.raises(ptft_jax.DataError, match="10.png is not a readable image") as e:
        print_jsonl(pt, str(tmp_path / "images"), print_fn=lambda line: rows.append(json.loads(line)),
                    batch_size=4, log=quiet)
    one_sentence(e)
    assert rows and len(rows) % 4 == 0 and len(rows) < 10  # whole batches came out before the bad one was read
    np.testing.assert_allclose([r["probabilities"] for r in rows], probs[:len(rows)], atol=1e-5)


def test_a_large_npy_is_memory_mapped_and_read_a_batch_at_a_time(tmp_path):
    path = str(tmp_path / "big.npy")
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(1 << 18, 8, 8, 1))  # 64 MiB, sparse
    big[-1] = 1.0
    big.flush()
    del big
    tracemalloc.start()
    try:
        names, count, read = custom.predict_images(path, (8, 8, 1))  # every pixel checked, 4096 images at a time
        batch = read(count - 256, count)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert names is None and count == 1 << 18 and batch.shape == (256, 8, 8, 1) and batch.dtype == np.uint8
    assert (batch[-1] == 255).all() and (batch[:-1] == 0).all()
    assert peak < 8 << 20, peak  # the file is 64 MiB


def test_text_classifier_predicts_in_batches(tmp_path):
    workdir = convert(f"hf:{HF_CLASSIFIER}", str(tmp_path / "run"), log=quiet)
    vocab = [w.strip() for w in open(os.path.join(HF_CLASSIFIER, "vocab.txt")) if w.strip().isalpha()]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(vocab, 5)) for _ in range(7)]
    probs = ptft_jax.predict(workdir, texts)
    np.testing.assert_allclose(ptft_jax.predict(workdir, texts, batch_size=3), probs, rtol=1e-5, atol=1e-6)
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    rows = rows_of(workdir, str(tmp_path / "texts.txt"), batch_size=3)
    assert [r["index"] for r in rows] == list(range(7))
    assert [r["class"] for r in rows] == [["negative", "neutral", "positive"][k] for k in probs.argmax(-1)]
    np.testing.assert_allclose([r["probabilities"] for r in rows], probs, atol=1e-5)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ptft_jax.DataError, match="no text to classify") as e:
        ptft_jax.predict(workdir, str(tmp_path / "empty.txt"))
    one_sentence(e)


# --- the evaluation view ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_an_inception_crop_run_predicts_on_its_evaluation_view(tmp_path):
    x, y = digits_images(80)
    tall = np.stack([np.asarray(Image.fromarray(im[..., 0]).resize((10, 14)))[..., None] for im in x])  # 14x10
    np.savez(tmp_path / "d.npz", x=tall[:60], y=y[:60], x_test=tall[60:], y_test=y[60:])
    config = ptft_jax.load_config(DIGITS, {
        "data.source": f"npz:{tmp_path / 'd.npz'}", "data.image_size": 8, "data.augment": "inception_crop",
        "data.flip": False, "model.hidden": (16,), "data.batch_size": 20, "train.steps": 6, "train.log_every": 3})
    workdir = str(tmp_path / "run")
    ptft_jax.train(config, workdir, log=quiet)
    # what evaluation saw: the test split as the training pipeline serves it (shorter side to 8/0.875, centre crop)
    seen = sources.load(config.data, log=quiet).test.take(np.arange(20))["image"]
    probs = ptft_jax.predict(workdir, tall[60:])
    np.testing.assert_allclose(probs, by_hand(workdir, seen), rtol=1e-5, atol=1e-6)
    whole = np.stack([np.asarray(Image.fromarray(im[..., 0]).resize((8, 8)))[..., None] for im in tall[60:]])
    assert np.abs(probs - by_hand(workdir, whole)).max() > 1e-3  # the whole image resized is another view
    for i, image in enumerate(tall[60:]):
        save_png(str(tmp_path / "images" / f"{i:02d}.png"), image)
    np.testing.assert_allclose(ptft_jax.predict(workdir, str(tmp_path / "images")), probs, rtol=1e-5, atol=1e-6)


# --- bad inputs: one sentence ---------------------------------------------------------------------------------

class _Unpickled:
    """Unpickling this writes a file: predict must never unpickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def _object_array(marker):
    a = np.empty(2, dtype=object)
    a[0], a[1] = _Unpickled(marker), np.zeros(3)
    return a


def _bad_inputs(tmp, marker):
    """{name: (path, message regex)} of inputs predict must refuse in one sentence."""
    rng = np.random.default_rng(0)
    x, _ = digits_images(3)
    (tmp / "garbage.npy").write_bytes(rng.bytes(300))
    (tmp / "garbage.npz").write_bytes(b"PK\x03\x04" + rng.bytes(300))
    buf = io.BytesIO()
    np.save(buf, x)
    (tmp / "truncated.npy").write_bytes(buf.getvalue()[:-40])
    np.save(tmp / "pickled.npy", _object_array(marker), allow_pickle=True)
    np.savez(tmp / "pickled.npz", x=_object_array(marker))
    np.savez(tmp / "no_x.npz", images=x)
    np.save(tmp / "empty.npy", np.zeros((0, 8, 8), np.uint8))
    np.save(tmp / "wrong_shape.npy", np.zeros((3, 9, 9), np.uint8))
    (tmp / "empty_folder" / "sub").mkdir(parents=True)
    for i, image in enumerate(x):
        save_png(str(tmp / "mixed" / f"{i}.png"), image)
    (tmp / "mixed" / "notes.txt").write_text("not an image")
    return {"garbage.npy": ("is not an .npy or .npz file"), "garbage.npz": ("is a damaged NumPy file"),
            "truncated.npy": ("is a damaged NumPy file"), "pickled.npy": ("holds Python objects"),
            "pickled.npz": ("holds Python objects"), "no_x.npz": (r"has no array 'x' \(it holds images\)"),
            "empty.npy": ("holds no images"), "wrong_shape.npy": (r"has shape \(3, 9, 9, 1\) but the model was "
                                                                   r"trained on images of shape \(8, 8, 1\)"),
            "empty_folder": ("holds no images"), "mixed": ("notes.txt is not a readable image"),
            "missing.png": ("does not exist")}


def test_bad_inputs_are_one_sentence_and_never_unpickled(digits_pretrained, tmp_path):
    marker = str(tmp_path / "unpickled")
    cases = _bad_inputs(tmp_path, marker)
    for name, message in cases.items():
        with pytest.raises(ptft_jax.DataError, match=message) as e:
            ptft_jax.predict(digits_pretrained.workdir, str(tmp_path / name))
        assert name in one_sentence(e)
    with pytest.raises(ptft_jax.DataError, match="holds no images") as e:
        ptft_jax.predict(digits_pretrained.workdir, np.zeros((0, 8, 8, 1), np.uint8))
    one_sentence(e)
    assert not os.path.exists(marker)


def test_a_bad_input_on_the_command_line_is_one_error_line(digits_pretrained, tmp_path):
    (tmp_path / "garbage.npy").write_bytes(np.random.default_rng(0).bytes(300))
    out = launch("--mode=predict", f"--workdir={digits_pretrained.workdir}", f"--input={tmp_path / 'garbage.npy'}")
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "garbage.npy is not an .npy or .npz file" in errors[0], out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


# --- checkpoints ------------------------------------------------------------------------------------------------

def _damage(workdir, step):
    path = os.path.join(workdir, "checkpoints", str(step), "state", "manifest.ocdbt")
    with open(path, "wb") as f:
        f.write(b"damaged")
    return path


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # Orbax's closed-loop noise
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(digits_pretrained, tmp_path):
    pt = digits_pretrained.workdir
    run = copy_run(pt, tmp_path / "run")
    damaged = _damage(run, 60)
    x, _ = digits_images(8)
    log = Log()
    probs = ptft_jax.predict(run, x, log=log)
    np.testing.assert_allclose(probs, ptft_jax.predict(pt, x, step=30), rtol=1e-6, atol=1e-7)
    assert not np.allclose(probs, ptft_jax.predict(pt, x), atol=1e-4)  # step 60's differ
    assert len(log) == 1 and "checkpoints/60" in log[0] and "predicting with step 30" in log[0], log
    assert open(damaged, "rb").read() == b"damaged"  # left as it was
    with pytest.raises(ptft_jax.CheckpointError, match="checkpoints/60 .* cannot be read; it may be damaged") as e:
        ptft_jax.predict(run, x, step=60)
    one_sentence(e)
    _damage(run, 30)
    with pytest.raises(ptft_jax.CheckpointError, match=r"cannot be read \(nor any older one\)") as e:
        ptft_jax.predict(run, x, log=quiet)
    one_sentence(e)


def test_steps_being_written_are_never_read(digits_pretrained, tmp_path):
    pt = digits_pretrained.workdir
    run = copy_run(pt, tmp_path / "run")
    ckpts = os.path.join(run, "checkpoints")
    # step 30's weights under newer steps: an Orbax temporary folder, and a folder without the commit marker
    shutil.copytree(os.path.join(ckpts, "30"), os.path.join(ckpts, "90.orbax-checkpoint-tmp-1234"))
    shutil.copytree(os.path.join(ckpts, "30"), os.path.join(ckpts, "120"))
    os.remove(os.path.join(ckpts, "120", "commit_success.txt"))
    x, _ = digits_images(8)
    log = Log()
    np.testing.assert_allclose(ptft_jax.predict(run, x, log=log), ptft_jax.predict(pt, x), rtol=1e-6, atol=1e-7)
    assert len(log) == 1 and "checkpoints/120 has no commit_success.txt" in log[0], log
    assert sorted(os.listdir(ckpts)) == ["120", "30", "60", "90.orbax-checkpoint-tmp-1234"]  # nothing moved
    with pytest.raises(ptft_jax.CheckpointError, match=r"no committed checkpoint at step 120; it has steps \[30, 60\]"):
        ptft_jax.predict(run, x, step=120, log=quiet)


def test_evaluate_falls_back_from_a_damaged_newest_checkpoint(digits_pretrained, tmp_path):
    run = copy_run(digits_pretrained.workdir, tmp_path / "run")
    _damage(run, 60)
    log = Log()
    result = ptft_jax.evaluate(digits_pretrained.config, run, log=log)
    assert result["step"] == 30
    warnings = [line for line in log if line.startswith("warning: ")]
    assert len(warnings) == 1 and "step 60 is damaged" in warnings[0] and "evaluating step 30" in warnings[0], log
    assert os.path.isdir(os.path.join(run, "checkpoints", "60"))  # left as it was
