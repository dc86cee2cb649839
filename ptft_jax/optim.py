"""The optimiser from `config.optim`, through optax."""
from __future__ import annotations

import optax

from ptft_jax.errors import ConfigError


def schedule(cfg, total_steps: int):
    if cfg.schedule == "constant":
        if cfg.warmup_steps:
            return optax.join_schedules(
                [optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps), optax.constant_schedule(cfg.lr)],
                [cfg.warmup_steps])
        return cfg.lr
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if cfg.warmup_steps else cfg.lr, peak_value=cfg.lr,
            warmup_steps=cfg.warmup_steps, decay_steps=max(total_steps, cfg.warmup_steps + 1),
            end_value=cfg.lr * cfg.min_lr_ratio)
    raise ConfigError(f"optim.schedule {cfg.schedule!r} is not one of: constant, cosine.")


def build(cfg, total_steps: int) -> optax.GradientTransformation:
    """SGD (momentum, nesterov), Adam or AdamW, with optional clipping and weight decay."""
    lr = schedule(cfg, total_steps)
    parts = []
    if cfg.clip_norm:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    name = cfg.name
    if name == "sgd":
        if cfg.weight_decay:
            parts.append(optax.add_decayed_weights(cfg.weight_decay))
        parts.append(optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
    elif name == "adam":
        if cfg.weight_decay:
            parts.append(optax.add_decayed_weights(cfg.weight_decay))
        parts.append(optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
    elif name == "adamw":
        parts.append(optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay))
    else:
        raise ConfigError(f"optim.name {name!r} is not one of: sgd, adam, adamw.")
    if cfg.lr <= 0:
        raise ConfigError(f"optim.lr must be positive, not {cfg.lr}.")
    return optax.chain(*parts) if len(parts) > 1 else parts[0]
