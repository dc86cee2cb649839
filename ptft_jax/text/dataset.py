"""Text datasets for BERT: the tokenizer of a run and the tokenised splits (cached in the workdir).

`load_classification` (model bert: needs labels) and `load_masked_lm` (bert_mlm: any source gives pretraining
text). Where texts come from (pydocs, pydocs_mlm, csv:, jsonl:, text:, tfds:) is text/sources.py; masking is
text/masking.py.

The tokenizer of a run lives in WORKDIR/tokenizer/ (vocab.txt + tokenizer_config.json) and comes from, first match:
  1. WORKDIR/tokenizer/ itself (a resumed run keeps its vocabulary);
  2. `data.vocab`: a BERT vocab.txt or a directory holding one, or a Hugging Face tokenizer folder (vocab.txt, or
     tokenizer.json alone), with its own do_lower_case / strip_accents / tokenize_chinese_chars;
  3. `init_from`'s run (its WORKDIR/tokenizer/), so a fine-tuning run reuses its pretraining vocabulary;
  4. a WordPiece vocabulary of at most `data.vocab_size` tokens trained on the training texts (`data.lowercase`).
Cases 2-4 copy it into WORKDIR/tokenizer/ (vocab.txt, and tokenizer_config.json recording the flags, so that a
fine-tuning or predict run reproduces them) and data.json records where it came from. `data.lowercase` None (the
default) means the vocabulary's own do_lower_case (True for a trained one); an explicit value contradicting the
vocabulary's is a ConfigError.

Texts are tokenised once into int32 arrays of `data.max_len` held in `Split.arrays`: classification rows are
`[CLS] text [SEP]` or `[CLS] text [SEP] text_b [SEP]` (token type 1 for the second segment), padded
(input_ids, token_type_ids, attention_mask, label); masked-LM documents are packed (text.masking.pack) and held
compactly (`compact`: uint16 ids and lengths). The arrays are cached in WORKDIR/tokenized/ under a key of
everything they depend on (source, splits, max_len, max_documents, text fields, vocabulary, the files' sizes and
times), so a resumed run skips reading and tokenising. The test split of masked-LM is masked once at load time with
a fixed seed; training batches are masked in the host pipeline (text/masking.py's `MLMMasking`).

Masked-LM over text:, jsonl: and tfds: (`load_lanes`) is packed by lanes instead (text/stream.py): the training
documents are indexed, not read, and streamed per step (data.stream=false: tokenised into memory first, the same
batches); the tokenizer is trained on data.tokenizer_sample documents; the test split is at most
data.max_test_documents held-out documents, packed and masked once as above; WORKDIR/tokenized/ is not used.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from ptft_jax.dataset import Dataset, Split, select_classes
from ptft_jax.errors import ConfigError, DataError
from ptft_jax.files import atomic, write_json
from ptft_jax.metrics import is_main
from ptft_jax.text import stream
from ptft_jax.text.masking import compact, masking_for, pack
from ptft_jax.text.sources import load_texts
from ptft_jax.text.tokenizer import TOKENIZER_JSON, VOCAB_FILE, WordPieceTokenizer

TOKENIZER_DIR = "tokenizer"
TOKENIZED_DIR = "tokenized"
EVAL_MASK_SEED = 12345
TOKENIZER_FILE_PREFIXES = ("tokenizer", "special_tokens", "added_tokens", "vocab")


def _lowercase(value):
    """data.lowercase: None (the vocabulary's own do_lower_case; True for a trained one), or true/false given as a
    bool or, from the command line, as text."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "false", "0", "no", "none", "null"):
        return None if text in ("none", "null") else text in ("true", "1", "yes")
    raise ConfigError(f"data.lowercase is {value!r}; use true, false or None (the vocabulary's own setting).")


def _has_vocab(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, f)) for f in (VOCAB_FILE, TOKENIZER_JSON))


def run_tokenizer(cfg, texts, workdir: str | None, init_tokenizer: str | None, log=print):
    """(tokenizer, its directory in the workdir or None, where it came from); see the module docstring.
    `init_tokenizer`: the tokenizer folder of what `init_from` names (a run's WORKDIR/tokenizer, or a Hugging Face
    model folder holding vocab.txt or tokenizer.json)."""
    lowercase = _lowercase(cfg.get("lowercase"))
    own = os.path.join(workdir, TOKENIZER_DIR) if workdir else None
    if own and os.path.isfile(os.path.join(own, VOCAB_FILE)):
        source = own
        try:  # a resumed run: keep the provenance its first start recorded
            with open(os.path.join(workdir, "data.json")) as f:
                source = json.load(f).get("tokenizer_source") or own
        except (OSError, ValueError):
            pass
        return WordPieceTokenizer.load(own, lowercase), own, source
    if cfg.vocab:
        path = os.path.abspath(os.path.expanduser(str(cfg.vocab)))
        tok, source = WordPieceTokenizer.load(path, lowercase), path
        log(f"tokenizer: {tok.vocab_size} tokens from data.vocab {path}")
    elif init_tokenizer:
        source = init_tokenizer
        if not _has_vocab(source):
            raise DataError(f"init_from {os.path.dirname(source)}: the run has no tokenizer ({source}/{VOCAB_FILE} "
                            f"is missing); set data.vocab to the vocab.txt it was trained with.")
        tok = WordPieceTokenizer.load(source, lowercase)
        log(f"tokenizer: {tok.vocab_size} tokens from the init_from run, {source}")
    else:
        tok = WordPieceTokenizer.train(texts, vocab_size=int(cfg.vocab_size),
                                       lowercase=True if lowercase is None else lowercase)
        source = "trained"
        log(f"tokenizer: trained a WordPiece vocabulary of {tok.vocab_size} tokens on {len(texts)} training texts")
    if own:
        tok.save(own)  # vocab.txt + tokenizer_config.json: the vocabulary and its do_lower_case, strip_accents, ...
        if source != "trained" and os.path.isdir(source) and os.path.abspath(source) != own:
            for name in os.listdir(source):  # other tokenizer files saved with the vocabulary (not model weights)
                if name.startswith(TOKENIZER_FILE_PREFIXES) and not os.path.exists(os.path.join(own, name)) \
                        and os.path.isfile(os.path.join(source, name)):
                    shutil.copy2(os.path.join(source, name), own)
    return tok, own, source


def _cache_key(cfg, kind: str, tok) -> str:
    """What the tokenised arrays depend on, hashed."""
    vocab = _vocab_hash(tok)
    keys = ("source", "data_dir", "train_split", "test_split", "test_fraction", "split_seed", "max_len",
            "max_documents", "text_fields", "mask_prob", "whole_word")
    desc = {k: cfg.get(k) for k in keys}
    desc.update(task=kind, vocab=vocab, lowercase=tok.lowercase, version=1)
    if tok.strip_accents is not None or not tok.chinese_chars:  # (absent otherwise: older caches keep their key)
        desc.update(strip_accents=tok.strip_accents, chinese_chars=tok.chinese_chars)
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
    if not workdir or not is_main():
        return
    path = os.path.join(workdir, TOKENIZED_DIR)
    os.makedirs(path, exist_ok=True)
    try:
        if os.path.exists(os.path.join(path, "meta.json")):
            os.remove(os.path.join(path, "meta.json"))  # the arrays below are not valid until meta.json is back
        for name, arrays in (("train", train_arrays), ("test", test_arrays)):
            with atomic(os.path.join(path, f"{name}.npz"), "wb") as f:
                np.savez(f, **arrays)
        write_json(os.path.join(path, "meta.json"), {**meta, "key": key})
    except OSError as e:  # a full disk must not stop training: the cache only saves time
        print(f"warning: could not cache the tokenised data in {path} ({e}); the next start tokenises again.")


def _vocab_hash(tok) -> str:
    return hashlib.sha256("\n".join(tok.id_to_token(i) or "" for i in range(tok.vocab_size)).encode()).hexdigest()


def _check_same_vocabulary(tok):
    """Every process of a multi-process run must number the tokens alike (each loads or trains its tokenizer)."""
    if jax.process_count() == 1:
        return
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


def load_classification(cfg, workdir: str | None = None, init_tokenizer: str | None = None, log=print) -> Dataset:
    """A labelled text source tokenised for a classifier: [CLS] text [SEP] (text_b [SEP]) rows, padded."""
    def arrays(raw, tok):
        if raw.train_labels is None:
            raise ConfigError(f"data.source {cfg.source} has no labels; it is pretraining text for "
                              f"model.name=bert_mlm.")
        encode = lambda texts, pairs, labels: {**tok.encode(texts, pairs, max_len=int(cfg.max_len)),  # noqa: E731
                                               "label": labels}
        return (encode(raw.train_texts, raw.train_pairs, raw.train_labels),
                encode(raw.test_texts, raw.test_pairs, raw.test_labels), raw.num_classes, raw.class_names)

    return _tokenised(cfg, "classify_text", arrays, workdir, init_tokenizer, log)


def load_masked_lm(cfg, workdir: str | None = None, init_tokenizer: str | None = None, log=print) -> Dataset:
    """Any text source as pretraining text: documents packed into sequences (labels ignored; a pair's two segments
    are two documents), the training split held compactly, the test split masked once with a fixed seed."""
    if cfg.classes is not None or cfg.label_map is not None or cfg.train_per_class is not None:
        raise ConfigError("data.classes / data.label_map / data.train_per_class select labelled examples; "
                          "masked-LM pretraining text has no labels, so leave them unset.")
    if uses_lanes(cfg):
        return load_lanes(cfg, workdir, init_tokenizer, log)

    def arrays(raw, tok):
        def packed(texts, pairs, what):
            docs = texts if pairs is None else [t for ab in zip(texts, pairs) for t in ab]
            return pack(_tokenize(tok, docs, log, what), int(cfg.max_len), tok.cls_id, tok.sep_id, tok.pad_id)
        test = masking_for(cfg, tok, 0).mask(packed(raw.test_texts, raw.test_pairs, "test"),
                                             np.random.default_rng(EVAL_MASK_SEED))
        return compact(packed(raw.train_texts, raw.train_pairs, "train"), tok.vocab_size), test, tok.vocab_size, None

    return _tokenised(cfg, "mlm", arrays, workdir, init_tokenizer, log)


def _tokenised(cfg, kind: str, make_arrays, workdir, init_tokenizer, log) -> Dataset:
    """The Dataset of a text source: tokenised by `make_arrays(raw, tok) -> (train, test, num_classes,
    class_names)`, or read back from WORKDIR/tokenized/ when a resumed run cached it under the same key."""
    if cfg.augment or cfg.image_size:
        raise ConfigError("data.augment and data.image_size are for images; leave them unset for text sources.")
    own = os.path.join(workdir, TOKENIZER_DIR) if workdir else None
    cached = None
    if own and os.path.isfile(os.path.join(own, "vocab.txt")):  # a resumed run: its tokenised arrays may be cached
        tok, tok_dir, tok_source = run_tokenizer(cfg, None, workdir, init_tokenizer, log)
        key = _cache_key(cfg, kind, tok)
        cached = _cache_load(workdir, key)
    if cached is not None:
        train_arrays, test_arrays, meta = cached
        log(f"text: {len(train_arrays['input_ids']):,} train and {len(test_arrays['input_ids']):,} test sequences "
            f"from the cache in {os.path.join(workdir, TOKENIZED_DIR)}")
        name, num_classes, class_names = meta["name"], meta["num_classes"], meta["class_names"]
        class_names = tuple(class_names) if class_names else None
    else:
        raw = load_texts(cfg, log)
        if not raw.train_texts or not raw.test_texts:
            raise DataError(f"data.source {cfg.source} gave {len(raw.train_texts)} training and "
                            f"{len(raw.test_texts)} test texts; both splits need at least one.")
        tok, tok_dir, tok_source = run_tokenizer(cfg, raw.train_texts + (raw.train_pairs or []), workdir,
                                                 init_tokenizer, log)
        key = _cache_key(cfg, kind, tok)
        train_arrays, test_arrays, num_classes, class_names = make_arrays(raw, tok)
        name = raw.name
        _cache_save(workdir, key, train_arrays, test_arrays,
                    {"name": name, "num_classes": int(num_classes),
                     "class_names": list(class_names) if class_names else None})
    _check_same_vocabulary(tok)
    init_inputs = {k: np.zeros((1, *v.shape[1:]), v.dtype) for k, v in test_arrays.items() if k != "label"}
    init_inputs["attention_mask"] = np.ones_like(init_inputs["attention_mask"])
    info = {"tokenizer_dir": tok_dir, "tokenizer_source": tok_source, "max_len": int(cfg.max_len),
            "vocab_size": tok.vocab_size, "lowercase": tok.lowercase, "strip_accents": tok.strip_accents,
            "tokenize_chinese_chars": tok.chinese_chars}
    ds = Dataset(name, Split(len(train_arrays["input_ids"]), arrays=train_arrays),
                 Split(len(test_arrays["input_ids"]), arrays=test_arrays), num_classes=num_classes,
                 class_names=class_names, init_inputs=init_inputs, tokenizer_info=info, tokenizer=tok)
    return select_classes(ds, cfg)


# ---- masked-LM text packed by lanes (text/stream.py): text:, jsonl:, tfds: -------------------------------------

LANE_SOURCES = ("text:", "jsonl:", "tfds:")
ESTIMATE_DOCUMENTS = 1000  # documents of the tokenizer sample tokenised to estimate the tokens of an epoch


def uses_lanes(cfg) -> bool:
    """Whether a masked-LM source is packed by lanes: text:, jsonl: and tfds: are (streamed from disk unless
    data.stream=false, which tokenises the training documents into memory first); pydocs_mlm and csv: are not."""
    lanes = str(cfg.source).startswith(LANE_SOURCES)
    if cfg.get("stream") == "true" and not lanes:
        raise ConfigError(f"data.stream=true streams text:, jsonl: or tfds: sources, not {cfg.source}; leave "
                          f"data.stream=auto for it.")
    return lanes


def _files(path: str, ext: tuple) -> list[str]:
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names if f.endswith(ext))
        if not files:
            raise DataError(f"{path} holds no {' or '.join(ext)} files; put the pretraining text in UTF-8 "
                            f"{ext[0]} files there.")
        return files
    if os.path.lexists(path):
        return [path]
    raise DataError(f"{path} does not exist; give a UTF-8 {ext[0]} file or a folder of them.")


def _split_ids(n: int, cfg, where: str):
    """(train ids, test ids) of n documents: data.test_fraction of them held out (seeded by data.split_seed, as
    text:'s in-memory split always was), the test split at most data.max_test_documents of those, the training
    split at most data.max_documents (the first, in the corpus's order)."""
    if n < 2:
        raise DataError(f"{where} holds {n} document(s); a train/test split needs at least 2 (a blank line ends a "
                        f"text: document, a line a jsonl: one).")
    perm = np.random.default_rng(cfg.split_seed).permutation(n)
    n_test = max(1, int(round(cfg.test_fraction * n)))
    dtype = np.uint32 if n < 2**32 else np.int64
    train, test = np.sort(perm[n_test:]).astype(dtype), np.sort(perm[:n_test]).astype(dtype)
    del perm
    return train[:_cap(cfg.max_documents)], test[:_cap(cfg.max_test_documents, cfg.max_documents)]


def _cap(*caps):
    caps = [int(c) for c in caps if c is not None]
    return min(caps) if caps else None


def _lane_documents(cfg, workdir, log):
    """(training documents, their ids, test documents, their ids, name)."""
    source = str(cfg.source)
    kind, _, path = source.partition(":")
    if kind == "tfds":
        from ptft_jax.dataset import tfds_data_dir, tfds_split
        from ptft_jax.text.sources import _register_text_builders, _text_fields
        _register_text_builders()
        srcs = {s: tfds_split(path, getattr(cfg, f"{s}_split"), tfds_data_dir(cfg)) for s in ("train", "test")}
        fields = _text_fields(srcs["train"].dataset_info.features, path, cfg.text_fields)
        n_train = min(len(srcs["train"]), _cap(cfg.max_documents) or len(srcs["train"]))
        n_test = min(len(srcs["test"]), _cap(cfg.max_documents, cfg.max_test_documents) or len(srcs["test"]))
        if not n_train or not n_test:
            raise DataError(f"data.source {source} gave {n_train} training and {n_test} test documents; both "
                            f"splits need at least one.")
        train, test = (stream.TfdsDocuments(srcs[s], fields, n) for s, n in (("train", n_train), ("test", n_test)))
        return train, np.arange(n_train, dtype=np.uint32), test, np.arange(n_test, dtype=np.uint32), path
    files = _files(path, (".jsonl", ".ndjson") if kind == "jsonl" else (".txt",))
    cache = os.path.join(workdir, stream.INDEX_DIR) if workdir else None
    docs = stream.FileDocuments(files, kind == "jsonl", cache, bool(cfg.skip_bad_documents), log)
    if docs.skipped:
        log(f"warning: {source}: skipped {docs.skipped:,} bad document(s) or file(s) (data.skip_bad_documents)")
    train, test = _split_ids(len(docs), cfg, os.path.abspath(os.path.expanduser(path)))
    return docs, train, docs, test, os.path.splitext(os.path.basename(os.path.normpath(path)))[0]


class _Sample:
    """The texts the tokenizer is trained on: the first data.tokenizer_sample training documents of a permutation
    seeded by data.split_seed, read only when a tokenizer is trained."""

    def __init__(self, docs, ids, size, seed, log):
        self.docs, self.ids, self.log = docs, ids, log
        self.order = np.random.default_rng([int(seed), 3]).permutation(len(ids))[:int(size)]

    def __len__(self):
        return len(self.order)

    def __iter__(self):
        t0 = last = time.perf_counter()
        for k, i in enumerate(self.order):
            yield from self.docs.segments(int(self.ids[i]))
            if time.perf_counter() - last > 10:
                last = time.perf_counter()
                self.log(f"tokenizer sample: read {k + 1:,} of {len(self):,} documents "
                         f"({(k + 1) / (last - t0):,.0f}/s)")


def load_lanes(cfg, workdir, init_tokenizer, log) -> Dataset:
    """A text:, jsonl: or tfds: masked-LM source: training documents packed by lanes (text/stream.py), the test
    split (bounded: data.max_test_documents) packed and masked once in memory."""
    train_docs, train_ids, test_docs, test_ids, name = _lane_documents(cfg, workdir, log)
    sample = _Sample(train_docs, train_ids, cfg.tokenizer_sample, cfg.split_seed, log)
    tok, tok_dir, tok_source = run_tokenizer(cfg, sample, workdir, init_tokenizer, log)
    _check_same_vocabulary(tok)
    some = sample.order[:ESTIMATE_DOCUMENTS]
    estimate = stream.doc_tokens(tok, [train_docs.segments(int(train_ids[i])) for i in some])
    per_doc = float(np.mean([len(t) for t in estimate])) if estimate else 1.0
    texts = [s for i in test_ids for s in test_docs.segments(int(i))]
    test = masking_for(cfg, tok, 0).mask(
        pack(_tokenize(tok, texts, log, "test"), int(cfg.max_len), tok.cls_id, tok.sep_id, tok.pad_id),
        np.random.default_rng(EVAL_MASK_SEED))
    if not len(test["input_ids"]):
        raise DataError(f"the {len(test_ids)} held-out documents of {cfg.source} hold no text; raise "
                        f"data.test_fraction or data.max_test_documents.")
    streamed = cfg.get("stream") != "false"
    tokens = stream.Tokens(train_docs, tok) if streamed else stream.MemoryDocuments(train_docs, tok, train_ids, log)
    train = stream.StreamSplit(len(train_ids), tokens=tokens, ids=train_ids, skipped=train_docs.skipped,
                               tokens_per_doc=max(per_doc, 1.0), tokenizer=tok, max_len=int(cfg.max_len),
                               streamed=streamed)
    log(f"text: {len(train_ids):,} training documents {'streamed from' if streamed else 'tokenised from'} "
        f"{cfg.source} (about {per_doc:,.0f} tokens each), {len(test['input_ids']):,} test sequences of "
        f"{len(test_ids):,} held-out documents")
    init_inputs = {k: np.zeros((1, int(cfg.max_len)), np.int32) for k in ("input_ids", "token_type_ids")}
    init_inputs["attention_mask"] = np.ones((1, int(cfg.max_len)), np.int32)
    info = {"tokenizer_dir": tok_dir, "tokenizer_source": tok_source, "max_len": int(cfg.max_len),
            "vocab_size": tok.vocab_size, "lowercase": tok.lowercase, "strip_accents": tok.strip_accents,
            "tokenize_chinese_chars": tok.chinese_chars}
    return Dataset(name, train, Split(len(test["input_ids"]), arrays=test), num_classes=tok.vocab_size,
                   init_inputs=init_inputs, tokenizer_info=info, tokenizer=tok)
