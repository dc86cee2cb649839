"""BERT (Devlin et al. 2019) in flax.linen: the encoder, a sequence classifier and the masked-LM model.

Inputs are `input_ids`, `token_type_ids` and `attention_mask` (int32 [B, T]; 1 = real token, 0 = padding), given
as arguments or as one dict holding them. Embeddings (word + position + token type) pass LayerNorm (eps 1e-12) and
dropout; each post-LN layer is self-attention through `jax.nn.dot_product_attention` with the padding mask (so
the GPU can pick its fused kernel) and a GELU MLP of width 4H. Hidden-state dropout is applied; attention-probability
dropout (`attention_dropout_rate`, HF's attention_probs_dropout_prob) only when it is > 0 and training, through an
explicit softmax (the fused kernels have none), so the default 0.0 and every evaluation keep the fused path.

Parameters sit at the top level of every model so that grafting works by path:
  embeddings/...  layer_0 .. layer_{L-1}/...   shared by all three models
  pooler/...      the tanh pooler on [CLS] (BertEncoder with use_pooler, BertClassifier)
  head/...        the classifier (BertClassifier)
  mlm/...         the masked-LM transform, LayerNorm and output bias (BertForMLM; the decoder is tied to
                  embeddings/word/embedding)
A classifier is grafted from an MLM checkpoint with
  [("head/.*", "init"), ("pooler/.*", "init"), ("mlm/.*", "skip"), (".*", "load")].
With the base sizes the encoder + pooler has 109,482,240 parameters and the MLM model 109,514,298 (as in the
published checkpoints). Params are float32; `dtype` is the compute dtype (bfloat16 for speed).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptft_jax.errors import ConfigError
from ptft_jax.models.remat import maybe_remat

# size: (layers, hidden, heads); intermediate = 4 * hidden
PRESETS = {"tiny": (2, 128, 2), "mini": (4, 256, 4), "small": (4, 512, 8), "medium": (8, 512, 8),
           "base": (12, 768, 12), "large": (24, 1024, 16)}



def _init(key, shape, dtype=jnp.float32):
    """BERT's init, truncated normal (std 0.02, cut at 2 std), drawn flat and reshaped: eager init compiles one
    sampler per distinct size rather than per shape (q/k/v/out/pooler share one), which halves init time on CPU."""
    return (jax.random.truncated_normal(key, -2.0, 2.0, (math.prod(shape),), dtype) * 0.02).reshape(shape)

def _gelu(x):
    return nn.gelu(x, approximate=False)  # BERT's erf GELU


class BertEmbeddings(nn.Module):
    vocab_size: int
    hidden_size: int
    max_position: int
    type_vocab_size: int
    dropout_rate: float
    dtype: Any

    def setup(self):
        def embed(n):
            return nn.Embed(n, self.hidden_size, dtype=self.dtype, embedding_init=_init)

        self.word, self.position, self.token_type = embed(self.vocab_size), embed(self.max_position), \
            embed(self.type_vocab_size)
        self.layer_norm = nn.LayerNorm(epsilon=1e-12, dtype=self.dtype)
        self.dropout = nn.Dropout(self.dropout_rate)

    def __call__(self, input_ids, token_type_ids, train: bool):
        t = input_ids.shape[1]
        if t > self.max_position:
            raise ConfigError(f"sequence length {t} exceeds the model's {self.max_position} positions.")
        x = self.word(input_ids) + self.position(jnp.arange(t)[None]) + self.token_type(token_type_ids)
        return self.dropout(self.layer_norm(x), deterministic=not train)

    def attend(self, x):
        """x @ word_embeddings.T: the tied masked-LM decoder."""
        return self.word.attend(x)


class BertLayer(nn.Module):
    hidden_size: int
    num_heads: int
    intermediate_size: int
    dropout_rate: float
    dtype: Any
    attention_dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, mask, train: bool):
        h, a = self.hidden_size, self.num_heads
        if h % a:
            raise ConfigError(f"hidden size {h} is not divisible by the {a} attention heads.")
        def proj(name):
            return nn.DenseGeneral((a, h // a), dtype=self.dtype, kernel_init=_init, name=name)

        q, k, v = proj("query")(x), proj("key")(x), proj("value")(x)  # [B, T, A, D]
        if train and self.attention_dropout_rate > 0:
            y = self._attention_with_dropout(q, k, v, mask)
        else:
            y = jax.nn.dot_product_attention(q, k, v, mask=mask)
        y = nn.DenseGeneral(h, axis=(-2, -1), dtype=self.dtype, kernel_init=_init, name="attention_out")(y)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        x = nn.LayerNorm(epsilon=1e-12, dtype=self.dtype, name="attention_norm")(x + y)
        y = _gelu(nn.Dense(self.intermediate_size, dtype=self.dtype, kernel_init=_init, name="intermediate")(x))
        y = nn.Dense(h, dtype=self.dtype, kernel_init=_init, name="output")(y)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        return nn.LayerNorm(epsilon=1e-12, dtype=self.dtype, name="output_norm")(x + y)

    def _attention_with_dropout(self, q, k, v, mask):
        """softmax(q k^T / sqrt(D)) with dropout on the probabilities (as HF BERT), then @ v; [B, T, A, D]."""
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
        logits = jnp.where(mask, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        probs = nn.Dropout(self.attention_dropout_rate)(probs, deterministic=False)
        return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def _inputs(input_ids, token_type_ids, attention_mask):
    if isinstance(input_ids, dict):
        d = input_ids
        input_ids, token_type_ids, attention_mask = d["input_ids"], d.get("token_type_ids"), d.get("attention_mask")
    input_ids = jnp.asarray(input_ids, jnp.int32)
    token_type_ids = jnp.zeros_like(input_ids) if token_type_ids is None else jnp.asarray(token_type_ids, jnp.int32)
    attention_mask = jnp.ones_like(input_ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    return input_ids, token_type_ids, attention_mask


class BertEncoder(nn.Module):
    """Returns (sequence output [B, T, H], pooled [CLS] output [B, H] or None)."""
    size: str = "base"                     # tiny | mini | small | medium | base | large
    num_layers: int | None = None          # None: from `size`
    hidden_size: int | None = None
    num_heads: int | None = None
    intermediate_size: int | None = None   # None: 4 * hidden_size
    vocab_size: int = 30522
    max_position: int = 512
    type_vocab_size: int = 2
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0    # dropout on the attention probabilities (HF attention_probs_dropout_prob)
    use_pooler: bool = True
    dtype: Any = jnp.float32               # compute dtype; params stay float32
    remat: bool | str = False              # train.remat: recompute each layer in the backward pass (models/remat.py)

    def dims(self):
        if self.size not in PRESETS:
            raise ConfigError(f"Unknown BERT size {self.size!r}; choose one of {', '.join(PRESETS)}.")
        layers, hidden, heads = PRESETS[self.size]
        layers = self.num_layers or layers
        hidden = self.hidden_size or hidden
        heads = self.num_heads or heads
        return layers, hidden, heads, self.intermediate_size or 4 * hidden

    def setup(self):
        layers, hidden, heads, inter = self.dims()
        self.embeddings = BertEmbeddings(self.vocab_size, hidden, self.max_position, self.type_vocab_size,
                                         self.dropout_rate, self.dtype)
        layer = maybe_remat(BertLayer, self.remat, static_argnums=(3,))  # (self, x, mask, train)
        self.layer = [layer(hidden, heads, inter, self.dropout_rate, self.dtype, self.attention_dropout_rate)
                      for _ in range(layers)]
        if self.use_pooler:
            self.pooler = nn.Dense(hidden, dtype=self.dtype, kernel_init=_init)

    def encode(self, input_ids, token_type_ids=None, attention_mask=None, train: bool = False):
        input_ids, token_type_ids, attention_mask = _inputs(input_ids, token_type_ids, attention_mask)
        x = self.embeddings(input_ids, token_type_ids, train)
        mask = (attention_mask > 0)[:, None, None, :]  # [B, 1(heads), 1(queries), T(keys)]
        for layer in self.layer:
            x = layer(x, mask, train)
        pooled = jnp.tanh(self.pooler(x[:, 0])) if self.use_pooler else None
        return x, pooled

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, train: bool = False):
        return self.encode(input_ids, token_type_ids, attention_mask, train)


class BertClassifier(BertEncoder):
    """Logits [B, num_classes] from the pooled [CLS] output (pooler + dropout + `head`)."""
    num_classes: int = 2

    def setup(self):
        super().setup()
        self.head = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_init)
        self.head_dropout = nn.Dropout(self.dropout_rate)

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, train: bool = False):
        seq, pooled = self.encode(input_ids, token_type_ids, attention_mask, train)
        pooled = seq[:, 0] if pooled is None else pooled  # use_pooler=False: the [CLS] state itself
        return self.head(self.head_dropout(pooled, deterministic=not train))


class MLMHead(nn.Module):
    vocab_size: int
    hidden_size: int
    dtype: Any

    @nn.compact
    def __call__(self, x, word_embed):
        x = _gelu(nn.Dense(self.hidden_size, dtype=self.dtype, kernel_init=_init, name="transform")(x))
        x = nn.LayerNorm(epsilon=1e-12, dtype=self.dtype, name="layer_norm")(x)
        bias = self.param("bias", nn.initializers.zeros, (self.vocab_size,), jnp.float32)
        return word_embed.attend(x) + bias.astype(self.dtype)


class BertForMLM(BertEncoder):
    """Masked-LM logits: [B, T, V], or [B, P, V] at `masked_positions` (int32 [B, P]) when given."""
    use_pooler: bool = False

    def setup(self):
        super().setup()
        self.mlm = MLMHead(self.vocab_size, self.dims()[1], self.dtype)

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, train: bool = False,
                 masked_positions=None):
        if isinstance(input_ids, dict) and masked_positions is None:
            masked_positions = input_ids.get("masked_positions")
        x, _ = self.encode(input_ids, token_type_ids, attention_mask, train)
        if masked_positions is not None:
            x = jnp.take_along_axis(x, jnp.asarray(masked_positions, jnp.int32)[..., None], axis=1)
        return self.mlm(x, self.embeddings)
