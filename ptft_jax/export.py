"""A ptft_jax run in a published format: `python -m ptft_jax.export WORKDIR hf:DIR | torch:FILE.safetensors`.

  hf:DIR       a BERT run (a `bert` classifier, or `bert_mlm`) as a transformers folder: config.json,
               model.safetensors and the tokenizer, loaded by `AutoModelForSequenceClassification` /
               `BertForMaskedLM` and `AutoTokenizer.from_pretrained(DIR)`
  torch:FILE   a ResNet run (ImageNet stem) as a state_dict that `torchvision.models.resnetN(num_classes=K)
               .load_state_dict` accepts
The latest checkpoint is exported (`--step` for another; a LoRA run's factors folded into its kernels). The inverse
is `python -m ptft_jax.convert`.

    python -m ptft_jax.export WORKDIR --merge OUT

folds a LoRA run's factors into its kernels (W + (alpha / r) a @ b, lora.merge) and writes an ordinary run in OUT:
config.json (finetune.strategy=full, no init_from), data.json, the tokenizer, and a checkpoint of the same step
holding the merged params (the optimiser state fresh), which predict and evaluate read like any run's.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import jax
import ml_collections
import numpy as np

from ptft_jax import lora, models
from ptft_jax.checkpoint import Checkpoints
from ptft_jax.errors import CheckpointError, UserError, main_exit_code
from ptft_jax.interop import hf_bert, torch_resnet
from ptft_jax.predict import read_run


def bert_fields(model_cfg: dict) -> dict:
    """A BERT config's sizes spelt out (a run may name a preset size)."""
    m = models.build(model_cfg, model_cfg.get("num_classes") or 2, vocab_size=model_cfg.get("vocab_size"))
    layers, hidden, heads, inter = m.dims()
    return {"num_layers": layers, "hidden_size": hidden, "num_heads": heads, "intermediate_size": inter,
            "vocab_size": m.vocab_size, "max_position": m.max_position, "type_vocab_size": m.type_vocab_size,
            "dropout_rate": m.dropout_rate, "attention_dropout_rate": getattr(m, "attention_dropout_rate", 0.0)}


def _read_checkpoint(workdir: str, step: int | None):
    """(step, the raw checkpoint tree) of a run's checkpoint `step` (None: the latest)."""
    ck = Checkpoints(os.path.join(workdir, "checkpoints"), create=False)
    try:
        step = step if step is not None else ck.latest_step()
        if step is None:
            raise CheckpointError(f"No checkpoint in {workdir}/checkpoints; train first.")
        return step, ck.restore_raw(step)
    finally:
        ck.close()


def export(workdir: str, dest: str, step: int | None = None, log=print) -> str:
    kind, _, path = dest.partition(":")
    if kind not in ("hf", "torch") or not path:
        raise UserError(f"{dest} is not hf:DIR or torch:FILE; name the format with one of those prefixes.")
    info, config = read_run(workdir)
    step, raw = _read_checkpoint(workdir, step)
    params = raw["params"]
    if (config.get("finetune") or {}).get("strategy") == "lora":  # the factors folded into the kernels first
        params = jax.device_get(jax.jit(lora.merge)(params, lora.read_base(workdir, config, config["finetune"])))
    variables = {"params": params, **(raw.get("model_state") or {})}
    model_cfg = dict(config["model"])
    name = model_cfg.get("name")
    path = os.path.abspath(os.path.expanduser(path))
    if kind == "hf":
        if name not in ("bert", "bert_mlm"):
            raise UserError(f"{workdir} is a {name} run; hf: exports BERT runs (torch: exports ResNets).")
        fields = bert_fields({**model_cfg, "vocab_size": model_cfg.get("vocab_size") or info.get("vocab_size"),
                              "num_classes": info["num_classes"] if name == "bert" else None})
        hf_bert.write(path, variables, fields, info.get("tokenizer_dir"),
                      kind="classifier" if name == "bert" else "mlm", class_names=info.get("class_names"))
    else:
        if not str(name).startswith("resnet") or model_cfg.get("stem", "imagenet") != "imagenet":
            raise UserError(f"{workdir} is a {name} run with the {model_cfg.get('stem', '?')} stem; torch: exports "
                            f"ResNets with the ImageNet stem, which is what torchvision builds.")
        torch_resnet.write(path, variables, {"name": name, "width": model_cfg.get("width", 64), "stem": "imagenet"})
    log(f"exported {workdir} (step {step}) to {dest}")
    return path


def merge(workdir: str, out: str, step: int | None = None, log=print) -> str:
    """A LoRA run's checkpoint (the latest, or `step`) as an ordinary run in `out` (see the module docstring)."""
    from ptft_jax.config import to_json, validate
    from ptft_jax.files import write_json, write_text
    from ptft_jax.step import TrainState
    from ptft_jax.train import build_run, init_state

    workdir, out = os.path.abspath(workdir), os.path.abspath(os.path.expanduser(out))
    info, config = read_run(workdir)
    strategy = (config.get("finetune") or {}).get("strategy")
    if strategy != "lora":
        raise UserError(f"{workdir} is a finetune.strategy={strategy} run, and --merge folds LoRA factors into "
                        f"kernels: its checkpoints already hold plain params, export them with hf: or torch:.")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UserError(f"{out} exists and is not an empty folder; name a new folder for the merged run.")
    step, raw = _read_checkpoint(workdir, step)
    frozen = lora.read_base(workdir, config, config["finetune"])
    params = jax.device_get(jax.jit(lora.merge)(raw["params"], frozen))
    plain = dict(config, init_from=None, init_step=None, graft=None,
                 finetune=dict(config["finetune"], strategy="full"))
    os.makedirs(out, exist_ok=True)
    tokenizer = os.path.join(workdir, "tokenizer")
    if os.path.isdir(tokenizer):
        shutil.copytree(tokenizer, os.path.join(out, "tokenizer"))
    cfg = validate(ml_collections.ConfigDict(json.loads(json.dumps(plain))))
    run = build_run(cfg, out, log=lambda *_: None)
    try:
        target = init_state(run)  # the structure an ordinary run of this config restores into
        state = TrainState(target.step, jax.tree.map(run.par.replicate, params), target.opt_state,
                           jax.tree.map(run.par.replicate, raw.get("model_state") or {}))
        state = state.replace(step=run.par.replicate(np.int32(step)),
                              opt_state=jax.jit(run.tx.init, out_shardings=run.par.replicated)(state.params))
        write_text(os.path.join(out, "config.json"), to_json(run.config))
        write_json(os.path.join(out, "data.json"), run.ds.info(run.task.name), indent=2)
        run.ckpt.save(step, state, force=True)
        run.ckpt.wait()
    finally:
        run.ckpt.close()
        run.metrics.close()
    log(f"merged the LoRA factors of {workdir} (step {step}) into {out}")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", help="a ptft_jax run")
    parser.add_argument("dest", nargs="?", help="hf:DIR or torch:FILE.safetensors")
    parser.add_argument("--merge", metavar="OUT", default=None,
                        help="fold a LoRA run's factors into its kernels, as an ordinary run in OUT")
    parser.add_argument("--step", type=int, default=None, help="the checkpoint to export (default: the latest)")
    args = parser.parse_args(argv)
    if args.merge is not None:
        if args.dest is not None:
            parser.error("give either a destination (hf:DIR, torch:FILE) or --merge OUT, not both")
        return main_exit_code(merge, args.workdir, args.merge, args.step)
    if args.dest is None:
        parser.error("a destination (hf:DIR or torch:FILE) or --merge OUT is needed")
    return main_exit_code(export, args.workdir, args.dest, args.step)


if __name__ == "__main__":
    sys.exit(main())
