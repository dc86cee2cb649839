"""The optimiser from `config.optim`, through optax.

Its settings are checked by config.validate() (the allowed names, schedules and strategies, the ranges of the
numbers, finetune.lr_mults); the functions here take a validated config."""
from __future__ import annotations

import re

import jax
import optax

from ptft_jax import lora
from ptft_jax.config import Durations, lr_mult_rules, warmup_steps  # warmup_steps: also optim.warmup_steps, as before
from ptft_jax.errors import ConfigError


def schedule(cfg, total_steps: int, steps_per_epoch: int | None = None, *, warmup: int | None = None):
    """The learning rate of a validated `config.optim` by step: constant or cosine, after a linear warmup of `warmup`
    steps (default: optim.warmup_steps, or optim.warmup_epochs at `steps_per_epoch`)."""
    if warmup is None:
        warmup = warmup_steps(cfg, steps_per_epoch)
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else cfg.lr, peak_value=cfg.lr,
            warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
            end_value=cfg.lr * cfg.min_lr_ratio)
    if warmup:  # constant
        return optax.warmup_constant_schedule(init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup)
    return cfg.lr


def learning_rate(cfg, durations: Durations):
    """The run's learning rate by step, as a function (step -> float) even when constant: what the loop logs as
    `lr`. It is the rate before finetune.lr_mults / layer_decay, which scale it per parameter."""
    lr = schedule(cfg, durations.total_steps, warmup=durations.warmup_steps)
    if not callable(lr):
        return lambda step: float(lr)
    lr = jax.jit(lr)  # one compile, not one per jnp operation of the schedule
    return lambda step: float(lr(step))


def build(cfg, total_steps: int | None = None, finetune=None, params=None, steps_per_epoch: int | None = None, *,
          durations: Durations | None = None) -> optax.GradientTransformation:
    """The optimiser of a validated `config.optim`, shaped by `config.finetune` when params are given.

    The run's length and warmup come from `durations` (config.durations(config, steps_per_epoch)), or else from
    `total_steps` and optim.warmup_steps / optim.warmup_epochs at `steps_per_epoch`."""
    if durations is not None:
        if total_steps is not None and total_steps != durations.total_steps:
            raise ValueError(f"total_steps {total_steps} differs from durations.total_steps {durations.total_steps}")
        total_steps, warmup = durations.total_steps, durations.warmup_steps
    elif total_steps is None:
        raise TypeError("optim.build needs total_steps or durations")
    else:
        warmup = warmup_steps(cfg, steps_per_epoch)
    tx = base(cfg, total_steps, warmup=warmup)
    if finetune is None or params is None:
        return tx
    mults = path_multipliers(params, finetune)
    if finetune.strategy == "lora":
        # The state's params are what trains (the factors and the leaves init_from did not give: lora.split), a
        # tree not known before the graft: every leaf trains, each at its kernel's multiplier (depths: the model's).
        if any(m != 1.0 for m in jax.tree.leaves(mults)):
            paths = [_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
            tx = optax.chain(tx, optax.stateless(lambda updates, params=None: jax.tree.map(
                lambda m, u: m * u, path_multipliers(updates, finetune, paths), updates)))
        return tx
    if finetune.strategy != "full":  # linear_probe | bitfit
        labels = jax.tree.map(lambda t: "train" if t else "freeze", trainable(params, finetune.strategy))
        # Frozen leaves get no updates and keep no optimiser state.
        tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
    if any(m != 1.0 for m in jax.tree.leaves(mults)):
        tx = optax.chain(tx, _scale_by_tree(mults))
    return tx


def trainable(params, strategy: str):
    """Which leaves finetune.strategy trains (a tree of bools like `params`): every leaf (full); the head
    (linear_probe); or, for bitfit (Ben Zaken et al. 2022), the head, every `bias` (Dense, conv, LayerNorm and
    BatchNorm offsets, the masked-LM output bias) and every `scale` (the LayerNorm / BatchNorm scales): the
    kernels and embeddings stay as loaded. For lora every leaf: a LoRA state's params hold only what trains (its
    frozen base is the state's `frozen`)."""
    def trains(keypath, _):
        path = _path(keypath)
        if strategy in ("full", "lora") or _is_head(path):
            return True
        return strategy == "bitfit" and path.rsplit("/", 1)[-1] in ("bias", "scale")

    return jax.tree_util.tree_map_with_path(trains, params)


def count_trainable(params, strategy: str) -> int:
    """The number of parameters finetune.strategy trains."""
    return sum(int(x.size) for x, t in zip(jax.tree.leaves(params), jax.tree.leaves(trainable(params, strategy)))
               if t)


def _path(keypath) -> str:
    return jax.tree_util.keystr(keypath, simple=True, separator="/")


def _is_head(path: str) -> bool:
    return path == "head" or path.startswith("head/")


def path_multipliers(params, finetune, depth_paths=None):
    """Per-leaf learning-rate multipliers from `finetune.lr_mults` (regex, x) and `finetune.layer_decay`. A LoRA
    factor (`.../kernel/lora_a`) gets its kernel's; `depth_paths`: the model's leaf paths, for the block depths
    (default: those of `params`)."""
    rules = lr_mult_rules(finetune.lr_mults or ())
    paths = depth_paths or [_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    depth = _block_depths(paths) if finetune.layer_decay else {}

    def mult(keypath, _):
        path = lora.kernel_path(_path(keypath))
        m = 1.0
        for pattern, x in rules:
            if pattern.fullmatch(path):
                m = x
                break
        if finetune.layer_decay and not _is_head(path):
            m *= float(finetune.layer_decay) ** depth.get(path, max(depth.values(), default=0) + 1)
        return m

    return jax.tree_util.tree_map_with_path(mult, params)


def _block_depths(paths) -> dict[str, int]:
    """Depth from the head of each leaf in a numbered block (`dense_3/...`, `layer_11/...`): 1 for the last block."""
    numbered = {}
    for path in paths:
        m = re.search(r"(?:^|/)[A-Za-z]+_?(\d+)(?:/|$)", path)
        if m and not _is_head(path):
            numbered[path] = int(m.group(1))
    if not numbered:
        raise ConfigError("finetune.layer_decay needs a model with numbered blocks (e.g. dense_0, layer_3); "
                          "this model has none.")
    top = max(numbered.values())
    return {p: top - i + 1 for p, i in numbered.items()}


def _scale_by_tree(mults) -> optax.GradientTransformation:
    return optax.stateless(lambda updates, params=None: jax.tree.map(lambda m, u: m * u, mults, updates))


def decay_mask(params):
    """Weight decay applies to `kernel` leaves (and a kernel's LoRA factors) only: biases and BatchNorm
    scales/offsets do not decay."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: lora.kernel_path(_path(p)).rsplit("/", 1)[-1] == "kernel", params)


def base(cfg, total_steps: int, steps_per_epoch: int | None = None, *,
         warmup: int | None = None) -> optax.GradientTransformation:
    """SGD (momentum, nesterov), Adam or AdamW, with optional clipping and weight decay (kernels only)."""
    lr = schedule(cfg, total_steps, steps_per_epoch, warmup=warmup)
    parts = []
    if cfg.clip_norm:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.name in ("sgd", "adam") and cfg.weight_decay:  # added to the gradient; adamw decouples it
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
    parts.append(_OPTIMISERS[cfg.name](cfg, lr))
    return optax.chain(*parts) if len(parts) > 1 else parts[0]


# optim.name -> the optax optimiser at learning rate (or schedule) lr; the names are config.CHOICES["optim.name"].
_OPTIMISERS = {
    "sgd": lambda cfg, lr: optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov),
    "adam": lambda cfg, lr: optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
    "adamw": lambda cfg, lr: optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                         mask=decay_mask),
}
