"""Masked-LM data in NumPy: packing tokenised documents into sequences, and BERT's 15% / 80-10-10 masking.

    seqs = pack(docs, max_len=128, cls_id=tok.cls_id, sep_id=tok.sep_id, pad_id=tok.pad_id)
    batch = mask_tokens(ids, rng, mask_id=tok.mask_id, special_ids=tok.special_ids, vocab_size=tok.vocab_size,
                        attention_mask=am, max_predictions=20)

Deterministic from the np.random.Generator passed in. `MLMMasking` is the host pipeline's per-batch transform of a
masked-LM run: masked from `np.random.default_rng([seed, 2, step])` over the whole global batch (so a resumed run
and any number of processes see bit-identical batches). Kept by hand rather than taken from transformers'
DataCollatorForLanguageModeling: that one needs torch, masks per batch with a global RNG (no exact resume), and
has no fixed-size masked-position output for a decoder that runs at the masked positions only.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ptft_jax.errors import ConfigError


def pack(docs: Sequence[Sequence[int]], max_len: int, cls_id: int, sep_id: int, pad_id: int = 0,
         drop_last: bool = False) -> dict[str, np.ndarray]:
    """Concatenates documents, each followed by [SEP], into rows of `max_len` that start with [CLS].

    The stream `d0 [SEP] d1 [SEP] ...` is cut into chunks of max_len - 1 tokens, each prefixed by [CLS]; the last
    row is padded with `pad_id` (or dropped with drop_last). Returns int32 [N, max_len] `input_ids`,
    `token_type_ids` (zeros) and `attention_mask`.
    """
    if max_len < 2:
        raise ConfigError(f"max_len {max_len} leaves no room for tokens after [CLS].")
    parts = []
    for d in docs:
        if len(d):
            parts.append(np.asarray(d, np.int32))
            parts.append(np.array([sep_id], np.int32))
    stream = np.concatenate(parts) if parts else np.zeros((0,), np.int32)
    chunk = max_len - 1
    n = len(stream) // chunk if drop_last else -(-len(stream) // chunk)
    body = np.full(n * chunk, pad_id, np.int32)
    real = np.zeros(n * chunk, np.int32)
    used = min(len(stream), n * chunk)
    body[:used], real[:used] = stream[:used], 1
    ids = np.concatenate([np.full((n, 1), cls_id, np.int32), body.reshape(n, chunk)], axis=1)
    mask = np.concatenate([np.ones((n, 1), np.int32), real.reshape(n, chunk)], axis=1)
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask}


def _word_starts(ids: np.ndarray, candidates: np.ndarray, continuation: np.ndarray) -> np.ndarray:
    """int [B, T]: for each candidate position the position starting its word (-1 elsewhere). A word starts at a
    candidate that is not a `##` continuation, or that follows a non-candidate (e.g. a `##` piece after [SEP])."""
    pos = np.broadcast_to(np.arange(ids.shape[1])[None], ids.shape)
    prev = np.concatenate([np.zeros_like(candidates[:, :1]), candidates[:, :-1]], axis=1)
    new_word = candidates & (~continuation[ids] | ~prev)
    start = np.maximum.accumulate(np.where(new_word, pos, -1), axis=1)
    return np.where(candidates, start, -1)


def mask_tokens(input_ids, rng: np.random.Generator, mask_id: int, special_ids: Sequence[int], vocab_size: int,
                attention_mask=None, mask_prob: float = 0.15, max_predictions: int | None = None,
                whole_word: bool = False, continuation: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """BERT masking of int [B, T] ids.

    Selects round(mask_prob * n) (at least 1, at most P) of the n candidate tokens of each row (not special, not
    padding). With whole_word, whole words are selected (a word and its `##` continuations, by `continuation`
    bool [V]); words in random order, passing over a word that would overshoot the goal. Of the selected,
    80% become [MASK], 10% a random non-special token, 10% stay.
    Returns `input_ids` (masked, int32 [B, T]), `labels` (the original id at selected positions, -1 elsewhere),
    `masked_positions` int32 [B, P] (selected positions in order, padded with 0), `masked_labels` int32 [B, P]
    and `masked_weights` float32 [B, P] (1 for a real prediction, 0 for padding), with P = max_predictions
    (default: ceil(mask_prob * T) + 1).
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ConfigError(f"input_ids must be [B, T], got shape {ids.shape}.")
    b, t = ids.shape
    am = np.ones_like(ids, bool) if attention_mask is None else np.asarray(attention_mask) > 0
    special = np.zeros(vocab_size, bool)
    special[[s for s in special_ids if s is not None and 0 <= s < vocab_size]] = True
    candidates = am & ~special[ids]
    p = max_predictions if max_predictions is not None else int(np.ceil(mask_prob * t)) + 1
    if p < 1:
        raise ConfigError(f"max_predictions must be at least 1, got {p}.")
    n = candidates.sum(axis=1)
    goal = np.where(n > 0, np.minimum(np.maximum(1, np.round(mask_prob * n)), p), 0).astype(np.int64)
    if whole_word:
        if continuation is None:
            raise ConfigError("whole-word masking needs `continuation` (tokenizer.continuation_mask()).")
        unit = _word_starts(ids, candidates, np.asarray(continuation, bool))
        selected = np.zeros((b, t), bool)
        for i in range(b):
            starts, inverse, sizes = np.unique(unit[i], return_inverse=True, return_counts=True)
            words = [(j, int(sizes[j])) for j in range(len(starts)) if starts[j] >= 0]
            chosen, count = [], 0
            for k in rng.permutation(len(words)):
                j, size = words[k]
                if count >= goal[i]:
                    break
                if count + size > goal[i]:  # a word that would overshoot the goal is passed over (as in BERT)
                    continue
                chosen.append(j)
                count += size
            if not chosen and words:  # at least one word: the first that fits the prediction slots
                fits = [j for j, size in words if size <= p]
                chosen = fits[:1]
            selected[i] = np.isin(inverse, chosen)
    else:
        keys = np.where(candidates, rng.random((b, t)), np.inf)
        rank = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")
        selected = candidates & (rank < goal[:, None])
    # 80% [MASK], 10% random, 10% kept
    r = rng.random((b, t))
    nonspecial = np.flatnonzero(~special)
    random_ids = nonspecial[rng.integers(0, len(nonspecial), (b, t))]
    out = ids.astype(np.int32).copy()
    out[selected & (r < 0.8)] = mask_id
    rand_sel = selected & (r >= 0.8) & (r < 0.9)
    out[rand_sel] = random_ids[rand_sel]
    labels = np.where(selected, ids, -1).astype(np.int32)
    positions = np.zeros((b, p), np.int32)
    weights = np.zeros((b, p), np.float32)
    masked_labels = np.zeros((b, p), np.int32)
    for i in range(b):
        pos = np.flatnonzero(selected[i])
        positions[i, :len(pos)] = pos
        weights[i, :len(pos)] = 1.0
        masked_labels[i, :len(pos)] = ids[i, pos]
    return {"input_ids": out, "labels": labels, "masked_positions": positions, "masked_labels": masked_labels,
            "masked_weights": weights}


class MLMMasking:
    """(split, global batch indices, this process's rows, step) -> this process's masked-LM batch; `split` a
    dataset.Split of packed sequences (full or `compact`)."""

    def __init__(self, tok, max_len: int, seed: int, mask_prob: float = 0.15, whole_word: bool = False):
        self.seed, self.mask_id, self.vocab_size = int(seed), tok.mask_id, tok.vocab_size
        self.special_ids = tok.special_ids
        self.mask_prob, self.whole_word = float(mask_prob), bool(whole_word)
        self.continuation = tok.continuation_mask() if whole_word else None
        self.max_predictions = int(np.ceil(self.mask_prob * max_len)) + 1

    def mask(self, batch: dict, rng: np.random.Generator) -> dict:
        if "length" in batch:  # the compact form of packed sequences (see `compact`)
            batch = expand(batch)
        m = mask_tokens(batch["input_ids"], rng, self.mask_id, self.special_ids, self.vocab_size,
                        attention_mask=batch["attention_mask"], mask_prob=self.mask_prob,
                        max_predictions=self.max_predictions, whole_word=self.whole_word,
                        continuation=self.continuation)
        return {"input_ids": m["input_ids"], "token_type_ids": batch["token_type_ids"],
                "attention_mask": batch["attention_mask"], "masked_positions": m["masked_positions"],
                "masked_labels": m["masked_labels"], "masked_weights": m["masked_weights"]}

    def __call__(self, split, indices: np.ndarray, share: slice, step: int) -> dict:
        batch = self.mask(split.take(indices), np.random.default_rng([self.seed, 2, int(step)]))
        return {k: v[share] for k, v in batch.items()}


def compact(arrays: dict, vocab_size: int) -> dict:
    """Packed sequences as `input_ids` (uint16 when the vocabulary allows) and `length` [N]: a third to a sixth of
    the host memory of the three int32 arrays (token types are all 0, the attention mask is the first `length`)."""
    dtype = np.uint16 if vocab_size <= 1 << 16 else np.int32
    return {"input_ids": arrays["input_ids"].astype(dtype), "length": arrays["attention_mask"].sum(1, dtype=np.int32)}


def expand(arrays: dict) -> dict:
    ids = arrays["input_ids"].astype(np.int32)
    am = (np.arange(ids.shape[1])[None] < arrays["length"][:, None]).astype(np.int32)
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": am}


def masking_for(cfg, tok, seed: int) -> MLMMasking:
    return MLMMasking(tok, int(cfg.max_len), seed, cfg.mask_prob, cfg.whole_word)
