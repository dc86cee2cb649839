"""Data: sources (embedded, TFDS, the user's files, text), the epoch order, host and device pipelines."""
from __future__ import annotations

from ptft_jax.data.augment import train_augment
from ptft_jax.data.pipeline import DeviceFeed, EpochOrder, eval_batches, eval_indices, host_batches, select
from ptft_jax.data.sources import Dataset, Split, get_source
from ptft_jax.errors import ConfigError, DataError

__all__ = ["Dataset", "Split", "DeviceFeed", "EpochOrder", "load", "eval_batches", "eval_indices", "host_batches",
           "select", "train_augment", "train_transform"]


def load(cfg, log=print, task: str = "classify_image", workdir: str | None = None,
         init_from: str | None = None) -> Dataset:
    """The dataset named by `cfg.source` for `task` (see step.py), with class selection and in-memory loading
    applied. Text tasks tokenise the source with the run's tokenizer (data/text.py: `workdir` and `init_from`
    decide where it comes from and where it is saved)."""
    from ptft_jax.data.text import is_text_source, load_text_dataset
    text_task = task in ("classify_text", "mlm")
    if not str(cfg.source).startswith("tfds:") and is_text_source(cfg.source) != text_task:
        raise ConfigError(f"data.source {cfg.source} is {'text' if is_text_source(cfg.source) else 'images'} but "
                          f"the model's task is {task}: pair text sources (pydocs, pydocs_mlm, csv:, jsonl:, text:) "
                          f"with model.name=bert or bert_mlm and image sources with an image model.")
    if text_task:
        ds = load_text_dataset(cfg, task, workdir, init_from, log)
        if task == "mlm" and (cfg.classes is not None or cfg.label_map is not None or cfg.train_per_class is not None):
            raise ConfigError("data.classes / data.label_map / data.train_per_class select labelled examples; "
                              "masked-LM pretraining text has no labels, so leave them unset.")
        ds.train = select(ds.train, cfg.classes, cfg.label_map, cfg.train_per_class)
        ds.test = select(ds.test, cfg.classes, cfg.label_map, None)
        if cfg.classes is not None:
            ds.num_classes = len(cfg.classes)
        if cfg.label_map is not None:
            ds.num_classes = int(max(cfg.label_map)) + 1
        return ds
    ds = get_source(cfg)
    if cfg.image_size:
        from ptft_jax.data.augment import sized
        ds = sized(ds, cfg)
    mode = str(cfg.in_memory).lower()
    needs_arrays = cfg.classes is not None or cfg.label_map is not None or cfg.train_per_class is not None
    for name in ("train", "test"):
        split = getattr(ds, name)
        # inception_crop crops the full-size training images, so that split stays as records unless it must not.
        keep_raw = name == "train" and cfg.augment == "inception_crop" and not needs_arrays
        if split.arrays is None and not keep_raw:
            nbytes = split.size * _example_bytes(split)
            if mode == "true" or needs_arrays or (mode == "auto" and nbytes < 4 << 30):
                split = split.load_all(log=lambda m: log(f"{ds.name}/{name}: {m}"))
        per_class = cfg.train_per_class if name == "train" else None
        split = select(split, cfg.classes, cfg.label_map, per_class) if split.arrays is not None else split
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
    return ds


def _example_bytes(split: Split) -> int:
    import numpy as np
    return int(np.asarray(split.records[0]["image"]).nbytes) + 4


def train_transform(ds: Dataset, cfg, seed: int):
    """The host pipeline's per-batch transform: masked-LM masking for mlm, else the image augmentation (or None)."""
    if ds.task == "mlm":
        from ptft_jax.data.text import masking_for
        return masking_for(cfg, ds.tokenizer, seed)
    return train_augment(cfg, seed)
