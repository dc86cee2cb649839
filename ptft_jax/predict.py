"""Class probabilities from a trained run: `predict(workdir, inputs)`."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from ptft_jax import models
from ptft_jax.errors import CheckpointError, DataError


def data_info(ds) -> dict:
    """What predict needs to know about the training data; written to WORKDIR/data.json. Text runs add the
    tokenizer (tokenizer_dir in the workdir, tokenizer_source: where it came from), max_len and vocab_size."""
    shape = ds.image_shape
    info = {"name": ds.name, "task": getattr(ds, "task", "classify_image"), "num_classes": ds.num_classes,
            "image_shape": list(shape) if shape is not None else None, "mean": list(ds.mean), "std": list(ds.std),
            "class_names": list(getattr(ds, "class_names", None) or []) or None}
    if getattr(ds, "text", None):
        info.update(ds.text)
    return info


def read_inputs(path: str, image_shape) -> np.ndarray:
    """uint8 images [N,H,W,C] from an .npz (array `x`), a .npy, an image file, or a folder of images."""
    from PIL import Image
    if not os.path.exists(path):
        raise DataError(f"Input {path} does not exist; pass an .npz/.npy of images, an image file or a folder.")
    h, w, c = image_shape

    def load_image(p):
        try:
            with Image.open(p) as im:
                im = im.convert("L" if c == 1 else "RGB").resize((w, h))
                return np.asarray(im, np.uint8).reshape(h, w, c)
        except OSError as e:
            raise DataError(f"Input image {p} cannot be read ({e}); pass a PNG or JPEG file.") from None

    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if not f.startswith("."))
        if not files:
            raise DataError(f"Input folder {path} holds no images.")
        return np.stack([load_image(os.path.join(path, f)) for f in files])
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z:
                raise DataError(f"Input {path} has no array named 'x'; save the images as x=...")
            return z["x"]
    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    return load_image(path)[None]


def predict(workdir: str, inputs, step: int | None = None) -> np.ndarray:
    """Probabilities [N, num_classes] for `inputs` (uint8 images [N,H,W,C] or [H,W,C], floats in [0,1], or a
    path accepted by `read_inputs`; for a text classifier a string, a list of strings, a list of (text, text_b)
    sentence pairs, the path of a UTF-8 file holding one text a line, or of a .jsonl file of {"text"[, "text_b"]}
    objects) from the run in
    `workdir` (its latest checkpoint unless `step`)."""
    from ptft_jax.step import make_predict_fn
    info_path, config_path = os.path.join(workdir, "data.json"), os.path.join(workdir, "config.json")
    if not (os.path.exists(info_path) and os.path.exists(config_path)):
        raise CheckpointError(f"{workdir} is not a ptft_jax run (no config.json/data.json); pass a run's workdir.")
    with open(info_path) as f:
        info = json.load(f)
    with open(config_path) as f:
        config = json.load(f)
    task = info.get("task", "classify_image")
    if task == "mlm":
        raise DataError(f"{workdir} is a masked-LM pretraining run, which has no classes to predict; fine-tune it "
                        f"into a classifier (init_from) and predict with that run.")
    if task == "classify_text":
        from ptft_jax.text.tokenizer import WordPieceTokenizer
        pairs = None
        if isinstance(inputs, os.PathLike) or (isinstance(inputs, str) and os.path.isfile(inputs)):
            with open(inputs, encoding="utf-8") as f:  # a text file: one text a line; .jsonl: text[, text_b]
                lines = [line.rstrip("\n") for line in f if line.strip()]
            if str(inputs).endswith((".jsonl", ".ndjson")):
                try:
                    rows = [json.loads(line) for line in lines]
                    texts = [str(r["text"]) for r in rows]
                    pairs = [str(r["text_b"]) for r in rows] if "text_b" in rows[0] else None
                except (ValueError, KeyError, TypeError) as e:
                    raise DataError(f"{inputs}: every line must be a JSON object with 'text' (and 'text_b' for "
                                    f"sentence pairs) ({e}).") from None
            else:
                texts = lines
        elif isinstance(inputs, str):
            texts = [inputs]
        elif all(isinstance(t, (tuple, list)) and len(t) == 2 for t in inputs):  # sentence pairs
            texts, pairs = [str(a) for a, _ in inputs], [str(b) for _, b in inputs]
        else:
            texts = [str(t) for t in inputs]
        tok = WordPieceTokenizer.load(info["tokenizer_dir"])
        x = {k: jnp.asarray(v) for k, v in tok.encode(texts, pairs, max_len=int(info["max_len"])).items()}
        raw = _restore(workdir, step)
        model = models.build(config["model"], info["num_classes"], vocab_size=info["vocab_size"])
        probs = make_predict_fn(model, (), (), task)(raw["params"], raw.get("model_state") or {}, x)
        return np.asarray(jax.device_get(probs))
    shape = tuple(info["image_shape"])
    x = read_inputs(inputs, shape) if isinstance(inputs, (str, os.PathLike)) else np.asarray(inputs)
    if x.ndim == len(shape):
        x = x[None]
    if np.issubdtype(x.dtype, np.floating):
        x = np.round(np.clip(x, 0, 1) * 255)
    x = x.reshape((-1, *shape)) if x[0].size == int(np.prod(shape)) else x
    if tuple(x.shape[1:]) != shape:
        raise DataError(f"Inputs have shape {tuple(x.shape[1:])} but the model was trained on {shape}.")
    raw = _restore(workdir, step)
    model = models.build(config["model"], info["num_classes"])
    fn = make_predict_fn(model, tuple(info["mean"]), tuple(info["std"]))
    probs = fn(raw["params"], raw.get("model_state") or {}, jnp.asarray(x.astype(np.uint8)))
    return np.asarray(jax.device_get(probs))


def _restore(workdir: str, step: int | None):
    from ptft_jax.checkpoint import Checkpoints
    ck = Checkpoints(os.path.join(workdir, "checkpoints"), create=False)
    try:
        step = step if step is not None else ck.latest_step()
        if step is None:
            raise CheckpointError(f"No checkpoint in {workdir}/checkpoints; train first.")
        return ck.restore_raw(step)
    finally:
        ck.close()
