"""Text data for BERT: the tokenizer of a run, tokenised splits (cached in the workdir) and masked-LM masking.

Where texts come from (pydocs, pydocs_mlm, csv:, jsonl:, text:, tfds:) is data/text_sources.py. With
`bert_mlm` any source gives pretraining text (labels ignored; a pair's two segments are two documents); `bert`
needs labels.

The tokenizer of a run lives in WORKDIR/tokenizer/ (vocab.txt + tokenizer_config.json) and comes from, first match:
  1. WORKDIR/tokenizer/ itself (a resumed run keeps its vocabulary);
  2. `data.vocab`: a BERT vocab.txt or a directory holding one (lower-cased by `data.lowercase`);
  3. `init_from`'s run (its WORKDIR/tokenizer/, init_from being that workdir or a checkpoint step dir two levels
     below it), so a fine-tuning run reuses its pretraining vocabulary automatically;
  4. a WordPiece vocabulary of at most `data.vocab_size` tokens trained on the training texts (`data.lowercase`).
Cases 2-4 copy it into WORKDIR/tokenizer/ and data.json records where it came from.

Texts are tokenised once into int32 arrays of `data.max_len` held in `Split.arrays`: classification rows are
`[CLS] text [SEP]` or `[CLS] text [SEP] text_b [SEP]` (token type 1 for the second segment), padded
(input_ids, token_type_ids, attention_mask, label); masked-LM documents are packed (text.masking.pack) and held
compactly (`compact`: uint16 ids and lengths). The arrays are cached in WORKDIR/tokenized/ under a key of
everything they depend on (source, splits, max_len, max_documents, text fields, vocabulary, the files' sizes and
times), so a resumed run skips reading and tokenising. Training batches of masked-LM are masked
on the host by `MLMMasking` (data.mask_prob of the tokens, whole words with data.whole_word), from
`np.random.default_rng([seed, 2, step])` over the whole global batch (so a resumed run and any number of processes
see bit-identical batches); the test split is masked once at load time with a fixed seed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import numpy as np

from ptft_jax.data.sources import Dataset, Split
from ptft_jax.data.text_sources import TEXT_SOURCES, is_text_source, load_texts  # noqa: F401 (re-exported)
from ptft_jax.errors import ConfigError, DataError

TOKENIZER_DIR = "tokenizer"
TOKENIZED_DIR = "tokenized"
EVAL_MASK_SEED = 12345


def run_workdir(init_from: str) -> str:
    """The workdir of `init_from`: the path itself, or WORKDIR for WORKDIR/checkpoints[/STEP]."""
    path = os.path.abspath(os.path.expanduser(str(init_from))).rstrip("/")
    if os.path.basename(path).isdigit():
        path = os.path.dirname(path)
    if os.path.basename(path) == "checkpoints":
        path = os.path.dirname(path)
    return path


def run_tokenizer(cfg, texts, workdir: str | None, init_from: str | None, log=print):
    """(tokenizer, its directory in the workdir or None, where it came from); see the module docstring."""
    from ptft_jax.text.tokenizer import VOCAB_FILE, WordPieceTokenizer
    own = os.path.join(workdir, TOKENIZER_DIR) if workdir else None
    if own and os.path.isfile(os.path.join(own, VOCAB_FILE)):
        source = own
        try:  # a resumed run: keep the provenance its first start recorded
            with open(os.path.join(workdir, "data.json")) as f:
                source = json.load(f).get("tokenizer_source") or own
        except (OSError, ValueError):
            pass
        return WordPieceTokenizer.load(own), own, source
    if cfg.vocab:
        path = os.path.abspath(os.path.expanduser(str(cfg.vocab)))
        tok, source = WordPieceTokenizer.load(path, lowercase=bool(cfg.lowercase)), path
        log(f"tokenizer: {tok.vocab_size} tokens from data.vocab {path}")
    elif init_from:
        source = os.path.join(run_workdir(init_from), TOKENIZER_DIR)
        if not os.path.isfile(os.path.join(source, VOCAB_FILE)):
            raise DataError(f"init_from {init_from}: the run has no tokenizer ({source}/{VOCAB_FILE} is missing); "
                            f"set data.vocab to the vocab.txt it was trained with.")
        tok = WordPieceTokenizer.load(source)
        log(f"tokenizer: {tok.vocab_size} tokens from the init_from run, {source}")
    else:
        tok = WordPieceTokenizer.train(texts, vocab_size=int(cfg.vocab_size), lowercase=bool(cfg.lowercase))
        source = "trained"
        log(f"tokenizer: trained a WordPiece vocabulary of {tok.vocab_size} tokens on {len(texts)} training texts")
    if own:
        tok.save(own)
        if source != "trained" and os.path.isdir(source) and os.path.abspath(source) != own:
            for name in os.listdir(source):  # anything else saved with the vocabulary
                if not os.path.exists(os.path.join(own, name)) and os.path.isfile(os.path.join(source, name)):
                    shutil.copy2(os.path.join(source, name), own)
    return tok, own, source


def _check_mask_prob(p):
    if not isinstance(p, (int, float)) or not 0.0 < float(p) < 1.0:
        raise ConfigError(f"data.mask_prob {p} must be a number between 0 and 1 (BERT uses 0.15).")


class MLMMasking:
    """(split, global batch indices, this process's rows, step) -> this process's masked-LM batch."""

    def __init__(self, tok, max_len: int, seed: int, mask_prob: float = 0.15, whole_word: bool = False):
        _check_mask_prob(mask_prob)
        self.seed, self.mask_id, self.vocab_size = int(seed), tok.mask_id, tok.vocab_size
        self.special_ids = tok.special_ids
        self.mask_prob, self.whole_word = float(mask_prob), bool(whole_word)
        self.continuation = tok.continuation_mask() if whole_word else None
        self.max_predictions = int(np.ceil(self.mask_prob * max_len)) + 1

    def mask(self, batch: dict, rng: np.random.Generator) -> dict:
        from ptft_jax.text.masking import mask_tokens
        if "length" in batch:  # the compact form of packed sequences (see `compact`)
            batch = expand(batch)
        m = mask_tokens(batch["input_ids"], rng, self.mask_id, self.special_ids, self.vocab_size,
                        attention_mask=batch["attention_mask"], mask_prob=self.mask_prob,
                        max_predictions=self.max_predictions, whole_word=self.whole_word,
                        continuation=self.continuation)
        return {"input_ids": m["input_ids"], "token_type_ids": batch["token_type_ids"],
                "attention_mask": batch["attention_mask"], "masked_positions": m["masked_positions"],
                "masked_labels": m["masked_labels"], "masked_weights": m["masked_weights"]}

    def __call__(self, split: Split, indices: np.ndarray, rows: slice, step: int) -> dict:
        batch = self.mask(split.take(indices), np.random.default_rng([self.seed, 2, int(step)]))
        return {k: v[rows] for k, v in batch.items()}


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


def _cache_key(cfg, task: str, tok) -> str:
    """What the tokenised arrays depend on, hashed."""
    vocab = _vocab_hash(tok)
    keys = ("source", "data_dir", "train_split", "test_split", "test_fraction", "split_seed", "max_len",
            "max_documents", "text_fields", "mask_prob", "whole_word")
    desc = {k: cfg.get(k) for k in keys}
    desc.update(task=task, vocab=vocab, lowercase=tok.lowercase, version=1)
    if str(cfg.source).startswith(("csv:", "jsonl:", "text:")):  # a changed file must be read again
        path = os.path.expanduser(str(cfg.source).partition(":")[2])
        files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs] if os.path.isdir(path) else [path]
        desc["files"] = sorted((f, os.path.getsize(f), os.path.getmtime(f)) for f in files if os.path.isfile(f))
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()


def _cache_load(workdir, key):
    path = os.path.join(workdir, TOKENIZED_DIR) if workdir else None
    try:
        with open(os.path.join(path, "meta.json")) as f:
            meta = json.load(f)
        if meta.get("key") != key:
            return None
        with np.load(os.path.join(path, "train.npz")) as tr, np.load(os.path.join(path, "test.npz")) as te:
            return dict(tr), dict(te), meta
    except (OSError, ValueError, TypeError, KeyError):  # absent, partial or stale: tokenise again
        return None


def _cache_save(workdir, key, train_arrays, test_arrays, meta):
    from ptft_jax.metrics import is_main
    if not workdir or not is_main():
        return
    path = os.path.join(workdir, TOKENIZED_DIR)
    os.makedirs(path, exist_ok=True)
    try:
        if os.path.exists(os.path.join(path, "meta.json")):
            os.remove(os.path.join(path, "meta.json"))  # the arrays below are not valid until meta.json is back
        for name, arrays in (("train", train_arrays), ("test", test_arrays)):
            with open(os.path.join(path, f"{name}.npz.tmp"), "wb") as f:
                np.savez(f, **arrays)
            os.replace(os.path.join(path, f"{name}.npz.tmp"), os.path.join(path, f"{name}.npz"))
        with open(os.path.join(path, "meta.json.tmp"), "w") as f:
            json.dump({**meta, "key": key}, f)
        os.replace(os.path.join(path, "meta.json.tmp"), os.path.join(path, "meta.json"))
    except OSError as e:  # a full disk must not stop training: the cache only saves time
        print(f"warning: could not cache the tokenised data in {path} ({e}); the next start tokenises again.")


def _vocab_hash(tok) -> str:
    return hashlib.sha256("\n".join(tok.id_to_token(i) or "" for i in range(tok.vocab_size)).encode()).hexdigest()


def _check_same_vocabulary(tok):
    """Every process of a multi-process run must number the tokens alike (each loads or trains its tokenizer)."""
    import jax
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils
    digest = np.frombuffer(bytes.fromhex(_vocab_hash(tok)), np.uint8).astype(np.int32)
    multihost_utils.assert_equal(digest, "The processes of this run have different tokenizer vocabularies; give "
                                         "them all the same data.vocab (or the same training texts).")


def _tokenize(tok, texts, log, what, chunk=20000):
    """Token ids of every text (no [CLS]/[SEP]), with progress lines on long corpora."""
    out, t0, last = [], time.perf_counter(), time.perf_counter()
    for i in range(0, len(texts), chunk):
        out += tok.tokenize_batch(texts[i:i + chunk])
        if time.perf_counter() - last > 10:
            last = time.perf_counter()
            log(f"{what}: tokenised {len(out):,} of {len(texts):,} texts ({len(out) / (last - t0):,.0f}/s)")
    return out


def load_text_dataset(cfg, task: str, workdir: str | None = None, init_from: str | None = None,
                      log=print) -> Dataset:
    """The text source of `cfg` tokenised for `task` ("classify_text" or "mlm")."""
    from ptft_jax.text.masking import pack
    if cfg.augment or cfg.image_size:
        raise ConfigError("data.augment and data.image_size are for images; leave them unset for text sources.")
    max_len = int(cfg.max_len)
    if max_len < 3:
        raise ConfigError(f"data.max_len {max_len} leaves no room for text after [CLS] and [SEP]; use e.g. 128.")
    if task == "mlm":
        _check_mask_prob(cfg.mask_prob)  # before any reading
    own = os.path.join(workdir, TOKENIZER_DIR) if workdir else None
    cached = None
    if own and os.path.isfile(os.path.join(own, "vocab.txt")):  # a resumed run: its tokenised arrays may be cached
        tok, tok_dir, tok_source = run_tokenizer(cfg, None, workdir, init_from, log)
        key = _cache_key(cfg, task, tok)
        cached = _cache_load(workdir, key)
    if cached is not None:
        train_arrays, test_arrays, meta = cached
        log(f"text: {len(train_arrays['input_ids']):,} train and {len(test_arrays['input_ids']):,} test sequences "
            f"from the cache in {os.path.join(workdir, TOKENIZED_DIR)}")
        name, num_classes, class_names = meta["name"], meta["num_classes"], meta["class_names"]
        class_names = tuple(class_names) if class_names else None
    else:
        raw = load_texts(cfg, log)
        if task == "classify_text" and raw.train_labels is None:
            raise ConfigError(f"data.source {cfg.source} has no labels; it is pretraining text for "
                              f"model.name=bert_mlm.")
        if not raw.train_texts or not raw.test_texts:
            raise DataError(f"data.source {cfg.source} gave {len(raw.train_texts)} training and "
                            f"{len(raw.test_texts)} test texts; both splits need at least one.")
        tok, tok_dir, tok_source = run_tokenizer(cfg, raw.train_texts + (raw.train_pairs or []), workdir,
                                                 init_from, log)
        key = _cache_key(cfg, task, tok)
        if task == "mlm":
            def packed(texts, pairs, what):
                docs = texts if pairs is None else [t for ab in zip(texts, pairs) for t in ab]
                return pack(_tokenize(tok, docs, log, what), max_len, tok.cls_id, tok.sep_id, tok.pad_id)
            train_arrays = compact(packed(raw.train_texts, raw.train_pairs, "train"), tok.vocab_size)
            test_arrays = packed(raw.test_texts, raw.test_pairs, "test")
            test_arrays = masking_for(cfg, tok, 0).mask(test_arrays, np.random.default_rng(EVAL_MASK_SEED))
            num_classes, class_names = tok.vocab_size, None
        else:
            train_arrays = {**tok.encode(raw.train_texts, raw.train_pairs, max_len=max_len),
                            "label": raw.train_labels}
            test_arrays = {**tok.encode(raw.test_texts, raw.test_pairs, max_len=max_len), "label": raw.test_labels}
            num_classes, class_names = raw.num_classes, raw.class_names
        name = raw.name
        _cache_save(workdir, key, train_arrays, test_arrays,
                    {"name": name, "num_classes": int(num_classes),
                     "class_names": list(class_names) if class_names else None})
    _check_same_vocabulary(tok)
    example = {k: np.zeros((1, *v.shape[1:]), v.dtype) for k, v in test_arrays.items() if k != "label"}
    example["attention_mask"] = np.ones_like(example["attention_mask"])
    text = {"tokenizer_dir": tok_dir, "tokenizer_source": tok_source, "max_len": max_len,
            "vocab_size": tok.vocab_size, "lowercase": tok.lowercase}
    return Dataset(name, Split(len(train_arrays["input_ids"]), arrays=train_arrays),
                   Split(len(test_arrays["input_ids"]), arrays=test_arrays), num_classes=num_classes, mean=(), std=(),
                   class_names=class_names, task=task, example=example, text=text, tokenizer=tok)
