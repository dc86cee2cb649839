"""LoRA (Hu et al. 2021) for every model, without touching the model modules: `finetune.strategy=lora`.

Each targeted kernel W (a frozen leaf loaded from `init_from` whose path `finetune.lora_targets` matches) gains two
factors, `a` [fan_in, r] (uniform in +-1/sqrt(fan_in), like PEFT's kaiming-uniform A) and `b` [r, fan_out] = 0.
The forward uses `W + (alpha / r) * reshape(a @ b)`, formed inside the jitted step from the frozen W, so step 0
computes exactly the pretrained model (b = 0 adds an exact zero). Conv kernels [kh, kw, in, out] and DenseGeneral
kernels ([in, heads, head_dim] for BERT's query/key/value, [heads, head_dim, out] for its attention output) are
seen as the [fan_in, fan_out] matrix of their linear map.

The state splits in two (step.TrainState): `params` holds what trains, the leaves not loaded from `init_from`
(the head, and e.g. a pooler a masked-LM checkpoint lacks: a frozen random layer would be dead weight) and the
factors, at `<kernel path>/lora_a` and `/lora_b` (so finetune.lr_mults and layer_decay treat a factor as its
kernel); `frozen` holds {"scale": alpha / r, "base": the loaded leaves}. Checkpoints hold `params` only; the base
is read again from `init_from` (read_base), which must be the very checkpoint graft.json's content_hash records.

We keep our own because flax.linen (0.12) has no LoRA (flax.nnx.LoRA is for nnx modules, which these are not) and
PEFT is torch-only. `finetune.lora_dropout` would need the un-merged x @ a @ b path per layer; it is refused.
"""
from __future__ import annotations

import json
import os
import re
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from ptft_jax.errors import CheckpointError, ConfigError
from ptft_jax.graft import flatten as flat  # trees by slash-joined paths, as graft keeps them
from ptft_jax.graft import unflatten as unflat

FACTORS = ("lora_a", "lora_b")

# finetune.lora_targets None: per model, the kernels LoRA adapts (regexes over the params' slash-joined paths).
DEFAULT_TARGETS = {
    "bert": r"layer_\d+/(query|value|intermediate|output)/kernel",  # attention query and value, the MLP
    "bert_mlm": r"layer_\d+/(query|value|intermediate|output)/kernel",
    "mlp": r"dense_\d+/kernel",                                      # the hidden layers
    "resnet": r".*[Cc]onv[^/]*/kernel",                              # every convolution
}


def targets_pattern(finetune, model_name: str) -> str:
    if finetune.lora_targets is not None:
        return finetune.lora_targets
    return DEFAULT_TARGETS["resnet" if str(model_name).startswith("resnet") else str(model_name)]


def kernel_path(path: str) -> str:
    """'layer_0/query/kernel/lora_a' -> 'layer_0/query/kernel'; any other path as it is."""
    head, _, last = path.rpartition("/")
    return head if last in FACTORS else path


def fan_in_axes(path: str, ndim: int) -> int:
    """How many leading axes of a kernel are its inputs: all but the last, except BERT's query / key / value
    DenseGeneral kernels [in, heads, head_dim]."""
    if ndim == 3 and path.rsplit("/", 2)[-2] in ("query", "key", "value"):
        return 1
    return ndim - 1


def _shorten(paths, most: int = 12) -> str:
    paths = list(paths)
    shown = ", ".join(paths[:most])
    return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")


def split(params: dict, loaded: set, finetune, model_name: str, seed: int):
    """(trainable, frozen) from a grafted model's full params and the paths graft loaded: see the module
    docstring (traceable: jax.eval_shape gives the shapes). The factors are drawn from `seed` and each kernel's
    path. A ConfigError when lora_targets matches no frozen kernel (naming the kernels there are)."""
    pattern = re.compile(targets_pattern(finetune, model_name))
    leaves = flat(params)
    base = {p: x for p, x in leaves.items() if p in loaded and not (p == "head" or p.startswith("head/"))}
    trainable = {p: x for p, x in leaves.items() if p not in base}
    kernels = sorted(p for p in base if p.rsplit("/", 1)[-1] == "kernel")
    chosen = [p for p in kernels if pattern.fullmatch(p)]
    if not chosen:
        raise ConfigError(f"finetune.lora_targets {pattern.pattern!r} matches none of the frozen kernels "
                          f"({_shorten(kernels) or 'there are none'}); write a regex that matches some of them.")
    r = int(finetune.lora_rank)
    root = jax.random.fold_in(jax.random.key(seed), 2)
    for p in chosen:
        shape = base[p].shape
        k = fan_in_axes(p, len(shape))
        fan_in, fan_out = int(np.prod(shape[:k])), int(np.prod(shape[k:]))
        key = jax.random.fold_in(root, zlib.crc32(p.encode()))
        bound = 1.0 / np.sqrt(fan_in)
        trainable[f"{p}/lora_a"] = jax.random.uniform(key, (fan_in, r), jnp.float32, -bound, bound)
        trainable[f"{p}/lora_b"] = jnp.zeros((r, fan_out), jnp.float32)
    frozen = {"scale": jnp.asarray(float(finetune.lora_alpha) / r, jnp.float32), "base": unflat(base)}
    return unflat(trainable), frozen


def merge(params, frozen):
    """The model's full params from a LoRA state's (params, frozen): every factored kernel W + scale * a @ b, the
    other leaves as they are; `params` itself when `frozen` is None (any other strategy). Traceable (jit)."""
    if frozen is None:
        return params
    base, scale, leaves = flat(frozen["base"]), frozen["scale"], flat(params)
    out = dict(base)
    for path, x in leaves.items():
        if path.endswith("/lora_b"):
            continue
        if path.endswith("/lora_a"):
            w = base[kernel_path(path)]
            b = leaves[kernel_path(path) + "/lora_b"]
            delta = jnp.matmul(x, b, precision=jax.lax.Precision.HIGHEST).reshape(w.shape)
            out[kernel_path(path)] = w + (scale * delta).astype(w.dtype)
        else:
            out[path] = x
    return unflat(out)


def count(frozen) -> int:
    """The frozen base's parameters (the scale is no parameter)."""
    return 0 if frozen is None else sum(int(np.size(x)) for x in jax.tree.leaves(frozen["base"]))


def loaded_paths(rows) -> set:
    """The params paths graft loaded, from its report rows (GraftReport.rows, graft.json's "rows")."""
    return {r["path"].split("/", 1)[1] for r in rows if r["action"] == "load" and r["path"].startswith("params/")}


def read_graft_json(workdir: str) -> dict:
    path = os.path.join(workdir, "graft.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} cannot be read ({type(e).__name__}); a LoRA run needs it to rebuild its "
                              f"frozen base from init_from: restore it from a copy of the run.") from None


def read_base(workdir: str, config: dict, finetune) -> dict:
    """A LoRA run's `frozen` rebuilt from its init_from and graft.json (on host, as NumPy arrays), refused when the
    checkpoint init_from names is no longer the one the run started from (its content hash changed)."""
    from ptft_jax.graft import content_hash, read_source
    report = read_graft_json(workdir)
    init_from = config.get("init_from")
    leaves = read_source(init_from, config.get("init_step"))[2]
    check_same_base(report, content_hash(leaves), init_from)
    params = leaves.get("params", {})
    rows = {r["path"].split("/", 1)[1]: r for r in report["rows"] if r["path"].startswith("params/")}
    base = {}
    for p in loaded_paths(report["rows"]):
        if p == "head" or p.startswith("head/"):
            continue
        base[p] = np.asarray(params[p]).astype(rows[p].get("dtype") or np.float32, copy=False)
    r = int(finetune["lora_rank"])
    return {"scale": np.asarray(float(finetune["lora_alpha"]) / r, np.float32), "base": unflat(base)}


def check_same_base(report: dict, content_hash: str, init_from):
    if report.get("content_hash") != content_hash:
        raise CheckpointError(f"init_from {init_from} is not the checkpoint this LoRA run started from (its sha256 "
                              f"{content_hash[:16]} differs from graft.json's {str(report.get('content_hash'))[:16]}), "
                              f"and the run's checkpoints hold only the factors: restore the original init_from.")
