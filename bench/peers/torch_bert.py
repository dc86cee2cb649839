"""PyTorch peer of the bert_base_mlm step workload, written the way PyTorch users write it.

With `transformers` importable: `BertForMaskedLM` (attention dropout 0, as ptft_jax's model has none; SDPA
attention), trained the usual Hugging Face way: `labels` [B, T] with -100 wherever nothing is predicted, so its
decoder runs at every position. Without it: a hand-written post-LN BERT (word + position + token-type embeddings,
LayerNorm eps 1e-12, F.scaled_dot_product_attention with the padding mask, erf-GELU MLP of 4H) whose tied decoder
runs at the masked positions only, as ptft_jax's does. Either way the parameter count is asserted equal to
ptft_jax's BertForMLM (109,514,298 at base size and vocab 30522).

`step(...)`: eager steps on one fixed masked-LM batch already on the device; torch.optim.AdamW (weight decay on the
matrices only, as ptft_jax's mask does), gradient clipping when given. On CUDA: autocast to bfloat16 (params and
optimiser state float32); on CPU: float32.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.peers import step_row, timed_calls

PRESETS = {"tiny": (2, 128, 2), "mini": (4, 256, 4), "small": (4, 512, 8), "medium": (8, 512, 8),
           "base": (12, 768, 12), "large": (24, 1024, 16)}


class Layer(nn.Module):
    def __init__(self, hidden, heads, inter, dropout):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attention_out = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.intermediate, self.output = nn.Linear(hidden, inter), nn.Linear(inter, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, mask):
        b, t, h = x.shape
        split = lambda y: y.view(b, t, self.heads, h // self.heads).transpose(1, 2)  # noqa: E731
        y = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                           attn_mask=mask)
        y = self.attention_out(y.transpose(1, 2).reshape(b, t, h))
        x = self.attention_norm(x + self.dropout(y))
        y = self.output(F.gelu(self.intermediate(x)))
        return self.output_norm(x + self.dropout(y))


class BertMLM(nn.Module):
    def __init__(self, vocab, layers, hidden, heads, inter, max_position=512, type_vocab=2, dropout=0.1):
        super().__init__()
        self.word, self.position = nn.Embedding(vocab, hidden), nn.Embedding(max_position, hidden)
        self.token_type = nn.Embedding(type_vocab, hidden)
        self.embed_norm, self.dropout = nn.LayerNorm(hidden, eps=1e-12), nn.Dropout(dropout)
        self.layers = nn.ModuleList(Layer(hidden, heads, inter, dropout) for _ in range(layers))
        self.transform, self.mlm_norm = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=1e-12)
        self.bias = nn.Parameter(torch.zeros(vocab))
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, input_ids, token_type_ids, attention_mask, masked_positions):
        t = input_ids.shape[1]
        x = self.word(input_ids) + self.position(torch.arange(t, device=input_ids.device))[None] + \
            self.token_type(token_type_ids)
        x = self.dropout(self.embed_norm(x))
        mask = attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        x = torch.gather(x, 1, masked_positions[..., None].expand(-1, -1, x.shape[-1]))
        x = self.mlm_norm(F.gelu(self.transform(x)))
        return x @ self.word.weight.t() + self.bias


def _model(dims, vocab_size, dropout, use_transformers):
    layers, hidden, heads, inter = dims
    if use_transformers:
        from transformers import BertConfig, BertForMaskedLM  # the caller checked that it imports
        config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, intermediate_size=inter, hidden_dropout_prob=dropout,
                            attention_probs_dropout_prob=0.0, max_position_embeddings=512, type_vocab_size=2)
        try:
            return BertForMaskedLM._from_config(config, attn_implementation="sdpa"), "transformers BertForMaskedLM"
        except (TypeError, ValueError):
            return BertForMaskedLM(config), "transformers BertForMaskedLM"
    return BertMLM(vocab_size, layers, hidden, heads, inter, dropout=dropout), "hand-written BERT"


def step(batch, params, size="base", dims=None, vocab_size=30522, dropout_rate=0.1, lr=1e-4, b1=0.9, b2=0.999,
         eps=1e-8, weight_decay=0.01, clip_norm=None, steps=20, repeats=5, warmup=1, seed=0, use_transformers=None,
         **_):
    """Median steps/s of `steps` AdamW steps on one fixed masked-LM `batch` (NumPy arrays: input_ids,
    token_type_ids, attention_mask, masked_positions, masked_labels, masked_weights), over `repeats` after
    `warmup` untimed calls. `dims`: (layers, hidden, heads, intermediate), default the `size` preset's.
    `params`: ptft_jax's parameter count, asserted equal to this model's."""
    torch.manual_seed(seed)
    if use_transformers is None:
        try:
            import transformers  # noqa: F401
            use_transformers = True
        except ImportError:
            use_transformers = False
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dims = tuple(dims or (*PRESETS[size], 4 * PRESETS[size][1]))
    model, name = _model(dims, vocab_size, dropout_rate, use_transformers)
    n = sum(p.numel() for p in model.parameters())  # parameters() yields the tied decoder weight once
    assert n == params, f"torch {name} has {n:,} params, ptft_jax's {params:,}"
    assert (dims, vocab_size) != ((12, 768, 12, 3072), 30522) or n == 109_514_298, f"torch {name}: {n:,} params"
    model = model.to(device).train()
    decay = [p for k, p in model.named_parameters() if p.ndim == 2 and "embedding" not in k.lower()
             and not k.startswith(("word.", "position.", "token_type."))]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(b1, b2), eps=eps)
    t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in batch.items()}
    for k in ("input_ids", "token_type_ids", "attention_mask", "masked_positions", "masked_labels"):
        t[k] = t[k].long()
    if use_transformers:  # the usual HF labels: -100 wherever nothing is predicted
        labels = torch.full_like(t["input_ids"], -100)
        labels.scatter_(1, t["masked_positions"], torch.where(t["masked_weights"] > 0, t["masked_labels"], -100))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)

    def loss_fn():
        with autocast:
            if use_transformers:
                return model(input_ids=t["input_ids"], token_type_ids=t["token_type_ids"],
                             attention_mask=t["attention_mask"], labels=labels).loss
            logits = model(t["input_ids"], t["token_type_ids"], t["attention_mask"], t["masked_positions"])
        w = t["masked_weights"].flatten()
        loss = F.cross_entropy(logits.float().flatten(0, 1), t["masked_labels"].flatten(), reduction="none")
        return (loss * w).sum() / w.sum().clamp(min=1.0)

    def run():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            if clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            opt.step()
        if cuda:
            torch.cuda.synchronize()
        return loss.detach()

    loss, first, per_call, times = timed_calls(run, repeats, warmup)
    assert math.isfinite(loss.item()), f"torch {name}: loss {loss.item()}"
    model = opt = None  # freed before the row is built (a del would leave run()'s names undefined)
    dtype = "bfloat16 autocast" if cuda else "float32"
    return step_row(f"torch eager, {name}, {dtype}", steps, first, per_call, times, n, cuda)
