"""Where texts come from, as a `TextDataset` (ptft_jax/dataset.py): train/test texts, optional second segments
(sentence pairs) and labels (None for pretraining text).

  pydocs        classify a standard-library docstring by its package family (text/corpus.py; fixed seeded
                stratified split by data.test_fraction / data.split_seed)
  pydocs_mlm    the same docstrings, every family, as pretraining text, less the test split of `pydocs` at its
                default split (test_fraction 0.2, split_seed 0), so pretraining never reads the texts the
                fine-tuned classifier is tested on
  csv:PATH      a CSV with a header row and `text` and `label` columns; jsonl:PATH one {"text", "label"} object a
                line; an optional `text_b` column / key makes sentence pairs ([CLS] text [SEP] text_b [SEP], token
                type 1 for the second segment). Labels are class indices 0..k-1 or names (sorted names -> 0..k-1)
  text:PATH     plain UTF-8 text for pretraining: a .txt file, or a folder whose .txt files (recursively, sorted)
                are read; a blank line ends a document. Documents are split by data.test_fraction / data.split_seed
  tfds:NAME     a TFDS text dataset read through `tfds.data_source` (no TensorFlow), splits data.train_split /
                data.test_split. The text fields are data.text_fields, else found by name: sentence1+sentence2,
                question+sentence, premise+hypothesis, sentence, text (glue/*, imdb_reviews, lm1b, wikipedia...);
                the label is `label` when the dataset has one.
`data.max_documents` caps how many examples (documents) of each split are read: the first N, in the source's order.
Masked-LM over text:, jsonl: and tfds: does not read through here: text/stream.py indexes and streams them (jsonl:
then needs only "text"), with the same train/test split of documents.
"""
from __future__ import annotations

import csv
import importlib
import json
import os
import re
import time

import numpy as np

from ptft_jax.dataset import TextDataset, check_file, check_labels, split_or_refuse, tfds_data_dir, tfds_split
from ptft_jax.errors import ConfigError, DataError
from ptft_jax.text.corpus import corpus_texts, pydocs_classification

TEXT_SOURCES = ("pydocs", "pydocs_mlm")
FILE_PREFIXES = ("csv:", "jsonl:", "text:")
# TFDS feature names tried in order when data.text_fields is unset: the first tuple whose names all exist wins.
TFDS_TEXT_FIELDS = (("sentence1", "sentence2"), ("question1", "question2"), ("question", "sentence"),
                    ("premise", "hypothesis"), ("sentence",), ("text",))


def is_text_source(source) -> bool:
    """Known to be text from its name alone (tfds: may be either; the model's task decides)."""
    source = str(source)
    return source in TEXT_SOURCES or source.startswith(FILE_PREFIXES)


def load_texts(cfg, log=print):
    """The TextDataset of `cfg.source` (see the module docstring)."""
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
    n = int(n)
    cut = lambda v: None if v is None else v[:n]  # noqa: E731
    raw.train_texts, raw.test_texts = raw.train_texts[:n], raw.test_texts[:n]
    raw.train_labels, raw.test_labels = cut(raw.train_labels), cut(raw.test_labels)
    raw.train_pairs, raw.test_pairs = cut(raw.train_pairs), cut(raw.test_pairs)
    return raw


def plain_text(path: str, cfg):
    """`text:PATH`: documents (runs of non-blank lines) of a .txt file or of every .txt file under a folder."""
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
    _register_text_builders()
    data_dir = tfds_data_dir(cfg)
    sources = {s: tfds_split(name, getattr(cfg, f"{s}_split"), data_dir) for s in ("train", "test")}
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
    for module in ("tensorflow_datasets.text.glue", "tensorflow_datasets.text.wikipedia",
                   "tensorflow_datasets.text.super_glue"):
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - a builder that cannot load is reported as missing by data_source
            pass


def _read_rows(path: str, fmt: str) -> list[tuple[str, object, str | None]]:
    """(text, label, text_b or None) of every row."""
    rows = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            if fmt == "csv":
                reader = csv.DictReader(f)
                cols = reader.fieldnames or []
                if "text" not in cols or "label" not in cols:
                    raise DataError(f"{path} has no 'text' and 'label' columns in its header row (found: "
                                    f"{', '.join(cols) or 'none'}); name the columns text,label.")
                rows = [(r["text"], r["label"], reader.line_num, r.get("text_b")) for r in reader]
            else:
                for i, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path} line {i} is not valid JSON ({e.msg}); write one JSON object "
                                        f"per line.") from None
                    if not isinstance(r, dict) or "text" not in r or "label" not in r:
                        raise DataError(f"{path} line {i} is not an object with 'text' and 'label' keys; write "
                                        f'{{"text": ..., "label": ...}} on each line.')
                    rows.append((r["text"], r["label"], i, r.get("text_b")))
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; save it as UTF-8.") from None
    except csv.Error as e:
        raise DataError(f"{path} is not a readable CSV file ({e}); check its quoting.") from None
    for text, label, i, _ in rows:
        if not isinstance(text, str) or label is None or label == "" or isinstance(label, (bool, float, list, dict)):
            raise DataError(f"{path} line {i} has no text or a missing or invalid label; give a string text "
                            f"and an integer or string label.")
        # An empty text trains as [CLS] [SEP] towards its label: refused, as no option skips such rows (an empty
        # text_b is a valid empty second segment).
        if not text.strip():
            raise DataError(f"{path} line {i} has an empty text; write the text or delete the row.")
    if not rows:
        raise DataError(f"{path} holds no rows; add text,label examples.")
    if any(b is not None for *_, b in rows):
        for _, _, i, b in rows:
            if not isinstance(b, str):
                raise DataError(f"{path} line {i} has no text_b though other rows do; give every row a string "
                                f"text_b (sentence pairs) or none.")
    return [(text, label, b) for text, label, _, b in rows]


def load_text(path: str, test_fraction: float = 0.2, split_seed: int = 0) -> TextDataset:
    """Text classification rows from `[csv:|jsonl:]PATH` (a `.jsonl`/`.ndjson` name means JSONL, else CSV)."""
    fmt, sep, rest = path.partition(":")
    if sep and fmt in ("csv", "jsonl"):
        path = rest
    else:
        fmt = "jsonl" if path.lower().endswith((".jsonl", ".ndjson")) else "csv"
    path = check_file(path)
    rows = _read_rows(path, fmt)
    texts = [t for t, _, _ in rows]
    pairs = [b for _, _, b in rows] if rows[0][2] is not None else None
    raw = [str(label).strip() for _, label, _ in rows]
    if all(re.fullmatch(r"-?\d+", label) for label in raw):
        labels, num_classes = check_labels(np.asarray([int(label) for label in raw]), path)
        class_names = None
    else:
        class_names = tuple(sorted(set(raw)))
        index = {c: i for i, c in enumerate(class_names)}
        labels, num_classes = check_labels(np.asarray([index[label] for label in raw]), path, class_names=class_names)
    (tri, trl), (tei, tel) = split_or_refuse(path, np.arange(len(texts)), labels, test_fraction, split_seed)
    name = os.path.splitext(os.path.basename(path))[0]
    pick = lambda seq, idx: None if seq is None else [seq[i] for i in idx]  # noqa: E731
    return TextDataset(name, pick(texts, tri), np.asarray(trl, np.int32), pick(texts, tei), np.asarray(tel, np.int32),
                       num_classes, class_names, pick(pairs, tri), pick(pairs, tei))


def read_predict_texts(inputs) -> tuple[list, list | None]:
    """(texts, second segments or None) to classify: a string, a list of strings, a list of (text, text_b) pairs,
    the path of a UTF-8 file holding one text a line, or of a .jsonl file of {"text"[, "text_b"]} objects."""
    pairs = None
    if isinstance(inputs, os.PathLike) or (isinstance(inputs, str) and os.path.isfile(inputs)):
        with open(inputs, encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f if line.strip()]
        if str(inputs).endswith((".jsonl", ".ndjson")):
            try:
                rows = [json.loads(line) for line in lines]
                texts = [str(r["text"]) for r in rows]
                pairs = [str(r["text_b"]) for r in rows] if "text_b" in rows[0] else None
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{inputs}: every line must be a JSON object with 'text' (and 'text_b' for "
                                f"sentence pairs) ({e}).") from None
        else:
            texts = lines
    elif isinstance(inputs, str):
        texts = [inputs]
    elif all(isinstance(t, (tuple, list)) and len(t) == 2 for t in inputs):  # sentence pairs
        texts, pairs = [str(a) for a, _ in inputs], [str(b) for _, b in inputs]
    else:
        texts = [str(t) for t in inputs]
    return texts, pairs
