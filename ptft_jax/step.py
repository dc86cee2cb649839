"""The pure, jitted pieces: TrainState, one train step, a scanned chunk of steps, one eval step.

Inputs arrive as uint8 images and are normalised inside the step, so the host ships a quarter of the bytes
and the host and device-resident paths compute exactly the same thing.
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


def preprocess(image, mean, std):
    x = image.astype(jnp.float32) * (1.0 / 255.0)
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def forward(model, params, model_state, x, train: bool, rng=None):
    """Logits (float32) and the updated mutable collections."""
    variables = {"params": params, **model_state}
    rngs = {"dropout": rng} if (train and rng is not None) else None
    if train and model_state:
        logits, new_state = model.apply(variables, x, train=True, mutable=list(model_state), rngs=rngs)
        return logits.astype(jnp.float32), new_state
    return model.apply(variables, x, train=train, rngs=rngs).astype(jnp.float32), model_state


def make_train_step(model, tx: optax.GradientTransformation, mean, std, seed: int,
                    label_smoothing: float = 0.0, mixup_alpha: float = 0.0) -> Callable:
    """One step. `label_smoothing`: targets (1 - x) one-hot + x / classes. `mixup_alpha` > 0: the batch is mixed
    with its reverse, images and targets, by a weight ~ Beta(alpha, alpha) drawn from the step's key."""
    base_key = jax.random.key(seed)

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(jax.random.fold_in(base_key, 1), state.step)
        x = preprocess(batch["image"], mean, std)
        labels = batch["label"]
        lam = None
        if mixup_alpha:
            lam = jax.random.beta(jax.random.fold_in(rng, 1), mixup_alpha, mixup_alpha)
            x = lam * x + (1.0 - lam) * x[::-1]

        def loss_fn(params):
            logits, new_model_state = forward(model, params, state.model_state, x, True, rng)
            if not label_smoothing and lam is None:
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            else:
                targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
                if lam is not None:
                    targets = lam * targets + (1.0 - lam) * targets[::-1]
                loss = optax.softmax_cross_entropy(logits, targets).mean()
            return loss, (logits, new_model_state)

        (loss, (logits, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # A non-finite loss or gradient leaves the state as it was (the loop stops or counts it, by config).
        finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
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
    def host_chunk(state, batches):
        return jax.lax.scan(train_step, state, batches)

    def resident_chunk(state, data, idx):
        def body(state, i):
            batch = {k: v[i] for k, v in data.items()}
            batch = jax.lax.with_sharding_constraint(batch, par.batch)
            return train_step(state, batch)
        return jax.lax.scan(body, state, idx)

    shard = dict(out_shardings=(par.replicated, par.replicated), donate_argnums=(0,))
    return jax.jit(host_chunk, **shard), jax.jit(resident_chunk, **shard)


def make_eval_step(model, mean, std, par):
    def eval_step(state: TrainState, batch):
        logits, _ = forward(model, state.params, state.model_state, preprocess(batch["image"], mean, std), False)
        mask = batch["mask"]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return {"loss": jnp.sum(loss * mask), "correct": jnp.sum(correct * mask), "count": jnp.sum(mask)}

    return jax.jit(eval_step, out_shardings=par.replicated)


def make_predict_fn(model, mean, std):
    @jax.jit
    def predict(params, model_state, image):
        logits, _ = forward(model, params, model_state, preprocess(image, mean, std), False)
        return jax.nn.softmax(logits, -1)

    return predict
