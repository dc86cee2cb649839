"""The pure, jitted pieces: TrainState, one train step, the chunk of steps one call runs, evaluation, predict.

Everything that differs between tasks (inputs, loss, evaluation sums) comes from the task object (tasks.py).
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from ptft_jax import lora


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any  # mutable collections such as {"batch_stats": ...}; {} when the model has none
    frozen: Any = None  # finetune.strategy=lora: {"scale", "base"}, what does not train (lora.py); never saved


def forward(model, params, model_state, x, train: bool, rng=None):
    """Logits (float32) and the updated mutable collections. `x`: what `task.inputs(batch)` gives."""
    variables = {"params": params, **model_state}
    rngs = {"dropout": rng} if (train and rng is not None) else None
    if train and model_state:
        logits, new_state = model.apply(variables, x, train=True, mutable=list(model_state), rngs=rngs)
        return logits.astype(jnp.float32), new_state
    return model.apply(variables, x, train=train, rngs=rngs).astype(jnp.float32), model_state


def make_train_step(model, tx: optax.GradientTransformation, task, seed: int, grad_accum: int = 1,
                    par=None, trainable=None) -> Callable:
    """One optimiser step on a batch. The step's key is `fold_in(fold_in(key(seed), 1), step)`: dropout and
    the task's mixing draw from it, so a resumed run draws the same numbers.

    `grad_accum` > 1 (train.grad_accum) splits the batch into that many micro-batches, run one after another in a
    `lax.scan` (the activations of one micro-batch live at a time) and adds their gradients, each weighted by its
    share of the loss (`_loss_weight`): without randomness and BatchNorm the step equals one on the whole batch.
    Micro-batch i draws from `fold_in(step key, i)`, so its dropout and mixup differ from the whole batch's (still
    deterministic); BatchNorm normalises each micro-batch by its own statistics and updates the running ones once
    per micro-batch. `par` (parallel.Parallel) keeps every micro-batch sharded on the `data` axis.

    `trainable` (optim.trainable: a tree of bools like the params) stops the gradient at the frozen leaves, so XLA
    computes no gradient for them (their optimiser sets the update to zero anyway): linear_probe then runs no
    backward pass through the backbone, bitfit none into its kernels."""
    base_key = jax.random.key(seed)

    def grads_of(params, model_state, batch, rng, frozen=None):
        x, lam = task.mix(task.inputs(batch), rng)
        frozen = jax.lax.stop_gradient(frozen)

        def loss_fn(params):
            if trainable is not None:
                params = jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, trainable)
            logits, new_model_state = forward(model, lora.merge(params, frozen), model_state, x, True, rng)
            loss, accuracy = task.loss(logits, batch, lam)
            return loss, (accuracy, new_model_state)

        (loss, (accuracy, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, accuracy, new_model_state, grads

    def accumulated(params, model_state, batch, rng, frozen):
        micro = _micro_batches(batch, grad_accum, par)
        weights = jax.vmap(_loss_weight)(micro)
        weights = weights / jnp.maximum(jnp.sum(weights), 1e-30)

        def body(carry, xs):
            grads_sum, loss_sum, acc_sum, model_state = carry
            i, w, mb = xs
            loss, accuracy, model_state, grads = grads_of(params, model_state, mb, jax.random.fold_in(rng, i), frozen)
            grads_sum = jax.tree.map(lambda g, a: a + w * g, grads, grads_sum)
            return (grads_sum, loss_sum + w * loss, acc_sum + w * accuracy, model_state), None

        zero = jnp.zeros((), jnp.float32)
        carry = (jax.tree.map(jnp.zeros_like, params), zero, zero, model_state)
        (grads, loss, accuracy, model_state), _ = jax.lax.scan(
            body, carry, (jnp.arange(grad_accum), weights, micro))
        return loss, accuracy, model_state, grads

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(jax.random.fold_in(base_key, 1), state.step)
        if grad_accum > 1:
            loss, accuracy, new_model_state, grads = accumulated(state.params, state.model_state, batch, rng,
                                                                 state.frozen)
        else:
            loss, accuracy, new_model_state, grads = grads_of(state.params, state.model_state, batch, rng,
                                                              state.frozen)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # A non-finite loss or gradient leaves the state as it was (the loop stops or counts it, by config).
        finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        metrics = {"loss": loss, "accuracy": accuracy, "nonfinite": (~finite).astype(jnp.int32)}
        new_state = TrainState(state.step + 1, keep(params, state.params), keep(opt_state, state.opt_state),
                               keep(new_model_state, state.model_state), state.frozen)
        return new_state, metrics

    return train_step


def _micro_batches(batch, n: int, par):
    """[B, ...] -> [n, B/n, ...], micro-batch i the rows i, i + n, i + 2n, ...: each device's rows (a contiguous
    block of the sharded batch axis) hold B/(n * devices) rows of every micro-batch, so no row moves between
    devices; the micro-batch axis is leading and the batch axis stays sharded on `data`."""
    def split(x):
        return jnp.moveaxis(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 1, 0)

    micro = jax.tree.map(split, batch)
    if par is not None:
        micro = jax.lax.with_sharding_constraint(micro, par.chunk_sharded)  # [n, B/n, ...]: P(None, "data")
    return micro


def _loss_weight(batch):
    """A micro-batch's share of the whole batch's loss: its masked positions for the masked-LM loss (a mean over
    them), else its rows (a mean over examples; the micro-batches are equal, so equal shares)."""
    if "masked_weights" in batch:
        return jnp.sum(batch["masked_weights"]).astype(jnp.float32)
    return jnp.asarray(jax.tree.leaves(batch)[0].shape[0], jnp.float32)


def memory_bytes(compiled) -> dict:
    """A compiled executable's memory estimate from XLA (`memory_analysis()`): arguments, outputs, temporaries
    and `total` = arguments + outputs + temporaries - the outputs aliased to donated arguments (the state is
    donated, so its new value reuses the old one's buffers). None where the backend gives no analysis."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    out = {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
           "temporaries": int(m.temp_size_in_bytes), "aliased": int(m.alias_size_in_bytes)}
    out["total"] = out["arguments"] + out["outputs"] + out["temporaries"] - out["aliased"]
    return out


def step_memory(jitted, *args) -> dict:
    """{"step_memory_bytes": `memory_bytes(...)["total"]`} of a jitted function at these arguments' shapes and
    shardings, for the first train line of metrics.jsonl; {} where it cannot be had cheaply. After a call with the
    same (committed, as the data feed's are) arrays it costs one trace and no compile: jax caches the executable the
    call compiled. It reads only shapes, so donated (deleted) arguments are fine. Uncommitted or NumPy arguments
    would miss that cache and compile the function again, so then it gives {}."""
    leaves = jax.tree.leaves(args)
    if not all(isinstance(x, jax.Array) and x.committed for x in leaves):
        return {}
    specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), args)
    m = memory_bytes(jitted.lower(*specs).compile())
    return {} if m is None else {"step_memory_bytes": m["total"]}


def _scan(body, carry, xs):
    """lax.scan over the leading axis, or the body once when it has length 1 (XLA's CPU backend runs convolutions
    inside a loop about 20x slower)."""
    if jax.tree.leaves(xs)[0].shape[0] == 1:
        carry, out = body(carry, jax.tree.map(lambda x: x[0], xs))
        return carry, jax.tree.map(lambda x: x[None], out)
    return jax.lax.scan(body, carry, xs)


def make_chunk_fn(train_step, par):
    """The one jitted call of the loop: `chunk(state, inputs) -> (state, metrics [K])`, where `inputs` is what
    the data feed hands over: {"batches": [K, B, ...]} from the host, or {"data": the split on the devices,
    "idx": [K, B] indices into it}. The state is donated."""
    def chunk(state, inputs):
        if "batches" in inputs:
            return _scan(train_step, state, inputs["batches"])
        data = inputs["data"]

        def body(state, i):
            batch = jax.lax.with_sharding_constraint({k: v[i] for k, v in data.items()}, par.batch_sharded)
            return train_step(state, batch)
        return _scan(body, state, inputs["idx"])

    return jax.jit(chunk, out_shardings=(par.replicated, par.replicated), donate_argnums=(0,))


def make_eval_fn(model, task, par):
    """The jitted evaluation of one call: `evaluate(state, inputs) -> sums`, with `inputs` {"batch": a padded
    batch with its `mask`} from the host, or {"data": the split on the devices, "idx", "mask": [n_batches, B]}:
    every batch's sums added in batch order, as the host loop adds them."""
    def sums(state, batch):
        logits, _ = forward(model, lora.merge(state.params, state.frozen), state.model_state, task.inputs(batch),
                            False)
        return task.eval_sums(logits, batch)

    def evaluate(state, inputs):
        if "batch" in inputs:
            return sums(state, inputs["batch"])
        data = inputs["data"]

        def body(totals, xs):
            batch = {k: v[xs[0]] for k, v in data.items()}
            out = sums(state, jax.lax.with_sharding_constraint({**batch, "mask": xs[1]}, par.batch_sharded))
            return (out if totals is None else jax.tree.map(jnp.add, totals, out)), None

        idx, mask = inputs["idx"], inputs["mask"]
        first, _ = body(None, (idx[0], mask[0]))
        return jax.lax.scan(body, first, (idx[1:], mask[1:]))[0] if idx.shape[0] > 1 else first

    return jax.jit(evaluate, out_shardings=par.replicated)


def make_predict_fn(model, task):
    """predict(params, model_state, batch, frozen=None) -> class probabilities; `batch` from
    `task.predict_inputs(...).read`; `frozen`: a LoRA run's base (lora.read_base)."""
    @jax.jit
    def predict(params, model_state, batch, frozen=None):
        logits, _ = forward(model, lora.merge(params, frozen), model_state, task.inputs(batch), False)
        return jax.nn.softmax(logits, -1)

    return predict
