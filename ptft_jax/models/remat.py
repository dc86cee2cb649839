"""train.remat: a block class wrapped in `flax.linen.remat`, so the backward pass recomputes its activations.

The wrapped module keeps the name its instance is given, so the param tree (and every checkpoint) is the same
with and without remat."""
from __future__ import annotations

import flax.linen as nn
import jax


def maybe_remat(cls, remat, static_argnums=()):
    """`cls`, or `nn.remat(cls)` when `remat` is true or a jax.checkpoint_policies name (which activations the
    forward pass keeps: e.g. "dots_with_no_batch_dims_saveable" keeps the matmuls' outputs, "nothing_saveable"
    none). `static_argnums` counts `self` as 0: the Python arguments (e.g. `train`) that pick the code path."""
    if not remat:
        return cls
    policy = None if remat is True else getattr(jax.checkpoint_policies, remat)
    return nn.remat(cls, policy=policy, static_argnums=static_argnums)
