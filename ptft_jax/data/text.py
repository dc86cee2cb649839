"""Text data for BERT: the sources, the tokenizer of a run, tokenised splits and masked-LM masking on the host.

Sources (`data.source`):
  pydocs       classify a standard-library docstring by its package family (ptft_jax.text.corpus; fixed seeded
               stratified split by data.test_fraction / data.split_seed)
  pydocs_mlm   the same docstrings, every family, as pretraining text (documents split by data.test_fraction /
               data.split_seed; labels unused), less the test split of `pydocs` at its default split
               (test_fraction 0.2, split_seed 0, as in configs/pydocs_bert_finetune.py), so that pretraining never
               reads the texts the fine-tuned classifier is tested on
  csv:PATH     text,label rows; jsonl:PATH one {"text", "label"} object a line (data/custom.load_text)
With `bert_mlm` any of them gives pretraining text (labels ignored); `bert` needs labels.

The tokenizer of a run lives in WORKDIR/tokenizer/ (vocab.txt + tokenizer_config.json) and comes from, first match:
  1. WORKDIR/tokenizer/ itself (a resumed run keeps its vocabulary);
  2. `data.vocab`: a BERT vocab.txt or a directory holding one (lower-cased by `data.lowercase`);
  3. `init_from`'s run (its WORKDIR/tokenizer/, init_from being that workdir or a checkpoint step dir two levels
     below it), so a fine-tuning run reuses its pretraining vocabulary automatically;
  4. a WordPiece vocabulary of at most `data.vocab_size` tokens trained on the training texts (`data.lowercase`).
Cases 2-4 copy it into WORKDIR/tokenizer/ and data.json records where it came from.

Texts are tokenised once into int32 arrays of `data.max_len` held in `Split.arrays`: classification rows are
`[CLS] text [SEP]` padded (input_ids, token_type_ids, attention_mask, label); masked-LM documents are packed
(text.masking.pack). Training batches of masked-LM are masked on the host by `MLMMasking`, from
`np.random.default_rng([seed, 2, step])` over the whole global batch (so a resumed run and any number of processes
see bit-identical batches); the test split is masked once at load time with a fixed seed.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

from ptft_jax.data.sources import Dataset, Split
from ptft_jax.errors import ConfigError, DataError

TEXT_SOURCES = ("pydocs", "pydocs_mlm")
TOKENIZER_DIR = "tokenizer"
EVAL_MASK_SEED = 12345


def is_text_source(source) -> bool:
    source = str(source)
    return source in TEXT_SOURCES or source.startswith(("csv:", "jsonl:"))


def _texts(cfg):
    """A TextDataset (data/custom.TextDataset) for the source; labels None for pydocs_mlm."""
    from ptft_jax.data.custom import TextDataset, load_text
    from ptft_jax.text.corpus import corpus_texts, pydocs_classification
    source = str(cfg.source)
    if source == "pydocs":
        return pydocs_classification(test_fraction=cfg.test_fraction, seed=cfg.split_seed)
    if source == "pydocs_mlm":
        held_out = set(pydocs_classification(test_fraction=0.2, seed=0).test_texts)
        texts = [t for t in corpus_texts() if t not in held_out]
        perm = np.random.default_rng(cfg.split_seed).permutation(len(texts))
        n_test = max(1, int(round(cfg.test_fraction * len(texts))))
        test, train = [texts[i] for i in sorted(perm[:n_test])], [texts[i] for i in sorted(perm[n_test:])]
        return TextDataset("pydocs_mlm", train, None, test, None, 0, None)
    return load_text(source, cfg.test_fraction, cfg.split_seed)


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


class MLMMasking:
    """(split, global batch indices, this process's rows, step) -> this process's masked-LM batch."""

    def __init__(self, tok, max_len: int, seed: int):
        self.seed, self.mask_id, self.vocab_size = int(seed), tok.mask_id, tok.vocab_size
        self.special_ids = tok.special_ids
        self.max_predictions = int(np.ceil(0.15 * max_len)) + 1

    def mask(self, batch: dict, rng: np.random.Generator) -> dict:
        from ptft_jax.text.masking import mask_tokens
        m = mask_tokens(batch["input_ids"], rng, self.mask_id, self.special_ids, self.vocab_size,
                        attention_mask=batch["attention_mask"], max_predictions=self.max_predictions)
        return {"input_ids": m["input_ids"], "token_type_ids": batch["token_type_ids"],
                "attention_mask": batch["attention_mask"], "masked_positions": m["masked_positions"],
                "masked_labels": m["masked_labels"], "masked_weights": m["masked_weights"]}

    def __call__(self, split: Split, indices: np.ndarray, rows: slice, step: int) -> dict:
        batch = self.mask(split.take(indices), np.random.default_rng([self.seed, 2, int(step)]))
        return {k: v[rows] for k, v in batch.items()}


def load_text_dataset(cfg, task: str, workdir: str | None = None, init_from: str | None = None,
                      log=print) -> Dataset:
    """The text source of `cfg` tokenised for `task` ("classify_text" or "mlm")."""
    from ptft_jax.text.masking import pack
    if cfg.augment or cfg.image_size:
        raise ConfigError("data.augment and data.image_size are for images; leave them unset for text sources.")
    max_len = int(cfg.max_len)
    if max_len < 3:
        raise ConfigError(f"data.max_len {max_len} leaves no room for text after [CLS] and [SEP]; use e.g. 128.")
    raw = _texts(cfg)
    if task == "classify_text" and raw.train_labels is None:
        raise ConfigError(f"data.source {cfg.source} has no labels; it is pretraining text for model.name=bert_mlm.")
    tok, tok_dir, tok_source = run_tokenizer(cfg, raw.train_texts, workdir, init_from, log)
    if task == "mlm":
        def packed(texts):
            return pack(tok.tokenize_batch(texts), max_len, tok.cls_id, tok.sep_id, tok.pad_id)
        train_arrays, test_arrays = packed(raw.train_texts), packed(raw.test_texts)
        masking = MLMMasking(tok, max_len, 0)
        test_arrays = masking.mask(test_arrays, np.random.default_rng(EVAL_MASK_SEED))
        num_classes, class_names = tok.vocab_size, None
    else:
        train_arrays = {**tok.encode(raw.train_texts, max_len=max_len), "label": raw.train_labels}
        test_arrays = {**tok.encode(raw.test_texts, max_len=max_len), "label": raw.test_labels}
        num_classes, class_names = raw.num_classes, raw.class_names
    example = {k: np.zeros((1, *v.shape[1:]), v.dtype) for k, v in test_arrays.items() if k != "label"}
    example["attention_mask"] = np.ones_like(example["attention_mask"])
    text = {"tokenizer_dir": tok_dir, "tokenizer_source": tok_source, "max_len": max_len,
            "vocab_size": tok.vocab_size, "lowercase": tok.lowercase}
    return Dataset(raw.name, Split(len(train_arrays["input_ids"]), arrays=train_arrays),
                   Split(len(test_arrays["input_ids"]), arrays=test_arrays), num_classes=num_classes, mean=(), std=(),
                   class_names=class_names, task=task, example=example, text=text, tokenizer=tok)
