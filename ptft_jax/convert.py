"""Published weights as a ptft_jax run: `python -m ptft_jax.convert SRC WORKDIR`, SRC `hf:DIR` or `torch:FILE`.

The workdir then holds what a trained run holds (checkpoints/0, config.json, data.json, tokenizer/ for BERT), so
`--mode=predict`, `--mode=evaluate` and `init_from=WORKDIR` work on it unchanged. A BERT classifier keeps its
head and `id2label` names; a masked-LM or pretraining checkpoint becomes a `bert_mlm` run (the next-sentence head
dropped); a torchvision / timm ResNet keeps its 1000-class head and sees 224x224 images normalised with
ImageNet's mean and std. The inverse is `python -m ptft_jax.export`.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ptft_jax import models, optim, tasks
from ptft_jax.checkpoint import Checkpoints, Published
from ptft_jax.config import defaults, to_json, validate
from ptft_jax.errors import CheckpointError, UserError, main_exit_code
from ptft_jax.files import write_json, write_text
from ptft_jax.graft import graft
from ptft_jax.interop import torch_resnet
from ptft_jax.step import TrainState
from ptft_jax.text.tokenizer import WordPieceTokenizer

IMAGE_SIZE = 224  # torchvision's evaluation view: resize 256, centre crop 224


def _run_config(imp, spec: str):
    """(model config, data.json, task class) of the converted run."""
    if imp.kind == "resnet":
        model, task = dict(imp.model), tasks.ImageClassification
        info = {"image_shape": [IMAGE_SIZE, IMAGE_SIZE, 3], "mean": list(torch_resnet.IMAGENET_MEAN),
                "std": list(torch_resnet.IMAGENET_STD)}
    elif imp.kind == "bert_classifier":
        model, task, info = {"name": "bert", **imp.model, "num_classes": imp.num_classes}, tasks.TextClassification, {}
    elif imp.kind in ("bert_mlm", "bert_pretraining"):
        model, task, info = {"name": "bert_mlm", **imp.model}, tasks.MaskedLM, {}
    else:
        raise CheckpointError(f"{spec} holds only a BERT encoder (no classifier or masked-LM head), which has "
                              f"nothing to predict; fine-tune it directly with --config.init_from={spec}.")
    num_classes = imp.num_classes if imp.num_classes else model.get("vocab_size")
    info = {"name": os.path.basename(imp.source.rstrip("/")), "task": task.name, "num_classes": num_classes,
            "image_shape": None, "mean": [], "std": [],
            "class_names": list(imp.class_names) if imp.class_names else None, **info}
    return model, info, task


def _init_inputs(info, task):
    if not task.text:
        return jnp.zeros((1, *info["image_shape"]), jnp.float32)
    ids = jnp.zeros((1, 8), jnp.int32)
    return {"input_ids": ids, "token_type_ids": ids, "attention_mask": jnp.ones_like(ids)}


def convert(src: str, workdir: str, log=print) -> str:
    """Writes the run of the published weights `src` into `workdir` (which must not hold a run yet)."""
    pub = Published.parse(src) if src.startswith(("hf:", "torch:")) else None
    if pub is None:
        raise UserError(f"{src} is not hf:DIR or torch:FILE; name the published weights with one of those prefixes.")
    workdir = os.path.abspath(workdir)
    if os.path.exists(os.path.join(workdir, "checkpoints")):
        raise CheckpointError(f"{workdir} holds a run already; convert into a new folder.")
    imp = pub.imported
    model_cfg, info, task = _run_config(imp, src)
    config = validate(defaults())
    config.model = model_cfg
    config.data.source = src
    config.data.max_len = min(int(config.data.max_len), int(model_cfg.get("max_position", config.data.max_len)))
    model = models.build(config.model, info["num_classes"])  # a masked-LM model has no num_classes: unused
    # the fresh model's shapes, and every one of its leaves taken from the weights (any mismatch is listed)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), _init_inputs(info, task), train=False))
    fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    variables, report = graft(fresh, pub, [(".*", "load")])
    params = jax.tree.map(jnp.asarray, variables.pop("params"))
    tx = optim.build(config.optim, 1)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.tree.map(jnp.asarray, variables))
    os.makedirs(workdir, exist_ok=True)
    if imp.tokenizer_dir and task.text:
        tok = WordPieceTokenizer.load(imp.tokenizer_dir)
        tok.save(os.path.join(workdir, "tokenizer"))
        info.update(tokenizer_dir=os.path.join(workdir, "tokenizer"), tokenizer_source=imp.tokenizer_dir,
                    max_len=int(config.data.max_len), vocab_size=tok.vocab_size, lowercase=tok.lowercase)
    ckpt = Checkpoints(os.path.join(workdir, "checkpoints"), keep=1)
    try:
        ckpt.save(0, state, force=True)
        ckpt.wait()
    finally:
        ckpt.close()
    write_text(os.path.join(workdir, "config.json"), to_json(config))
    write_json(os.path.join(workdir, "data.json"), info, indent=2)
    write_json(os.path.join(workdir, "graft.json"), report.to_dict(), indent=2)
    log(f"converted {src} ({imp.kind}, {models.count_params(params):,} params, sha256 {imp.sha256[:16]}) "
        f"into {workdir}")
    return workdir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="hf:DIR (a transformers BERT folder) or torch:FILE (a ResNet state_dict)")
    parser.add_argument("workdir", help="a new folder for the run")
    args = parser.parse_args(argv)
    return main_exit_code(convert, args.src, args.workdir)


if __name__ == "__main__":
    sys.exit(main())
