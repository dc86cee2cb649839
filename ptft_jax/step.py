"""The pure, jitted pieces: TrainState, one train step, a scanned chunk of steps, one eval step.

The model's name decides the task (`task_for`):
  classify_image  batches {"image": uint8, "label"}; images are normalised inside the step, so the host ships a
                  quarter of the bytes and the host and device-resident paths compute exactly the same thing
  classify_text   (bert) batches {"input_ids", "token_type_ids", "attention_mask", "label"}, passed as they are
  mlm             (bert_mlm) batches {"input_ids", "token_type_ids", "attention_mask", "masked_positions",
                  "masked_labels", "masked_weights"}; the decoder runs at the masked positions only; loss is the
                  weighted mean cross-entropy there (float32), accuracy the weighted fraction predicted right
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any  # mutable collections such as {"batch_stats": ...}; {} when the model has none


TEXT_MODELS = {"bert": "classify_text", "bert_mlm": "mlm"}
TASKS = ("classify_image", "classify_text", "mlm")
_TEXT_KEYS = ("input_ids", "token_type_ids", "attention_mask")


def task_for(model_name) -> str:
    return TEXT_MODELS.get(str(model_name), "classify_image")


def preprocess(image, mean, std):
    x = image.astype(jnp.float32) * (1.0 / 255.0)
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def model_inputs(batch, task: str, mean=(), std=()):
    """What the model is called with: normalised images, or the dict of BERT inputs."""
    if task == "classify_image":
        return preprocess(batch["image"], mean, std)
    keys = _TEXT_KEYS + (("masked_positions",) if task == "mlm" else ())
    return {k: batch[k] for k in keys}


def _mlm_metrics(logits, batch, weights):
    """(sum of weighted cross-entropy, sum of weighted correct) over the masked positions."""
    labels = batch["masked_labels"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return jnp.sum(loss * weights), jnp.sum(correct * weights)


def forward(model, params, model_state, x, train: bool, rng=None):
    """Logits (float32) and the updated mutable collections. `x`: images, or the batch dict of a BERT model."""
    variables = {"params": params, **model_state}
    rngs = {"dropout": rng} if (train and rng is not None) else None
    if train and model_state:
        logits, new_state = model.apply(variables, x, train=True, mutable=list(model_state), rngs=rngs)
        return logits.astype(jnp.float32), new_state
    return model.apply(variables, x, train=train, rngs=rngs).astype(jnp.float32), model_state


def make_train_step(model, tx: optax.GradientTransformation, mean, std, seed: int,
                    label_smoothing: float = 0.0, mixup_alpha: float = 0.0, task: str = "classify_image") -> Callable:
    """One step. `label_smoothing`: targets (1 - x) one-hot + x / classes. `mixup_alpha` > 0: the batch is mixed
    with its reverse, images and targets, by a weight ~ Beta(alpha, alpha) drawn from the step's key (images
    only). For mlm both are unused."""
    base_key = jax.random.key(seed)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; one of {TASKS}")

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(jax.random.fold_in(base_key, 1), state.step)
        x = model_inputs(batch, task, mean, std)
        labels = batch.get("label")
        lam = None
        if mixup_alpha and task == "classify_image":
            lam = jax.random.beta(jax.random.fold_in(rng, 1), mixup_alpha, mixup_alpha)
            x = lam * x + (1.0 - lam) * x[::-1]

        def loss_fn(params):
            logits, new_model_state = forward(model, params, state.model_state, x, True, rng)
            if task == "mlm":
                weights = batch["masked_weights"]
                n = jnp.maximum(jnp.sum(weights), 1.0)
                loss_sum, correct_sum = _mlm_metrics(logits, batch, weights)
                return loss_sum / n, (correct_sum / n, new_model_state)
            if not label_smoothing and lam is None:
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            else:
                targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
                if lam is not None:
                    targets = lam * targets + (1.0 - lam) * targets[::-1]
                loss = optax.softmax_cross_entropy(logits, targets).mean()
            return loss, (jnp.mean(jnp.argmax(logits, -1) == labels), new_model_state)

        (loss, (accuracy, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # A non-finite loss or gradient leaves the state as it was (the loop stops or counts it, by config).
        finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        metrics = {"loss": loss, "accuracy": accuracy,
                   "nonfinite": (~finite).astype(jnp.int32)}
        new_state = TrainState(state.step + 1, keep(params, state.params), keep(opt_state, state.opt_state),
                               keep(new_model_state, state.model_state))
        return new_state, metrics

    return train_step


def make_chunk_fns(train_step, par):
    """Jitted calls that run a chunk of steps with `lax.scan`.

    `host_chunk(state, batches)`: batches [K, B, ...] sharded on B.
    `resident_chunk(state, data, idx)`: data = the whole split on the devices, idx [K, B] indices into it.
    """
    def scan(body, state, xs):
        if jax.tree.leaves(xs)[0].shape[0] == 1:  # one step: no loop (XLA's CPU loops slow convolutions ~20x)
            state, m = body(state, jax.tree.map(lambda x: x[0], xs))
            return state, jax.tree.map(lambda x: x[None], m)
        return jax.lax.scan(body, state, xs)

    def host_chunk(state, batches):
        return scan(train_step, state, batches)

    def resident_chunk(state, data, idx):
        def body(state, i):
            batch = {k: v[i] for k, v in data.items()}
            batch = jax.lax.with_sharding_constraint(batch, par.batch)
            return train_step(state, batch)
        return scan(body, state, idx)

    shard = dict(out_shardings=(par.replicated, par.replicated), donate_argnums=(0,))
    return jax.jit(host_chunk, **shard), jax.jit(resident_chunk, **shard)


def make_eval_step(model, mean, std, par, task: str = "classify_image"):
    """Sums over a padded batch (`mask` 0 on padding rows): loss, correct and count, count being examples, or
    masked tokens for mlm; classification also sums per-class tp / fp / fn [C] for F1."""
    return jax.jit(_eval_fn(model, mean, std, task), out_shardings=par.replicated)


def make_resident_eval(model, mean, std, par, task: str = "classify_image"):
    """The whole evaluation in one call: `evaluate(state, data, idx, mask)` with the split on the devices, idx and
    mask [n_batches, B]; sums the per-batch results of make_eval_step in batch order, as the host loop does."""
    eval_step = _eval_fn(model, mean, std, task)

    def evaluate(state, data, idx, mask):
        def body(totals, xs):
            batch = {k: v[xs[0]] for k, v in data.items()}
            batch = jax.lax.with_sharding_constraint({**batch, "mask": xs[1]}, par.batch)
            out = eval_step(state, batch)
            return (out if totals is None else jax.tree.map(jnp.add, totals, out)), None

        first, _ = body(None, (idx[0], mask[0]))
        return jax.lax.scan(body, first, (idx[1:], mask[1:]))[0] if idx.shape[0] > 1 else first

    return jax.jit(evaluate, out_shardings=par.replicated)


def _eval_fn(model, mean, std, task):
    def eval_step(state: TrainState, batch):
        logits, _ = forward(model, state.params, state.model_state, model_inputs(batch, task, mean, std), False)
        mask = batch["mask"]
        if task == "mlm":
            weights = batch["masked_weights"] * mask[:, None]
            loss, correct = _mlm_metrics(logits, batch, weights)
            return {"loss": loss, "correct": correct, "count": jnp.sum(weights)}
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        pred = jnp.argmax(logits, -1)
        correct = (pred == batch["label"]).astype(jnp.float32)
        # per-class true positives, false positives and false negatives, for F1 (metrics.f1_scores)
        p1, l1 = (jax.nn.one_hot(v, logits.shape[-1]) * mask[:, None] for v in (pred, batch["label"]))
        return {"loss": jnp.sum(loss * mask), "correct": jnp.sum(correct * mask), "count": jnp.sum(mask),
                "tp": jnp.sum(p1 * l1, 0), "fp": jnp.sum(p1 * (1 - l1), 0), "fn": jnp.sum((1 - p1) * l1, 0)}

    return eval_step


def make_predict_fn(model, mean, std, task: str = "classify_image"):
    """predict(params, model_state, inputs) -> probabilities; inputs: uint8 images, or for classify_text the dict
    of input_ids / token_type_ids / attention_mask."""
    @jax.jit
    def predict(params, model_state, inputs):
        x = preprocess(inputs, mean, std) if task == "classify_image" else model_inputs(inputs, task)
        logits, _ = forward(model, params, model_state, x, False)
        return jax.nn.softmax(logits, -1)

    return predict
