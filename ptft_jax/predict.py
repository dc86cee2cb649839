"""Class probabilities from a trained run: `predict(workdir, inputs)`; `print_jsonl` for the command line.

Inputs go through the model a batch at a time (BATCH rows, the last batch padded, so one compile serves every
batch): a folder of thousands of images or a large .npy (memory-mapped) is never read whole, and print_jsonl
writes each batch's lines as soon as it is done. The checkpoint is the newest committed one that restores.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from ptft_jax import lora, models, tasks
from ptft_jax.checkpoint import Checkpoints, closed_loop_noise_dropped
from ptft_jax.errors import CheckpointError
from ptft_jax.step import make_predict_fn

BATCH = 256


def _stderr(line: str):
    print(line, file=sys.stderr)


def read_run(workdir: str) -> tuple[dict, dict]:
    """(data.json, config.json) of a run, or a CheckpointError when `workdir` is not one."""
    info_path, config_path = os.path.join(workdir, "data.json"), os.path.join(workdir, "config.json")
    if not (os.path.exists(info_path) and os.path.exists(config_path)):
        raise CheckpointError(f"{workdir} is not a ptft_jax run (no config.json/data.json); pass a run's workdir.")
    out = []
    for path in (info_path, config_path):
        try:
            with open(path) as f:
                out.append(json.load(f))
        except (ValueError, OSError) as e:
            raise CheckpointError(f"{path} cannot be read ({type(e).__name__}: {e}); restore it from a copy of "
                                  f"the run.") from None
    return out[0], out[1]


def predict(workdir: str, inputs, step: int | str | None = None, batch_size: int = BATCH, log=_stderr) -> np.ndarray:
    """Probabilities [N, num_classes] for `inputs` from the run in `workdir`: its newest checkpoint that restores
    (a damaged newer one is skipped, with a `log` line naming the step used), or `step` (a step, or "best").

    Images: an array of uint8 0..255, of integers in 0..255 or of floats in [0, 1] (any other values, NaN
    included, are refused), shaped [N,H,W,C] or one [H,W,C] image ([N,H,W] or [H,W] for a one-channel model); or
    the path of an .npy, an .npz (array `x`), an image file or a folder of images (searched recursively). Images
    are seen as the run's evaluation saw them (data.image_size, centre-cropped for data.augment=inception_crop).
    A text classifier: a string, a list of strings, a list of (text, text_b) sentence pairs, the path of a UTF-8
    file holding one text a line, or of a .jsonl file of {"text"[, "text_b"]} objects."""
    _, _, probs = _predict_batches(workdir, inputs, step, batch_size, log)
    return np.concatenate(list(probs))


def print_jsonl(workdir: str, inputs, print_fn=print, step: int | str | None = None, batch_size: int = BATCH,
                log=_stderr):
    """One JSON line per input, {"index", ["file",] "class", "probabilities"}, written as each batch finishes:
    "file" names an image by its path relative to the input folder (or the file's name); "class" is a class name
    where the run has them."""
    names, info, probs = _predict_batches(workdir, inputs, step, batch_size, log)
    classes = info.get("class_names")
    i = 0
    for batch in probs:
        for p in batch:
            k = int(p.argmax())
            row = {"index": i, **({"file": names[i]} if names else {}), "class": classes[k] if classes else k,
                   "probabilities": [round(float(v), 6) for v in p]}
            print_fn(json.dumps(row))
            i += 1
        if print_fn is print:
            sys.stdout.flush()


def _predict_batches(workdir, inputs, step, batch_size, log):
    """(names, data.json, an iterator of probabilities a batch at a time). The inputs and the checkpoint are
    checked before it returns; the next batch is read on the host while the device computes one."""
    info, config = read_run(workdir)
    task = tasks.from_info(info)
    source = task.predict_inputs(inputs, info, config)
    raw = _restore(workdir, step, log)
    fn = _predict_fn(json.dumps(config["model"], sort_keys=True), info["num_classes"], info.get("vocab_size"), task)
    params, model_state = raw["params"], raw.get("model_state") or {}
    frozen = None
    if (config.get("finetune") or {}).get("strategy") == "lora":  # the base, read again from init_from
        frozen = jax.device_put(lora.read_base(workdir, config, config["finetune"]))
    size = max(1, min(int(batch_size), source.count))

    def batches():
        pending = None
        for start in range(0, source.count, size):
            n = min(size, source.count - start)
            batch = {k: _pad(np.asarray(v), size) for k, v in source.read(start, start + n).items()}
            probs = fn(params, model_state, batch, frozen)  # dispatched: runs while the next batch is read
            if pending is not None:
                yield _fetch(*pending)
            pending = (probs, n)
        yield _fetch(*pending)

    return source.names, info, batches()


@functools.lru_cache(maxsize=8)
def _predict_fn(model_json: str, num_classes: int, vocab_size, task):
    """The jitted predict function of a model, kept: predict called again on the same kind of run (a notebook's
    loop, a service) does not compile again."""
    return make_predict_fn(models.build(json.loads(model_json), num_classes, vocab_size=vocab_size), task)


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    """A batch of fewer than `size` rows padded with copies of its last row (their results are dropped)."""
    return x if len(x) == size else np.concatenate([x, np.repeat(x[-1:], size - len(x), 0)])


def _fetch(probs, n: int) -> np.ndarray:
    return np.asarray(jax.device_get(probs))[:n]


def _restore(workdir: str, step: int | None, log) -> dict:
    """The saved tree of `step`, or of the newest committed checkpoint that restores (a line on `log` for each
    newer one that does not). Only steps Orbax's manager counts as committed and whose folder holds Orbax's commit
    marker are read: a step still being written (a `*.orbax-checkpoint-tmp-*` folder, or a folder being copied
    in) never is. Nothing in the run is moved or written."""
    folder = "checkpoints"
    if step == "best":  # train.keep_best's checkpoint
        folder, step = "best", None
        if not os.path.isdir(os.path.join(workdir, folder)):
            raise CheckpointError(f"{workdir} has no best checkpoint (train.keep_best was not set); leave the step "
                                  f"unset for its latest checkpoint.")
    ck = Checkpoints(os.path.join(workdir, folder), create=False)
    marker = ocp.path.atomicity.COMMIT_SUCCESS_FILE
    try:
        steps = sorted(ck.all_steps(), reverse=True)
        committed = [s for s in steps if os.path.exists(os.path.join(ck.directory, str(s), marker))]
        for s in sorted(set(steps) - set(committed)):
            log(f"warning: {ck.directory}/{s} has no {marker} (it is still being written or copied); not read")
        if step is not None and step not in committed:
            raise CheckpointError(f"{workdir} has no committed checkpoint at step {step}; it has steps "
                                  f"{sorted(committed)}.")
        failed = []
        for s in [step] if step is not None else committed:
            raw, why = _try_read(ck, s)
            if raw is None:
                failed.append(f"{ck.directory}/{s} ({why})")
                continue
            for bad in failed:
                log(f"warning: the checkpoint {bad} cannot be read; predicting with step {s}")
            return raw
        if not failed:
            raise CheckpointError(f"No checkpoint in {ck.directory}; train first.")
        fix = "pick another step" if step is not None else "train again or restore the checkpoints from a copy"
        raise CheckpointError(f"The checkpoint {failed[0]} cannot be read{' (nor any older one)' * (len(failed) > 1)}; "
                              f"it may be damaged: {fix}.")
    finally:
        ck.close()


def _try_read(ck: Checkpoints, step: int):
    """(the saved tree, None), or (None, why it cannot be read)."""
    with closed_loop_noise_dropped():
        try:
            return ck.restore_raw(step), None
        except Exception as e:  # noqa: BLE001 - a damaged checkpoint is skipped or reported in one sentence
            time.sleep(0.2)  # the reads still in flight finish (see below)
            return None, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
