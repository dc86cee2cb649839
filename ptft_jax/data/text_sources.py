"""Where texts come from, as a `TextDataset` (data/custom.py): train/test texts, optional second segments
(sentence pairs) and labels (None for pretraining text).

  pydocs        classify a standard-library docstring by its package family (text/corpus.py; fixed seeded
                stratified split by data.test_fraction / data.split_seed)
  pydocs_mlm    the same docstrings, every family, as pretraining text, less the test split of `pydocs` at its
                default split (test_fraction 0.2, split_seed 0), so pretraining never reads the texts the
                fine-tuned classifier is tested on
  csv:PATH      text,label[,text_b] rows; jsonl:PATH one {"text", "label"[, "text_b"]} object a line
  text:PATH     plain UTF-8 text for pretraining: a .txt file, or a folder whose .txt files (recursively, sorted)
                are read; a blank line ends a document. Documents are split by data.test_fraction / data.split_seed
  tfds:NAME     a TFDS text dataset read through `tfds.data_source` (no TensorFlow), splits data.train_split /
                data.test_split. The text fields are data.text_fields, else found by name: sentence1+sentence2,
                question+sentence, premise+hypothesis, sentence, text (glue/*, imdb_reviews, lm1b, wikipedia...);
                the label is `label` when the dataset has one.
`data.max_documents` caps how many examples (documents) of each split are read: the first N, in the source's order.
"""
from __future__ import annotations

import os
import time

import numpy as np

from ptft_jax.errors import ConfigError, DataError

TEXT_SOURCES = ("pydocs", "pydocs_mlm")
FILE_PREFIXES = ("csv:", "jsonl:", "text:")
# TFDS feature names tried in order when data.text_fields is unset: the first tuple whose names all exist wins.
TFDS_TEXT_FIELDS = (("sentence1", "sentence2"), ("question1", "question2"), ("question", "sentence"),
                    ("premise", "hypothesis"), ("sentence",), ("text",))


def is_text_source(source) -> bool:
    """Known to be text from its name alone (tfds: may be either; data/__init__ decides by the model)."""
    source = str(source)
    return source in TEXT_SOURCES or source.startswith(FILE_PREFIXES)


def load_texts(cfg, log=print):
    """The TextDataset of `cfg.source` (see the module docstring)."""
    from ptft_jax.data.custom import TextDataset, load_text
    from ptft_jax.text.corpus import corpus_texts, pydocs_classification
    source = str(cfg.source)
    if source == "pydocs":
        raw = pydocs_classification(test_fraction=cfg.test_fraction, seed=cfg.split_seed)
    elif source == "pydocs_mlm":
        held_out = set(pydocs_classification(test_fraction=0.2, seed=0).test_texts)
        texts = [t for t in corpus_texts() if t not in held_out]
        train, test = _split_documents(texts, cfg)
        raw = TextDataset("pydocs_mlm", train, None, test, None, 0, None)
    elif source.startswith("text:"):
        raw = plain_text(source[len("text:"):], cfg)
    elif source.startswith("tfds:"):
        raw = tfds_text(source[len("tfds:"):], cfg, log)
    else:
        raw = load_text(source, cfg.test_fraction, cfg.split_seed)
    return _capped(raw, cfg.max_documents)


def _split_documents(texts, cfg):
    perm = np.random.default_rng(cfg.split_seed).permutation(len(texts))
    n_test = max(1, int(round(cfg.test_fraction * len(texts))))
    return [texts[i] for i in sorted(perm[n_test:])], [texts[i] for i in sorted(perm[:n_test])]


def _capped(raw, n):
    if n is None:
        return raw
    if int(n) < 1:
        raise ConfigError(f"data.max_documents {n} must be at least 1 (or None for every document).")
    n = int(n)
    cut = lambda v: None if v is None else v[:n]  # noqa: E731
    raw.train_texts, raw.test_texts = raw.train_texts[:n], raw.test_texts[:n]
    raw.train_labels, raw.test_labels = cut(raw.train_labels), cut(raw.test_labels)
    raw.train_pairs, raw.test_pairs = cut(raw.train_pairs), cut(raw.test_pairs)
    return raw


def plain_text(path: str, cfg):
    """`text:PATH`: documents (runs of non-blank lines) of a .txt file or of every .txt file under a folder."""
    from ptft_jax.data.custom import TextDataset
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names if f.endswith(".txt"))
        if not files:
            raise DataError(f"{path} holds no .txt files; put the pretraining text in UTF-8 .txt files there.")
    elif os.path.isfile(path):
        files = [path]
    else:
        raise DataError(f"{path} does not exist; give a UTF-8 .txt file or a folder of them (text:PATH).")
    docs = []
    for file in files:
        try:
            with open(file, encoding="utf-8") as f:
                lines = []
                for line in f:
                    if line.strip():
                        lines.append(line.strip())
                    elif lines:
                        docs.append(" ".join(lines))
                        lines = []
                if lines:
                    docs.append(" ".join(lines))
        except UnicodeDecodeError:
            raise DataError(f"{file} is not UTF-8 text; save it as UTF-8.") from None
    if len(docs) < 2:
        raise DataError(f"{path} holds {len(docs)} document(s); a train/test split needs at least 2 (a blank line "
                        f"ends a document).")
    train, test = _split_documents(docs, cfg)
    return TextDataset(os.path.splitext(os.path.basename(path))[0], train, None, test, None, 0, None)


def _text_fields(features, name: str, wanted):
    names = set(features)
    if wanted:
        wanted = (wanted,) if isinstance(wanted, str) else tuple(wanted)
        missing = [w for w in wanted if w not in names]
        if missing or not 1 <= len(wanted) <= 2:
            raise ConfigError(f"data.text_fields {list(wanted)} does not fit {name}: give one or two of its "
                              f"features ({', '.join(sorted(names))}).")
        return wanted
    for fields in TFDS_TEXT_FIELDS:
        if all(f in names for f in fields):
            return fields
    raise DataError(f"Dataset {name!r} has no text feature this reader knows (features: {', '.join(sorted(names))}); "
                    f"name its text feature(s) in data.text_fields.")


def _as_str(v) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, np.ndarray):
        return _as_str(v.item())
    return str(v)


def tfds_text(name: str, cfg, log=print):
    """A TFDS text dataset through `tfds.data_source` (see the module docstring)."""
    from ptft_jax.data.custom import TextDataset
    from ptft_jax.data.sources import _tfds_source, tfds_data_dir
    _register_text_builders()
    data_dir = tfds_data_dir(cfg)
    sources = {s: _tfds_source(name, getattr(cfg, f"{s}_split"), data_dir) for s in ("train", "test")}
    features = sources["train"].dataset_info.features
    fields = _text_fields(features, name, cfg.text_fields)
    has_label = "label" in features
    out = {}
    for split, src in sources.items():
        n = len(src) if cfg.max_documents is None else min(len(src), int(cfg.max_documents))
        texts, pairs, labels = [], [] if len(fields) == 2 else None, [] if has_label else None
        t0 = last = time.perf_counter()
        for i in range(n):
            r = src[i]
            texts.append(_as_str(r[fields[0]]))
            if pairs is not None:
                pairs.append(_as_str(r[fields[1]]))
            if labels is not None:
                labels.append(int(r["label"]))
            if time.perf_counter() - last > 10:
                last = time.perf_counter()
                log(f"{name}/{getattr(cfg, f'{split}_split')}: read {i + 1:,} of {n:,} examples "
                    f"({(i + 1) / (last - t0):,.0f}/s)")
        if labels is not None and labels and min(labels) < 0:
            raise DataError(f"Dataset {name!r} split {getattr(cfg, f'{split}_split')!r} has no labels (label -1, as "
                            f"in GLUE's test splits); evaluate on a labelled split, e.g. data.test_split=validation.")
        out[split] = (texts, pairs, None if labels is None else np.asarray(labels, np.int32))
    num_classes = features["label"].num_classes if has_label else 0
    class_names = tuple(features["label"].names) if has_label and getattr(features["label"], "names", None) else None
    (trt, trp, trl), (tet, tep, tel) = out["train"], out["test"]
    return TextDataset(name, trt, trl, tet, tel, num_classes, class_names, trp, tep)


def _register_text_builders():
    """TFDS registers some text builders (glue, wikipedia) only when their legacy module is imported, which
    `import tensorflow_datasets` skips without TensorFlow; importing them directly works."""
    import importlib
    for module in ("tensorflow_datasets.text.glue", "tensorflow_datasets.text.wikipedia",
                   "tensorflow_datasets.text.super_glue"):
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - a builder that cannot load is reported as missing by data_source
            pass
