"""ResNet v1.5 (He et al. 2016; the stride of a bottleneck sits on its 3x3 conv, as in torchvision).

`resnet18`/`resnet34` stack BasicBlocks, `resnet50`/`resnet101` Bottlenecks. The stem is the ImageNet one
(7x7/2 conv + 3x3/2 max-pool) or the CIFAR one (3x3/1 conv, no pool). BatchNorm (momentum 0.9, eps 1e-5) keeps
its running statistics in the `batch_stats` collection; under `jit` with the batch sharded over devices the
batch mean is a global reduction, so the statistics are those of the global batch. Blocks are numbered
`block_0 .. block_{n-1}` across stages (layer-wise lr decay counts depth by them); the classifier is `head`.
Parameter counts match torchvision: resnet18 11,689,512 and resnet50 25,557,032 at 1000 classes.
"""
import math
from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptft_jax.errors import ConfigError
from ptft_jax.models.remat import maybe_remat


def conv_init(key, shape, dtype=jnp.float32):
    """torchvision's init: He normal on the fan-out. Drawn flat and reshaped: the same distribution, but XLA on
    CPU compiles a flat draw about 3x faster than a 4-d one (ResNet init compiles in seconds, not tens)."""
    fan_out = math.prod(shape[:-2]) * shape[-1]
    return (jax.random.normal(key, (math.prod(shape),), dtype) * math.sqrt(2.0 / fan_out)).reshape(shape)


class BatchNorm(nn.BatchNorm):
    """flax's BatchNorm (same name, so the tree keeps `BatchNorm_i`), optionally keeping torch's running variance:
    with `unbiased_var` the running variance is updated with the unbiased batch variance (n / (n - 1) times the
    biased one, n the values per channel) while the batch is normalised with the biased one, as torch does."""
    unbiased_var: bool = False

    @nn.compact
    def __call__(self, x, use_running_average=None, **kwargs):
        training = not nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        correct = self.unbiased_var and training and not self.is_initializing()
        old = self.get_variable("batch_stats", "var") if correct else None
        y = super().__call__(x, use_running_average=use_running_average, **kwargs)
        if correct:
            n = math.prod(x.shape[:-1])
            new = self.get_variable("batch_stats", "var")  # momentum * old + (1 - momentum) * biased
            self.put_variable("batch_stats", "var", self.momentum * old + (new - self.momentum * old) * (n / (n - 1)))
        return y


def _layers(dtype, train: bool, unbiased_var: bool = False):
    """The conv (no bias, He fan-out init) and BatchNorm (momentum 0.9, eps 1e-5) every ResNet layer uses."""
    conv = partial(nn.Conv, use_bias=False, dtype=dtype, kernel_init=conv_init)
    norm = partial(BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                   unbiased_var=unbiased_var)
    return conv, norm


class BasicBlock(nn.Module):
    filters: int
    strides: int = 1
    dtype: Any = jnp.float32
    zero_init_residual: bool = False
    bn_unbiased_var: bool = False

    @nn.compact
    def __call__(self, x, train: bool):
        conv, norm = _layers(self.dtype, train, self.bn_unbiased_var)
        y = conv(self.filters, (3, 3), self.strides, padding=((1, 1), (1, 1)))(x)
        y = nn.relu(norm()(y))
        y = conv(self.filters, (3, 3), padding=((1, 1), (1, 1)))(y)
        y = norm(scale_init=nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones)(y)
        return nn.relu(_shortcut(x, y.shape[-1], self.strides, conv, norm) + y)


class Bottleneck(nn.Module):
    filters: int
    strides: int = 1
    dtype: Any = jnp.float32
    zero_init_residual: bool = False
    bn_unbiased_var: bool = False

    @nn.compact
    def __call__(self, x, train: bool):
        conv, norm = _layers(self.dtype, train, self.bn_unbiased_var)
        y = nn.relu(norm()(conv(self.filters, (1, 1))(x)))
        y = nn.relu(norm()(conv(self.filters, (3, 3), self.strides, padding=((1, 1), (1, 1)))(y)))
        y = conv(self.filters * 4, (1, 1))(y)
        y = norm(scale_init=nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones)(y)
        return nn.relu(_shortcut(x, y.shape[-1], self.strides, conv, norm) + y)


def _shortcut(x, filters, strides, conv, norm):
    """Identity, or a strided 1x1 conv + BatchNorm where the shape changes."""
    if x.shape[-1] == filters and strides == 1:
        return x
    return norm(name="proj_bn")(conv(filters, (1, 1), strides, name="proj_conv")(x))


class ResNet(nn.Module):
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: str = "basic"              # basic | bottleneck
    num_classes: int = 1000
    width: int = 64                   # channels of the stem and first stage; doubled at each later stage
    stem: str = "imagenet"            # imagenet (7x7/2 conv + max-pool) | cifar (3x3/1 conv, no pool)
    zero_init_residual: bool = False  # the last BatchNorm scale of each residual branch starts at 0
    dtype: Any = jnp.float32          # compute dtype; params stay float32
    bn_unbiased_var: bool = False     # running variance from the unbiased batch variance, as torch keeps it
    remat: bool | str = False         # train.remat: recompute each block in the backward pass (models/remat.py)

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.block not in ("basic", "bottleneck"):
            raise ConfigError(f"model.block {self.block!r} is not one of: basic, bottleneck.")
        if self.stem not in ("imagenet", "cifar"):
            raise ConfigError(f"model.stem {self.stem!r} is not one of: imagenet, cifar.")
        block = maybe_remat(BasicBlock if self.block == "basic" else Bottleneck, self.remat,
                            static_argnums=(2,))  # (self, x, train)
        k, stride = (7, 2) if self.stem == "imagenet" else (3, 1)
        conv, norm = _layers(self.dtype, train, self.bn_unbiased_var)
        x = conv(self.width, (k, k), stride, padding=((k // 2, k // 2),) * 2, name="stem_conv")(x.astype(self.dtype))
        x = norm(name="stem_bn")(x)
        x = nn.relu(x)
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        n = 0
        for stage, size in enumerate(self.stage_sizes):
            for i in range(size):
                strides = 2 if stage > 0 and i == 0 else 1
                x = block(self.width * 2 ** stage, strides, self.dtype, self.zero_init_residual,
                          bn_unbiased_var=self.bn_unbiased_var, name=f"block_{n}")(x, train)
                n += 1
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)


# The registry's models: the same module with the depth's stages and block as defaults.
class ResNet18(ResNet):
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: str = "basic"


class ResNet34(ResNet):
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    block: str = "basic"


class ResNet50(ResNet):
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    block: str = "bottleneck"


class ResNet101(ResNet):
    stage_sizes: Sequence[int] = (3, 4, 23, 3)
    block: str = "bottleneck"
