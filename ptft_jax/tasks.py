"""Tasks: what a model is trained to do. Each task owns its data loading, its model inputs, its loss, its
evaluation sums, its host transform, its init inputs and its predict inputs; nothing outside this module asks
which task a run has (scenic's "the model owns its loss and metrics", kept small).

  ImageClassification  batches {"image": uint8, "label"}; images are normalised inside the step (the host ships
                       a quarter of the bytes, and the host and device-resident paths compute the same thing)
  TextClassification   (bert) batches {"input_ids", "token_type_ids", "attention_mask", "label"}
  MaskedLM             (bert_mlm) batches {"input_ids", "token_type_ids", "attention_mask", "masked_positions",
                       "masked_labels", "masked_weights"}: masked on the host per step, so never device-resident;
                       the decoder runs at the masked positions only; loss is the weighted mean cross-entropy there
                       (float32), accuracy the weighted fraction predicted right

The model's name picks the task (`from_config`); a run's data.json records the task's `name` for `predict`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ptft_jax.data import augment, custom, sources
from ptft_jax.dataset import Split, carve_val
from ptft_jax.errors import ConfigError, DataError
from ptft_jax.text import dataset as text_dataset
from ptft_jax.text.masking import masking_for
from ptft_jax.text.sources import is_text_source, read_predict_texts
from ptft_jax.text.tokenizer import WordPieceTokenizer

TEXT_KEYS = ("input_ids", "token_type_ids", "attention_mask")


class PredictInputs(NamedTuple):
    """What a task makes of predict's inputs: `read(i, j)` gives the host batch of inputs i..j-1 (NumPy arrays),
    so that predict never holds more than a batch; `names` (files' names, or None) label the results."""
    names: list[str] | None
    count: int
    read: Callable[[int, int], dict]


@dataclasses.dataclass(frozen=True)
class Task:
    label_smoothing: float = 0.0  # classification: targets (1 - x) one-hot + x / classes

    name: ClassVar[str] = ""
    text: ClassVar[bool] = False
    host_only: ClassVar[bool] = False  # batches need host work every step: never device-resident

    def bind(self, ds) -> "Task":
        """The task with what it needs from the loaded dataset (image normalisation)."""
        return self

    def mix(self, x, rng):
        """(model inputs, mixup weight or None) of a training batch."""
        return x, None

    def with_val(self, ds, data_cfg, log=None):
        """`ds` with its validation split: data.val_fraction of the training split carved out (stratified,
        seeded), or the data.val_split the source loaded, or none."""
        if data_cfg.val_split and self.text:
            raise ConfigError("data.val_split is for TFDS image datasets; for text use data.val_fraction (e.g. 0.1).")
        return carve_val(ds, data_cfg.val_fraction, data_cfg.split_seed, log) if data_cfg.val_fraction else ds

    def host_transform(self, ds, data_cfg, seed: int):
        """The host pipeline's per-batch transform `(split, indices, share, step) -> batch`, or None."""
        return None

    def init_inputs(self, ds):
        return {k: jnp.asarray(v) for k, v in ds.init_inputs.items()}

    def example_bytes(self, ds, data_cfg) -> int:
        """Host bytes of one training example in a batch (sizes the host calls)."""
        return sum(np.asarray(v).nbytes for v in ds.init_inputs.values())

    def _check_source(self, data_cfg):
        source = str(data_cfg.source)
        if data_cfg.get("stream") == "true" and self.name != "mlm":
            raise ConfigError(f"data.stream=true streams masked-LM pretraining text (model.name=bert_mlm), not the "
                              f"data of the {self.name} task; leave data.stream=auto.")
        if not source.startswith("tfds:") and is_text_source(source) != self.text:
            raise ConfigError(f"data.source {source} is {'text' if is_text_source(source) else 'images'} but the "
                              f"model's task is {self.name}: pair text sources (pydocs, pydocs_mlm, csv:, jsonl:, "
                              f"text:) with model.name=bert or bert_mlm and image sources with an image model.")


def _classification_loss(logits, labels, label_smoothing: float, lam):
    if not label_smoothing and lam is None:
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    else:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        if lam is not None:
            targets = lam * targets + (1.0 - lam) * targets[::-1]
        loss = optax.softmax_cross_entropy(logits, targets).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == labels)


def _classification_sums(logits, batch):
    """Sums over a padded batch (`mask` 0 on padding rows): loss, correct, count, and per-class tp / fp / fn [C]
    for F1 (metrics.f1_scores)."""
    mask = batch["mask"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    pred = jnp.argmax(logits, -1)
    correct = (pred == batch["label"]).astype(jnp.float32)
    p1, l1 = (jax.nn.one_hot(v, logits.shape[-1]) * mask[:, None] for v in (pred, batch["label"]))
    return {"loss": jnp.sum(loss * mask), "correct": jnp.sum(correct * mask), "count": jnp.sum(mask),
            "tp": jnp.sum(p1 * l1, 0), "fp": jnp.sum(p1 * (1 - l1), 0), "fn": jnp.sum((1 - p1) * l1, 0)}


def preprocess(image, mean, std):
    x = image.astype(jnp.float32) * (1.0 / 255.0)
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


@dataclasses.dataclass(frozen=True)
class ImageClassification(Task):
    mixup_alpha: float = 0.0  # > 0: the batch mixed with its reverse, weight ~ Beta(alpha, alpha)
    mean: tuple = ()
    std: tuple = ()

    name: ClassVar[str] = "classify_image"

    def load(self, data_cfg, workdir=None, init_tokenizer=None, log=print):
        self._check_source(data_cfg)
        return sources.load(data_cfg, log=log)

    def bind(self, ds):
        return dataclasses.replace(self, mean=tuple(ds.mean), std=tuple(ds.std))

    def inputs(self, batch):
        return preprocess(batch["image"], self.mean, self.std)

    def mix(self, x, rng):
        if not self.mixup_alpha:
            return x, None
        lam = jax.random.beta(jax.random.fold_in(rng, 1), self.mixup_alpha, self.mixup_alpha)
        return lam * x + (1.0 - lam) * x[::-1], lam

    def loss(self, logits, batch, lam):
        return _classification_loss(logits, batch["label"], self.label_smoothing, lam)

    def eval_sums(self, logits, batch):
        return _classification_sums(logits, batch)

    def host_transform(self, ds, data_cfg, seed):
        return augment.train_augment(data_cfg, seed)

    def init_inputs(self, ds):
        return jnp.zeros((1, *ds.image_shape), jnp.float32)

    def example_bytes(self, ds, data_cfg):
        shape = ds.image_shape
        if data_cfg.image_size:
            shape = (data_cfg.image_size, data_cfg.image_size, shape[-1])
        return int(np.prod(shape)) + 4  # uint8 pixels and an int32 label

    def predict_inputs(self, inputs, info, config) -> PredictInputs:
        """Images seen as the run's evaluation saw them: at data.image_size, centre-cropped for inception_crop
        (config.json says which), else at the trained shape."""
        data = config.get("data") or {}
        names, count, read = custom.predict_images(inputs, tuple(info["image_shape"]), data.get("image_size"),
                                                   data.get("augment") == "inception_crop")
        return PredictInputs(names, count, lambda i, j: {"image": read(i, j)})


@dataclasses.dataclass(frozen=True)
class TextClassification(Task):
    name: ClassVar[str] = "classify_text"
    text: ClassVar[bool] = True

    def load(self, data_cfg, workdir=None, init_tokenizer=None, log=print):
        self._check_source(data_cfg)
        return text_dataset.load_classification(data_cfg, workdir, init_tokenizer, log)

    def inputs(self, batch):
        return {k: batch[k] for k in TEXT_KEYS}

    def loss(self, logits, batch, lam):
        return _classification_loss(logits, batch["label"], self.label_smoothing, lam)

    def eval_sums(self, logits, batch):
        return _classification_sums(logits, batch)

    def predict_inputs(self, inputs, info, config) -> PredictInputs:
        """Texts tokenised a batch at a time, at the run's max_len."""
        texts, pairs = read_predict_texts(inputs)
        if not texts:
            raise DataError("There is no text to classify (the input is empty); pass at least one text.")
        tok = WordPieceTokenizer.load(info["tokenizer_dir"])
        max_len = int(info["max_len"])
        return PredictInputs(None, len(texts), lambda i, j: tok.encode(
            texts[i:j], None if pairs is None else pairs[i:j], max_len=max_len))


def _mlm_sums(logits, batch, weights):
    """(sum of weighted cross-entropy, sum of weighted correct) over the masked positions."""
    labels = batch["masked_labels"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return jnp.sum(loss * weights), jnp.sum(correct * weights)


@dataclasses.dataclass(frozen=True)
class MaskedLM(Task):
    name: ClassVar[str] = "mlm"
    text: ClassVar[bool] = True
    host_only: ClassVar[bool] = True

    def load(self, data_cfg, workdir=None, init_tokenizer=None, log=print):
        self._check_source(data_cfg)
        return text_dataset.load_masked_lm(data_cfg, workdir, init_tokenizer, log)

    def inputs(self, batch):
        return {k: batch[k] for k in (*TEXT_KEYS, "masked_positions")}

    def loss(self, logits, batch, lam):
        weights = batch["masked_weights"]
        n = jnp.maximum(jnp.sum(weights), 1.0)
        loss_sum, correct_sum = _mlm_sums(logits, batch, weights)
        return loss_sum / n, correct_sum / n

    def eval_sums(self, logits, batch):
        weights = batch["masked_weights"] * batch["mask"][:, None]
        loss, correct = _mlm_sums(logits, batch, weights)
        return {"loss": loss, "correct": correct, "count": jnp.sum(weights)}

    def host_transform(self, ds, data_cfg, seed):
        return masking_for(data_cfg, ds.tokenizer, seed)

    def with_val(self, ds, data_cfg, log=None):
        """Validation sequences carved out of the packed training sequences, masked once with a fixed seed (as the
        test split is)."""
        if data_cfg.val_fraction and not ds.train.arrays:
            raise ConfigError(f"data.val_fraction carves validation sequences out of packed in-memory text, and "
                              f"{data_cfg.source} is packed by lanes (data.stream); leave data.val_fraction unset "
                              f"(the test split, data.max_test_documents held-out documents, is evaluated).")
        ds = super().with_val(ds, data_cfg, log)
        if ds.val is not None:
            rng = np.random.default_rng(text_dataset.EVAL_MASK_SEED + 1)
            masked = masking_for(data_cfg, ds.tokenizer, 0).mask(ds.val.arrays, rng)
            ds.val = Split(ds.val.size, arrays=masked)
        return ds

    def predict_inputs(self, inputs, info, config) -> PredictInputs:
        raise DataError("A masked-LM pretraining run has no classes to predict; fine-tune it into a classifier "
                        "(init_from) and predict with that run.")


TASKS = {t.name: t for t in (ImageClassification, TextClassification, MaskedLM)}
BY_MODEL = {"bert": TextClassification, "bert_mlm": MaskedLM}  # any other model classifies images


def from_config(config) -> Task:
    """The task of a run's config, from its model's name."""
    cls = BY_MODEL.get(str(config.model.name), ImageClassification)
    t = config.train
    if cls is ImageClassification:
        return cls(label_smoothing=float(t.label_smoothing), mixup_alpha=float(t.mixup_alpha))
    if t.mixup_alpha:
        raise ConfigError("train.mixup_alpha mixes images; set it to 0 for text models.")
    return cls(label_smoothing=float(t.label_smoothing))


def from_info(info: dict) -> Task:
    """The task of a finished run, from its data.json (for predict)."""
    cls = TASKS[info.get("task", ImageClassification.name)]
    if cls is ImageClassification:
        return cls(mean=tuple(info["mean"]), std=tuple(info["std"]))
    return cls()
