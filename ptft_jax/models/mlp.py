"""The seed's MLP: Dense(256)-ReLU-Dense(128)-ReLU-head(10) on flattened inputs."""
import numbers
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ptft_jax.errors import ConfigError
from ptft_jax.models.remat import maybe_remat


class MLP(nn.Module):
    hidden: Sequence[int] = (256, 128)
    num_classes: int = 10
    dtype: Any = jnp.float32  # compute dtype; params stay float32
    remat: bool | str = False  # train.remat: recompute each hidden layer in the backward pass (models/remat.py)

    def __post_init__(self):
        # model.* are open config keys, so validate() cannot check them: a width of 0, -1 or 1.5 is refused here,
        # when models.build makes the model, rather than as a traceback from inside flax at init.
        widths = self.hidden
        if not isinstance(widths, (list, tuple)) or not all(
                isinstance(w, numbers.Integral) and not isinstance(w, bool) and w >= 1 for w in widths):
            raise ConfigError(f"model.hidden must be a list of layer widths, each a whole number of at least 1, not "
                              f"{widths!r}: e.g. (256, 128), or () for no hidden layer.")
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape((x.shape[0], -1)).astype(self.dtype)
        dense = maybe_remat(nn.Dense, self.remat)
        for i, width in enumerate(self.hidden):
            x = nn.relu(dense(width, dtype=self.dtype, name=f"dense_{i}")(x))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
