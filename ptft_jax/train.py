"""The one training loop for pretraining and fine-tuning: `train(config, workdir)` and `evaluate(config, workdir)`."""
from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ptft_jax import data as data_lib
from ptft_jax import compile_cache, models, optim
from ptft_jax.checkpoint import Checkpoints
from ptft_jax.config import defaults, flatten, to_json, validate
from ptft_jax.errors import CheckpointError, ConfigError, Diverged, Interrupted
from ptft_jax.metrics import Console, MetricsFile, f1_scores, is_main, params_by_module, plot_curves
from ptft_jax.parallel import Parallel, StopRequest
from ptft_jax.step import (TrainState, make_chunk_fns, make_eval_step, make_resident_eval, make_train_step,
                           task_for)

# Config keys a resumed run may change; any other difference means the workdir holds another run.
RESUMABLE_CHANGES = ("train.epochs", "train.steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
                     "train.keep", "train.steps_per_call", "train.compile_cache", "train.checkpoint_min_secs",
                     "data.data_dir", "data.in_memory", "data.device_resident", "data.device_budget_mb",
                     "data.num_threads", "data.prefetch", "data.device_prefetch", "data.eval_batch_size")


@dataclasses.dataclass
class Run:
    """Everything built from a config before the loop starts."""
    config: object
    workdir: str
    par: Parallel
    ds: data_lib.Dataset
    model: object
    tx: object
    order: data_lib.EpochOrder
    total_steps: int
    steps_per_epoch: int
    ckpt: Checkpoints
    metrics: MetricsFile
    task: str = "classify_image"  # see step.py


def setup(config, workdir: str, log=print) -> Run:
    config = validate(config)
    workdir = os.path.abspath(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"Cannot create the workdir {workdir} ({e.strerror}); choose a writable --workdir.") from e
    if not os.access(workdir, os.W_OK):
        raise ConfigError(f"The workdir {workdir} is not writable; choose a writable --workdir.")
    d, t = config.data, config.train
    for key, value, allowed in (("train.on_nonfinite", t.on_nonfinite, ("stop", "skip")),
                                ("data.in_memory", str(d.in_memory).lower(), ("auto", "true", "false")),
                                ("data.device_resident", str(d.device_resident).lower(), ("auto", "true", "false"))):
        if value not in allowed:
            raise ConfigError(f"{key} is {value!r}; use one of: {', '.join(allowed)}.")
    compile_cache.enable(t.compile_cache)
    par = Parallel()
    par.check_batch(d.batch_size)
    par.check_batch(d.eval_batch_size, "data.eval_batch_size")
    task = task_for(config.model.name)
    if task != "classify_image" and t.mixup_alpha:
        raise ConfigError("train.mixup_alpha mixes images; set it to 0 for text models.")
    ds = data_lib.load(d, log=log, task=task, workdir=workdir, init_from=config.init_from)
    model = models.build(config.model, ds.num_classes, vocab_size=ds.text["vocab_size"] if ds.text else None)
    order = data_lib.EpochOrder(len(ds.train), d.batch_size, t.seed)
    steps_per_epoch = order.steps_per_epoch
    total = int(t.steps) if t.steps is not None else int(round(t.epochs * steps_per_epoch))
    if total <= 0:
        raise ConfigError("train.steps / train.epochs give no training steps; set a positive duration.")
    params_shape = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy_input(ds)))["params"]
    tx = optim.build(config.optim, total, config.finetune, params_shape, steps_per_epoch=steps_per_epoch)
    ckpt = Checkpoints(os.path.join(workdir, "checkpoints"), keep=t.keep)
    return Run(config, workdir, par, ds, model, tx, order, total, steps_per_epoch, ckpt,
               MetricsFile(os.path.join(workdir, "metrics.jsonl")), task)


def dummy_input(ds):
    """A one-example model input for init: a zero image, or the text dataset's example batch."""
    if ds.example is not None:
        return {k: jnp.asarray(v) for k, v in ds.example.items()}
    return jnp.zeros((1, *ds.image_shape), jnp.float32)


def _check_same_run(config, workdir):
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = flatten(json.load(f))
    new = flatten(json.loads(to_json(config)))
    # Keys the old run did not have (added to ptft_jax since) count as unchanged when they hold their default.
    base = flatten(json.loads(to_json(validate(defaults()))))
    diff = sorted(k for k in set(old) | set(new) if old.get(k, base.get(k)) != new.get(k)
                  and k not in RESUMABLE_CHANGES)
    if diff:
        raise CheckpointError(
            f"The workdir {workdir} holds a run with a different config ({', '.join(diff[:5])} differ); "
            f"use a new --workdir to start another run, or --allow_config_change to resume with the new config.")


def init_state(run: Run) -> TrainState:
    """A fresh state: params from the seed, optimiser state from the params, all replicated."""
    x = dummy_input(run.ds)

    def init(key):
        variables = run.model.init({"params": key, "dropout": key}, x, train=False)
        params = variables["params"]
        model_state = {k: v for k, v in variables.items() if k != "params"}
        return TrainState(jnp.zeros((), jnp.int32), params, run.tx.init(params), model_state)

    key = jax.random.fold_in(jax.random.key(run.config.train.seed), 0)
    return jax.jit(init, out_shardings=run.par.replicated)(key)


def restore_or_init(run: Run, log=print) -> TrainState:
    """Resumes from the newest checkpoint that restores (damaged newer ones are set aside), else grafts from
    `init_from`, else starts fresh."""
    state = init_state(run)
    steps = sorted(run.ckpt.all_steps(), reverse=True)
    failed = []
    for step in steps:
        try:
            restored = run.ckpt.restore(step, state)
        except CheckpointError as e:
            failed.append((step, e))
            continue
        for bad, e in failed:  # newer checkpoints that did not restore while an older one did: damaged
            moved = run.ckpt.set_aside(bad)
            log(f"warning: checkpoint step {bad} is damaged ({str(e.__cause__ or e)[:200]}); moved it to {moved}")
        log(f"resuming from {run.ckpt.directory}/{step}")
        run.metrics.truncate_after(step)
        return restored
    if failed:
        raise failed[0][1]
    run.metrics.truncate_after(0)  # lines of an attempt killed before its first checkpoint
    if run.config.init_from:
        from ptft_jax.graft import graft_into_state
        state = graft_into_state(run, state, log=log)
    return state


def evaluate_state(run: Run, state, eval_step=None, resident=None) -> dict:
    """Test metrics of `state`: batch by batch from the host, or with `resident` = (make_resident_eval's function,
    the test split on the devices) in one call over the same batches."""
    bs = run.config.data.eval_batch_size
    rows = run.par.local_rows(bs)
    if resident is not None:
        evaluate, data = resident
        idx, mask = data_lib.eval_indices(len(run.ds.test), bs)
        totals = evaluate(state, data, *(run.par.global_array(a[:, rows], run.par.chunk, batch_axis=1)
                                         for a in (idx, mask)))
    else:
        eval_step = eval_step or make_eval_step(run.model, run.ds.mean, run.ds.std, run.par, run.task)
        totals = None
        for batch in data_lib.eval_batches(run.ds.test, bs, rows):
            batch = {k: run.par.global_array(v, run.par.batch) for k, v in batch.items()}
            out = eval_step(state, batch)
            if run.par.sync_each_call:
                jax.block_until_ready(out)
            totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = jax.device_get(totals)
    n = float(totals["count"])
    out = {"loss": float(totals["loss"]) / n, "accuracy": float(totals["correct"]) / n}
    if "tp" in totals:
        out.update(f1_scores(totals["tp"], totals["fp"], totals["fn"]))
    return {**out, "examples": int(n)}


def _scores(ev: dict) -> dict:
    """The metrics of an evaluation worth logging: loss, accuracy and F1 where computed."""
    return {k: v for k, v in ev.items() if k != "examples"}


def _describe(ev: dict) -> str:
    return " | ".join(f"test {k.replace('_', ' ')} {v:.4f}" for k, v in _scores(ev).items())


def _use_resident(run: Run) -> bool:
    if run.config.data.augment or run.task == "mlm":
        return False  # augmentation and masked-LM masking run in the host pipeline only
    mode = str(run.config.data.device_resident).lower()
    arrays = run.ds.train.arrays
    if mode == "false" or arrays is None:
        if mode == "true" and arrays is None:
            raise ConfigError("data.device_resident=true needs the training split in memory; set data.in_memory=true.")
        return False
    return _fits(run, arrays)


def _fits(run: Run, *splits) -> bool:
    """Whether these splits' arrays go on the devices: data.device_resident=true, or within data.device_budget_mb."""
    nbytes = sum(v.nbytes for split in splits for v in split.values())
    return str(run.config.data.device_resident).lower() == "true" or nbytes <= run.config.data.device_budget_mb * 2**20


def _resident_test(run: Run, train_resident: bool) -> bool:
    """Whether the test split goes on the devices, to be evaluated in one call: in memory, not masked-LM (masked
    on the host), device residency not turned off, and within the budget along with a resident training split.
    Evaluation never augments, so an augmented (host-fed) training split does not keep its test split off."""
    test = run.ds.test.arrays
    off = str(run.config.data.device_resident).lower() == "false"
    if test is None or not len(run.ds.test) or run.task == "mlm" or off:
        return False
    return _fits(run, run.ds.train.arrays, test) if train_resident else _fits(run, test)


def _call_sizes(n: int, per_call: int) -> list[int]:
    """Splits n steps into calls of `per_call` steps, the rest in powers of two (few distinct compiled sizes)."""
    sizes = [per_call] * (n // per_call)
    rest = n % per_call
    bit = 1 << max(rest.bit_length() - 1, 0)
    while rest:
        if rest >= bit:
            sizes.append(bit)
            rest -= bit
        bit >>= 1
    return sizes


def _next_boundary(step: int, every: int | None, total: int) -> int:
    if not every:
        return total
    return min(total, (step // every + 1) * every)


HOST_CHUNK_BYTES = 256 << 20  # the most host batches one call takes (stacked on the host and put on the devices)


def _default_per_call(run: Run, params, resident: bool) -> int:
    """train.log_every steps per call, except: 1 for a model with convolutions on the CPU backend (XLA's CPU
    backend runs convolutions inside a loop, lax.scan, about 20x slower than outside one: measured on ResNet-18,
    1.50 s against 0.08 s a step, which outweighs the dispatch a loop saves); and on the host path no more steps
    than fit HOST_CHUNK_BYTES (an ImageNet batch of 1024 is 154 MB: one step a call), rounded down to a power of
    two, since every call's batches are held twice, on the host and on the devices."""
    if jax.default_backend() == "cpu" and any(
            getattr(p[-1], "key", None) == "kernel" and leaf.ndim >= 4
            for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]):
        return 1
    per_call = run.config.train.log_every
    if not resident:
        cfg = run.config.data
        if run.ds.example is not None:  # text: the batch arrays (masked-LM adds a few small ones)
            example = sum(np.asarray(v).nbytes for v in run.ds.example.values())
        else:
            shape = run.ds.image_shape if not cfg.image_size else (cfg.image_size, cfg.image_size,
                                                                   run.ds.image_shape[-1])
            example = int(np.prod(shape)) + 4
        per_call = _host_chunk_steps(example * (cfg.batch_size // run.par.process_count), per_call)
    return per_call


def _host_chunk_steps(batch_bytes: int, per_call: int) -> int:
    fits = HOST_CHUNK_BYTES // max(1, batch_bytes)
    if fits >= per_call:
        return per_call
    return 1 << max(0, int(fits).bit_length() - 1)


def _next_stop(step: int, total: int, per_call: int, every) -> int:
    """The end of the calls from `step`: the nearest log / eval / checkpoint boundary, at most per_call away."""
    return min([step + per_call] + [_next_boundary(step, e, total) for e in every])


def _call_plan(start: int, total: int, per_call: int, every):
    """(first step, k, whether it ends at a boundary) of every jitted call from `start` to `total`: the calls the
    loop makes and the feed thread prepares."""
    step = start
    while step < total:
        stop = _next_stop(step, total, per_call, every)
        for k in _call_sizes(stop - step, per_call):
            yield step, k, step + k == stop
            step += k


def _check_finite(call):
    """Raises Diverged when a step of `call` = (its first step, its metrics) had a non-finite loss or gradient.
    Those steps left the state as it was, and nothing after them is saved: the last checkpoint stays intact."""
    if call is None:
        return
    first, m = call
    bad = np.asarray(jax.device_get(m["nonfinite"]))
    if bad.any():
        at = first + int(np.argmax(bad)) + 1
        raise Diverged(f"The loss or gradient became non-finite at step {at}; the run stopped without saving that "
                       f"state (the last checkpoint is intact): lower optim.lr, set optim.clip_norm, or set "
                       f"train.on_nonfinite=skip to skip such steps.")


def train(config, workdir: str, log=print, allow_config_change: bool = False) -> dict:
    """Trains (pretraining or fine-tuning, by config) and returns the final test metrics.

    Rerunning with the same workdir resumes from the latest checkpoint; a workdir holding a run of another config is
    refused unless `allow_config_change`. SIGTERM/SIGINT save a checkpoint and raise `Interrupted`.
    """
    log = log if is_main() else (lambda *_: None)
    run = setup(config, workdir, log=log)
    cfg, t, par = run.config, run.config.train, run.par
    if not allow_config_change:
        _check_same_run(cfg, run.workdir)
    state = restore_or_init(run, log=log)
    if is_main():
        from ptft_jax.predict import data_info
        with open(os.path.join(run.workdir, "config.json"), "w") as f:
            f.write(to_json(cfg))
        with open(os.path.join(run.workdir, "data.json"), "w") as f:
            json.dump(data_info(run.ds), f, indent=2)
    start = int(state.step)
    nparams = models.count_params(state.params)
    log(f"model {cfg.model.name}: {nparams:,} params ({params_by_module(state.params)}) | data {run.ds.name}: {len(run.ds.train)} train, "
        f"{len(run.ds.test)} test | {par.describe()} | {run.total_steps} steps "
        f"({run.steps_per_epoch}/epoch, batch {cfg.data.batch_size}) | checkpoints in {run.ckpt.directory}")
    if start >= run.total_steps:
        log(f"already finished: step {start} of {run.total_steps} in {run.workdir}")
        done = [m for m in run.metrics.read() if m["split"] == "test" and m["step"] == start]
        result = done[-1] if done else {"step": start, **evaluate_state(run, state)}
        run.ckpt.close()
        return result

    train_step = make_train_step(run.model, run.tx, run.ds.mean, run.ds.std, t.seed, t.label_smoothing, t.mixup_alpha,
                                 task=run.task)
    host_chunk, resident_chunk = make_chunk_fns(train_step, par)
    eval_step = make_eval_step(run.model, run.ds.mean, run.ds.std, par, run.task)
    resident = _use_resident(run)
    rows = par.local_rows(cfg.data.batch_size)
    spe = run.steps_per_epoch
    eval_every = t.eval_every or spe
    ckpt_every = t.checkpoint_every or spe
    every = (t.log_every, eval_every, ckpt_every)
    per_call = t.steps_per_call or _default_per_call(run, state.params, resident)
    feed = None
    resident_eval = None
    if _resident_test(run, resident):  # evaluation in one call
        resident_eval = (make_resident_eval(run.model, run.ds.mean, run.ds.std, par, run.task),
                         {k: par.replicate(v) for k, v in run.ds.test.arrays.items()})
    if resident:
        device_data = {k: par.replicate(v) for k, v in run.ds.train.arrays.items()}
    else:
        batches = data_lib.host_batches(run.ds.train, run.order, start, run.total_steps, rows,
                                        cfg.data.num_threads, cfg.data.prefetch,
                                        augment=data_lib.train_transform(run.ds, cfg.data, t.seed))
        plan = ((s, k) for s, k, _ in _call_plan(start, run.total_steps, per_call, every))
        feed = data_lib.DeviceFeed(batches, plan, lambda stacked: {
            key: par.global_array(v, par.chunk, batch_axis=1) for key, v in stacked.items()},
            depth=cfg.data.device_prefetch)
    log(f"input: {'device-resident split, indices per call' if resident else 'host pipeline (grain), prefetched'}"
        f" | {per_call} step(s) per call")
    console = Console(run.total_steps, start)
    step, last_log_step, last_log_time = start, start, time.perf_counter()
    pending, skipped, unchecked = [], 0, None
    t_start = last_save = time.perf_counter()
    stopper = StopRequest()
    try:
        for _, k, at_boundary in _call_plan(start, run.total_steps, per_call, every):
            if resident:
                idx = par.global_array(run.order.chunk(step, k)[:, rows], par.chunk, batch_axis=1)
                state, m = resident_chunk(state, device_data, idx)
            else:
                state, m = host_chunk(state, feed.next(step, k))
            if par.sync_each_call:
                jax.block_until_ready(m)
            if t.on_nonfinite == "stop":
                # read the previous call's flags only now, with this call already queued behind it, so that the
                # device never idles on this check; the boundary below checks the last call
                _check_finite(unchecked)
                unchecked = (step, m)
            pending.append(m)
            step += k
            if not at_boundary:
                continue
            _check_finite(unchecked)  # before anything is logged, evaluated or saved
            unchecked = None
            if stopper.requested():
                run.ckpt.save(step, state, force=True)
                run.ckpt.wait()
                console.close()
                raise Interrupted(f"Stopped by {stopper.signal_name} at step {step}; a checkpoint was saved in "
                                  f"{run.ckpt.directory}: rerun the same command to resume.", stopper.signum)
            if step % t.log_every == 0 or step == run.total_steps:
                ms = jax.device_get(pending)
                pending = []
                loss = float(np.mean(np.concatenate([x["loss"] for x in ms])))
                acc = float(np.mean(np.concatenate([x["accuracy"] for x in ms])))
                skipped += int(np.sum(np.concatenate([x["nonfinite"] for x in ms])))
                now = time.perf_counter()
                rate = (step - last_log_step) / max(now - last_log_time, 1e-9)
                last_log_step, last_log_time = step, now
                run.metrics.write(step, "train", loss=loss, accuracy=acc, steps_per_s=rate, skipped_steps=skipped)
                console.update(step, rate, loss=loss, acc=acc)
            if step % eval_every == 0 and step < run.total_steps:
                ev = evaluate_state(run, state, eval_step, resident_eval)
                run.metrics.write(step, "test", **_scores(ev))
                console.line(f"step {step}: {_describe(ev)}")
            if step == run.total_steps or (step % ckpt_every == 0 and (
                    t.checkpoint_every or par.agree(time.perf_counter() - last_save >= t.checkpoint_min_secs))):
                run.ckpt.save(step, state, force=step == run.total_steps)
                last_save = time.perf_counter()
        console.close()
        ev = evaluate_state(run, state, eval_step, resident_eval)
        run.metrics.write(step, "test", **_scores(ev))
        run.ckpt.wait()
    finally:
        if feed is not None:
            feed.close()
        stopper.restore()
        console.close()
        run.ckpt.close()
        run.metrics.close()
        plot_curves(run.metrics.path, os.path.join(run.workdir, "curves.png"))
    elapsed = time.perf_counter() - t_start
    log(f"done: step {step} | {_describe(ev)} | {(step - start) / elapsed:.1f} steps/s over {elapsed:.1f}s | "
        f"{run.workdir}")
    return {"step": step, "split": "test", **_scores(ev)}


def evaluate(config, workdir: str, step: int | None = None, log=print) -> dict:
    """Evaluates a checkpoint of the run in `workdir` (default: the latest) on the test split."""
    run = setup(config, workdir, log=log)
    try:
        step = step if step is not None else run.ckpt.latest_step()
        if step is None:
            raise CheckpointError(f"No checkpoint in {run.ckpt.directory}; train first with the same --workdir.")
        state = run.ckpt.restore(step, init_state(run))
        ev = evaluate_state(run, state)
    finally:
        run.ckpt.close()
    log(f"evaluate: step {step} | {_describe(ev)}")
    return {"step": step, "split": "test", **ev}
