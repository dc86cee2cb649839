"""The shared data types and helpers that image (`data/`) and text (`text/`) sources both use.

A `Dataset` holds two `Split`s of random-access examples: NumPy arrays (`arrays`) or a record source read one
example at a time (`records`). Image examples are {"image": uint8 HxWxC, "label": int}; text sources hold token
arrays (input_ids, token_type_ids, attention_mask[, label]). A `TextDataset` holds raw texts before tokenising.
This module imports nothing heavier than NumPy (scikit-learn and TFDS only inside the functions that need them).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
from typing import Any, Sequence

import numpy as np

from ptft_jax.errors import DataError


@dataclasses.dataclass
class Split:
    size: int
    arrays: dict[str, np.ndarray] | None = None  # {"image": [N,H,W,C] uint8, "label": [N] int32}
    records: Sequence[Any] | None = None         # random access, each a dict like the arrays' rows

    def __len__(self):
        return self.size

    def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The examples at `indices`, stacked."""
        if self.arrays is not None:
            return {k: v[indices] for k, v in self.arrays.items()}
        rows = [self.records[int(i)] for i in indices]
        return {"image": np.stack([np.asarray(r["image"]) for r in rows]),
                "label": np.asarray([r["label"] for r in rows], np.int32)}

    def load_all(self, log=None) -> "Split":
        """Reads every record into arrays (for splits that fit in host memory)."""
        if self.arrays is not None:
            return self
        if log:
            log(f"reading {self.size} examples into memory")
        return Split(self.size, arrays=self.take(np.arange(self.size)))


@dataclasses.dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    class_names: tuple | None = None
    init_inputs: dict | None = None     # text: a [1, T] batch of model inputs (for init)
    tokenizer_info: dict | None = None  # text: tokenizer_dir, tokenizer_source, max_len, vocab_size, lowercase
    tokenizer: Any = None               # text: the WordPieceTokenizer
    val: Split | None = None            # the validation split (data.val_fraction / data.val_split), if any

    @property
    def image_shape(self):
        """[H, W, C] of the images; None for text."""
        split = self.train
        if split.arrays is not None:
            return tuple(split.arrays["image"].shape[1:]) if "image" in split.arrays else None
        return tuple(np.asarray(split.records[0]["image"]).shape)

    def info(self, task_name: str) -> dict:
        """What predict needs to know about the training data; written to WORKDIR/data.json. Text runs add the
        tokenizer (tokenizer_dir in the workdir, tokenizer_source: where it came from), max_len and vocab_size."""
        shape = self.image_shape
        return {"name": self.name, "task": task_name, "num_classes": self.num_classes,
                "image_shape": list(shape) if shape is not None else None, "mean": list(self.mean),
                "std": list(self.std), "class_names": list(self.class_names or []) or None,
                **(self.tokenizer_info or {})}


@dataclasses.dataclass
class TextDataset:
    """Raw texts of a text source; labels None for pretraining text."""
    name: str
    train_texts: list
    train_labels: np.ndarray | None  # int32 [N]
    test_texts: list
    test_labels: np.ndarray | None
    num_classes: int
    class_names: tuple | None = None
    train_pairs: list | None = None  # the second segments of sentence pairs, or None for single texts
    test_pairs: list | None = None


def stratified_split(x, y, test_fraction: float, seed: int):
    from sklearn.model_selection import train_test_split
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return (xtr, ytr), (xte, yte)


def carve_val(ds: Dataset, fraction: float, seed: int, log=None) -> Dataset:
    """`ds` with `fraction` of its training split moved to `ds.val`, seeded by `seed`, each part in its original
    order: stratified by label when the split is in memory and every class can give examples to both parts, else
    (records read on access, e.g. a folder kept on disk for inception_crop, or too few examples of a class: a
    warning on `log` says so) a seeded random choice, which reads no image."""
    train = ds.train
    n = len(train)
    labels = train.arrays.get("label") if train.arrays is not None else None
    n_val = int(round(n * fraction))
    if not 1 <= n_val < n:
        raise DataError(f"data.val_fraction={fraction} of {n} training examples leaves {n_val} for validation "
                        f"and {n - n_val} for training; both need at least one.")
    idx = np.arange(n)
    counts = collections.Counter(np.asarray(labels).tolist()) if labels is not None else {}
    if counts and min(counts.values()) >= 2 and min(n_val, n - n_val) >= len(counts):
        (_, _), (val, _) = stratified_split(idx, labels, n_val, seed)  # n_val: a count, not a fraction
    else:
        if counts and log is not None:
            log(f"warning: {ds.name}: {n} training examples of {len(counts)} classes are too few to stratify a "
                f"validation split of {n_val}; it was drawn at random (seeded)")
        val = np.random.default_rng([int(seed), 7]).permutation(n)[:n_val]
    val = np.sort(val)
    keep = np.setdiff1d(idx, val)
    if train.arrays is None:
        ds.train, ds.val = (Split(len(part), records=_Subset(train.records, part)) for part in (keep, val))
    else:
        ds.train, ds.val = (Split(len(part), arrays={k: v[part] for k, v in train.arrays.items()})
                            for part in (keep, val))
    return ds


class _Subset:
    """Some records of a record source, by index (their `raw` view too, which inception_crop reads)."""

    def __init__(self, records, indices: np.ndarray):
        self.records, self.indices = records, indices
        if hasattr(records, "raw"):
            self.raw = lambda i: records.raw(int(indices[i]))

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.records[int(self.indices[i])]


def split_or_refuse(path: str, x, y, test_fraction: float, seed: int):
    """stratified_split of a user's file, with a sentence naming the file when it cannot be split."""
    counts = collections.Counter(np.asarray(y).tolist())
    if counts and min(counts.values()) < 2:
        c = min(counts, key=counts.get)
        raise DataError(f"{path}: class {c} has only 1 example, too few for a stratified train/test split; "
                        f"add examples or give a test split.")
    try:
        return stratified_split(x, y, test_fraction, seed)
    except ValueError as e:
        reason = str(e).split(". ")[0].rstrip(".")
        raise DataError(f"{path}: cannot split into train and test with data.test_fraction={test_fraction} "
                        f"({reason}); change data.test_fraction or give a test split.") from None


def check_file(path: str, folder: bool = False) -> str:
    """The expanded path of a user's data file (or folder), or a DataError saying what is wrong with it."""
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise DataError(f"{path} does not exist; check the path in data.source.")
    if folder and not os.path.isdir(path):
        raise DataError(f"{path} is not a folder; folder: needs a folder with one subfolder per class.")
    if not folder and os.path.isdir(path):
        raise DataError(f"{path} is a folder, not a file; use folder:{path} for an image folder.")
    if not folder and os.path.getsize(path) == 0:
        raise DataError(f"{path} is an empty file; write the data into it.")
    return path


def check_labels(y, where: str, num_classes: int | None = None, classes=None,
                 class_names=None) -> tuple[np.ndarray, int]:
    """Labels as int32 and the number of classes (max label + 1, from the training labels when not given; those
    must hold at least two classes, `class_names` naming them in the message when not)."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{where}: the labels have shape {y.shape}, not [N]; store one class index per example.")
    if not np.issubdtype(y.dtype, np.integer) and not (
            np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
        raise DataError(f"{where}: the labels are not integers (dtype {y.dtype}); store class indices 0..k-1.")
    if len(y) and y.min() < 0:
        raise DataError(f"{where}: negative label {int(y.min())}; labels must be class indices 0..k-1.")
    y = y.astype(np.int64)
    if num_classes is None:
        present = np.unique(y)  # sorted, so the first i with present[i] != i is a missing class
        num_classes = int(present[-1]) + 1 if len(present) else 0
        if classes is None:
            empty = np.flatnonzero(present != np.arange(len(present)))[:1].tolist()
        else:  # data.classes keeps only some labels: only those need examples
            empty = [c for c in map(int, classes) if c not in set(present.tolist())]
        if empty:
            raise DataError(f"{where}: empty class {empty[0]} (no example has label {empty[0]}, labels go up to "
                            f"{num_classes - 1}); renumber the labels 0..k-1 without gaps.")
        if classes is None:
            refuse_one_class(y, where, class_names)
    elif len(y) and y.max() >= num_classes:
        raise DataError(f"{where}: label {int(y.max())} is outside the {num_classes} classes of the training "
                        f"labels; use only labels 0..{num_classes - 1}.")
    return y.astype(np.int32), num_classes


def refuse_one_class(labels, where: str, class_names=None):
    """Training labels of a single class train to loss 0 and accuracy 1.0 and learn nothing: a DataError naming
    the class (and how to get more)."""
    present = np.unique(np.asarray(labels))
    if len(present) == 1:
        c = int(present[0])
        name = repr(class_names[c]) if class_names is not None and c < len(class_names) else str(c)
        raise DataError(f"{where}: every training example is of class {name}, and a classifier of one class learns "
                        f"nothing; add examples of other classes, or keep at least 2 classes with data.classes / "
                        f"data.label_map.")


def check_classes(ds: Dataset, cfg, where: str) -> Dataset:
    """After data.classes / label_map: at least two classes, and every class data.classes keeps has a training
    example (one it lacks would be a class the model is never shown). Training splits held as records (TFDS,
    not read into memory) are checked by their number of classes only; masked-LM text has no labels."""
    if ds.train.arrays is None:
        if ds.num_classes < 2:
            raise DataError(f"{where}: the dataset has {ds.num_classes} class(es); a classifier needs at least 2.")
        return ds
    labels = ds.train.arrays.get("label")
    if labels is None:
        return ds
    if cfg.classes is not None or cfg.label_map is not None:  # (validate() saw to it that they keep 2 or more)
        missing = sorted(set(range(ds.num_classes)) - set(np.unique(labels).tolist()))
        if missing:
            what = f"label {missing[0]}" if cfg.label_map is not None else f"class {cfg.classes[missing[0]]}"
            raise DataError(f"{where}: data.classes / data.label_map keep {what}, which no training example has; "
                            f"keep only classes the data holds.")
    refuse_one_class(labels, where, ds.class_names)
    return ds


def select(split: Split, classes=None, label_map=None, per_class=None) -> Split:
    """Keeps the given classes (renumbered), maps labels, and keeps the first `per_class` of each class."""
    if classes is None and label_map is None and per_class is None:
        return split
    arrays = dict(split.arrays)
    labels = arrays["label"]
    keep = np.ones(len(labels), bool)
    if classes is not None:
        classes = list(classes)
        keep &= np.isin(labels, classes)
        lookup = np.full(max(int(labels.max()), max(classes)) + 1, -1, np.int32)
        lookup[classes] = np.arange(len(classes), dtype=np.int32)
        labels = lookup[np.maximum(labels, 0)]
    if label_map is not None:
        label_map = np.asarray(label_map, np.int32)
        if keep.any() and labels[keep].max() >= len(label_map):
            raise DataError(f"data.label_map has {len(label_map)} entries but labels go up to {labels[keep].max()}; "
                            f"give one new label per class.")
        labels = np.where(keep, label_map[np.clip(labels, 0, len(label_map) - 1)], -1)
    if per_class is not None:
        counts: dict[int, int] = {}
        for i in np.flatnonzero(keep):
            c = int(labels[i])
            counts[c] = counts.get(c, 0) + 1
            if counts[c] > per_class:
                keep[i] = False
    idx = np.flatnonzero(keep)
    arrays = {k: v[idx] for k, v in arrays.items()}
    arrays["label"] = labels[idx].astype(np.int32)
    if len(idx) == 0:
        raise DataError("data.classes / data.label_map / data.train_per_class leave no examples; check them.")
    return Split(len(idx), arrays=arrays)


def select_classes(ds: Dataset, cfg) -> Dataset:
    """data.classes / data.label_map / data.train_per_class applied to both splits (in memory), with the new
    number of classes."""
    ds.train = select(ds.train, cfg.classes, cfg.label_map, cfg.train_per_class)
    ds.test = select(ds.test, cfg.classes, cfg.label_map, None)
    if cfg.classes is not None:
        ds.num_classes = len(cfg.classes)
    if cfg.label_map is not None:
        ds.num_classes = int(max(cfg.label_map)) + 1
    return check_classes(ds, cfg, f"data.source {cfg.source}")


# TFDS, read through `tfds.data_source` (no TensorFlow).

def tfds_data_dir(cfg) -> str:
    return os.path.expanduser(cfg.data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def prepare_command(name: str, data_dir: str) -> str:
    return f"pip install -e '.[tf]' && python -m ptft_jax.prepare {name} --data_dir={data_dir}"


@contextlib.contextmanager
def _quiet_tfds():
    """TFDS's absl warnings off while it looks for a dataset: a missing one is reported as one sentence."""
    from absl import logging
    level = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(level)


def tfds_split(name: str, split: str, data_dir: str):
    """The random-access source of a prepared TFDS split, or a DataError saying how to prepare it."""
    import tensorflow_datasets as tfds
    try:
        with _quiet_tfds():  # its "Variant folder ... has no dataset_info.json" lines precede our one sentence
            return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"TFDS has no dataset named {name!r}: check the spelling in data.source "
                        f"(the list is at https://www.tensorflow.org/datasets/catalog).") from None
    except (NotImplementedError, FileNotFoundError, AssertionError, ValueError) as e:
        msg = str(e)
        if "split" in msg.lower() and "unknown" in msg.lower():
            raise DataError(f"Dataset {name!r} has no split {split!r} ({msg.splitlines()[0]}).") from None
        if "TFRECORD" in msg and _prepared(name, data_dir):
            raise DataError(f"Dataset {name!r} in {data_dir} was prepared as TFRecord, which cannot be read "
                            f"without TensorFlow; prepare it as array_record with: "
                            f"{prepare_command(name, data_dir)}") from None
        raise DataError(f"Dataset {name!r} is not prepared in {data_dir}; prepare it with: "
                        f"{prepare_command(name, data_dir)}") from None


def _prepared(name: str, data_dir: str) -> bool:
    import tensorflow_datasets as tfds
    try:
        with _quiet_tfds():
            return tfds.builder(name, data_dir=data_dir).is_prepared()
    except Exception:  # noqa: BLE001 - only used to choose between two messages
        return False
