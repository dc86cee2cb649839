"""Class probabilities from a trained run: `predict(workdir, inputs)`; `print_jsonl` for the command line."""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from ptft_jax import models, tasks
from ptft_jax.checkpoint import Checkpoints
from ptft_jax.errors import CheckpointError
from ptft_jax.step import make_predict_fn


def read_run(workdir: str) -> tuple[dict, dict]:
    """(data.json, config.json) of a run, or a CheckpointError when `workdir` is not one."""
    info_path, config_path = os.path.join(workdir, "data.json"), os.path.join(workdir, "config.json")
    if not (os.path.exists(info_path) and os.path.exists(config_path)):
        raise CheckpointError(f"{workdir} is not a ptft_jax run (no config.json/data.json); pass a run's workdir.")
    with open(info_path) as f:
        info = json.load(f)
    with open(config_path) as f:
        config = json.load(f)
    return info, config


def predict(workdir: str, inputs, step: int | None = None) -> np.ndarray:
    """Probabilities [N, num_classes] for `inputs` from the run in `workdir` (its latest checkpoint unless `step`).

    Images: uint8 [N,H,W,C] or [H,W,C], floats in [0, 1], or the path of an .npz (array `x`), an .npy, an image file
    or a folder of images. A text classifier: a string, a list of strings, a list of (text, text_b) sentence pairs,
    the path of a UTF-8 file holding one text a line, or of a .jsonl file of {"text"[, "text_b"]} objects."""
    info, config = read_run(workdir)
    task = tasks.from_info(info)
    batch = task.predict_batch(inputs, info)
    raw = _restore(workdir, step)
    model = models.build(config["model"], info["num_classes"], vocab_size=info.get("vocab_size"))
    probs = make_predict_fn(model, task)(raw["params"], raw.get("model_state") or {}, batch)
    return np.asarray(jax.device_get(probs))


def print_jsonl(workdir: str, inputs, print_fn=print):
    """One JSON line per input: {"index", "class", "probabilities"} (class names where the run has them)."""
    probs = predict(workdir, inputs)
    names = read_run(workdir)[0].get("class_names")
    for i, p in enumerate(probs):
        k = int(p.argmax())
        print_fn(json.dumps({"index": i, "class": names[k] if names else k,
                             "probabilities": [round(float(v), 6) for v in p]}))


def _restore(workdir: str, step: int | None):
    ck = Checkpoints(os.path.join(workdir, "checkpoints"), create=False)
    try:
        step = step if step is not None else ck.latest_step()
        if step is None:
            raise CheckpointError(f"No checkpoint in {workdir}/checkpoints; train first.")
        return ck.restore_raw(step)
    finally:
        ck.close()
