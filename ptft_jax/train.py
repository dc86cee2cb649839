"""The one training loop for pretraining and fine-tuning: `train(config, workdir)` and `evaluate(config, workdir)`.

    launch.py -> train() (this file) -> step.make_train_step (the jitted step) -> models.build (the model)

Where the data lives and how many steps one call runs is the data feed's business (data/feed.py); what the
model computes per task is tasks.py's; the loop checks, stops, logs, evaluates and saves.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ptft_jax import compile_cache, models, optim, tasks
from ptft_jax.checkpoint import Checkpoints, InitFrom
from ptft_jax.config import Durations, defaults, durations, flatten, to_json, validate
from ptft_jax.data.feed import Evaluator, Feed, test_resident, train_resident
from ptft_jax.data.pipeline import EpochOrder
from ptft_jax.errors import CheckpointError, ConfigError, Diverged, Interrupted
from ptft_jax.files import write_json, write_text
from ptft_jax.graft import graft
from ptft_jax.metrics import Console, MetricsFile, is_main, params_by_module, plot_curves
from ptft_jax.parallel import Parallel, StopRequest
from ptft_jax.step import TrainState, make_chunk_fn, make_eval_fn, make_train_step

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
    task: tasks.Task
    ds: object
    model: object
    tx: object
    order: EpochOrder
    steps: Durations
    ckpt: Checkpoints
    metrics: MetricsFile
    init_from: InitFrom | None


def build_run(config, workdir: str, log=print) -> Run:
    config = validate(config)
    init_from = InitFrom.parse(config.init_from, config.init_step) if config.init_from else None
    workdir = _make_workdir(workdir)
    d, t = config.data, config.train
    compile_cache.enable(t.compile_cache)
    par = Parallel()
    par.check_batch(d.batch_size)
    par.check_batch(d.eval_batch_size, "data.eval_batch_size")
    if init_from is not None and init_from.model:
        config = _published_model(config, init_from, log)
    task = tasks.from_config(config)
    ds = task.load(d, workdir, init_from.tokenizer_dir if init_from else None, log)
    task = task.bind(ds)
    vocab_size = ds.tokenizer_info["vocab_size"] if ds.tokenizer_info else None
    model = models.build(config.model, ds.num_classes, vocab_size=vocab_size)
    order = EpochOrder(len(ds.train), d.batch_size, t.seed)
    steps = durations(config, order.steps_per_epoch)
    params_shape = jax.eval_shape(lambda: model.init(jax.random.key(0), task.init_inputs(ds)))["params"]
    tx = optim.build(config.optim, finetune=config.finetune, params=params_shape, durations=steps)
    ckpt = Checkpoints(os.path.join(workdir, "checkpoints"), keep=t.keep)
    return Run(config, workdir, par, task, ds, model, tx, order, steps, ckpt,
               MetricsFile(os.path.join(workdir, "metrics.jsonl")), init_from)


# Published weights fix the architecture; these they only suggest (a fine-tuning run may choose its own).
_OWN_CHOICE = ("dropout_rate", "attention_dropout_rate", "bn_unbiased_var")


def _published_model(config, init_from, log):
    """config.model with the fields published weights fix (sizes, depth) taken from them, so that config.json
    describes the model in full; where the config said otherwise, a line says which value won."""
    model = dict(config.model)
    for key, value in init_from.model.items():
        given = model.get(key)
        if key in _OWN_CHOICE and given is not None:
            continue
        if given is not None and given != value:
            log(f"model.{key}: {value!r} from {init_from.spec} (the config said {given!r})")
        model[key] = value
    config = config.copy_and_resolve_references()
    config.model = model
    return config


def _make_workdir(workdir: str) -> str:
    workdir = os.path.abspath(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"Cannot create the workdir {workdir} ({e.strerror}); choose a writable --workdir.") from e
    if not os.access(workdir, os.W_OK):
        raise ConfigError(f"The workdir {workdir} is not writable; choose a writable --workdir.")
    return workdir


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
    x = run.task.init_inputs(run.ds)

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
    failed = []
    for step in sorted(run.ckpt.all_steps(), reverse=True):
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
    return _graft(run, state, log) if run.init_from else state


def _graft(run: Run, state: TrainState, log) -> TrainState:
    """The fresh state with leaves grafted from `init_from` by `config.graft`; writes graft.json."""
    fresh = {"params": state.params, **state.model_state}
    variables, report = graft(jax.device_get(fresh), run.init_from, run.config.graft)
    variables = jax.tree.map(run.par.replicate, variables)
    params = variables.pop("params")
    if is_main():
        write_json(os.path.join(run.workdir, "graft.json"), report.to_dict(), indent=2)
    log(report.table())
    opt_state = jax.jit(run.tx.init, out_shardings=run.par.replicated)(params)
    return TrainState(state.step, params, opt_state, variables)


def _evaluator(run: Run, with_train_resident: bool) -> Evaluator:
    resident = test_resident(run.ds, run.task, run.config.data, with_train_resident)
    return Evaluator(make_eval_fn(run.model, run.task, run.par), run.ds, run.par, run.config.data, resident)


def _scores(ev: dict) -> dict:
    """The metrics of an evaluation worth logging: loss, accuracy and F1 where computed."""
    return {k: v for k, v in ev.items() if k != "examples"}


def _describe(ev: dict) -> str:
    return " | ".join(f"test {k.replace('_', ' ')} {v:.4f}" for k, v in _scores(ev).items())


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


class _TrainLog:
    """The train lines of metrics.jsonl and the console: means over the calls since the last line."""

    def __init__(self, run: Run, console: Console, start: int):
        self.run, self.console = run, console
        self.pending, self.skipped = [], 0
        self.last_step, self.last_time = start, time.perf_counter()

    def add(self, metrics):
        self.pending.append(metrics)

    def write(self, step: int):
        ms, self.pending = jax.device_get(self.pending), []
        loss = float(np.mean(np.concatenate([m["loss"] for m in ms])))
        acc = float(np.mean(np.concatenate([m["accuracy"] for m in ms])))
        self.skipped += int(np.sum(np.concatenate([m["nonfinite"] for m in ms])))
        now = time.perf_counter()
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = step, now
        self.run.metrics.write(step, "train", loss=loss, accuracy=acc, steps_per_s=rate, skipped_steps=self.skipped)
        self.console.update(step, rate, loss=loss, acc=acc)


def _should_save(run: Run, step: int, last_save: float) -> bool:
    """The last step; every train.checkpoint_every steps when set; else each epoch's end, but not within
    train.checkpoint_min_secs of the last save (process 0's clock decides, for every process)."""
    t, s = run.config.train, run.steps
    if step == s.total_steps:
        return True
    if step % s.checkpoint_every:
        return False
    return bool(t.checkpoint_every) or run.par.agree(time.perf_counter() - last_save >= t.checkpoint_min_secs)


def _save_and_stop(run: Run, step: int, state, stopper, console):
    run.ckpt.save(step, state, force=True)
    run.ckpt.wait()
    console.close()
    raise Interrupted(f"Stopped by {stopper.signal_name} at step {step}; a checkpoint was saved in "
                      f"{run.ckpt.directory}: rerun the same command to resume.", stopper.signum or 15)


def _summary(run: Run, state) -> str:
    cfg, p = run.config, state.params
    return (f"model {cfg.model.name}: {models.count_params(p):,} params ({params_by_module(p)}) | data {run.ds.name}: "
            f"{len(run.ds.train)} train, {len(run.ds.test)} test | {run.par.describe()} | {run.steps.total_steps} "
            f"steps ({run.order.steps_per_epoch}/epoch, batch {cfg.data.batch_size}) | checkpoints in "
            f"{run.ckpt.directory}")


def train(config, workdir: str, log=print, allow_config_change: bool = False) -> dict:
    """Trains (pretraining or fine-tuning, by config) and returns the final test metrics
    {"step", "split", "loss", "accuracy", ["f1" | "macro_f1"], "examples"}.

    Rerunning with the same workdir resumes from the latest checkpoint; a workdir holding a run of another config is
    refused unless `allow_config_change`. SIGTERM/SIGINT save a checkpoint and raise `Interrupted`.
    """
    log = log if is_main() else (lambda *_: None)
    run = build_run(config, workdir, log=log)
    cfg, s = run.config, run.steps
    if not allow_config_change:
        _check_same_run(cfg, run.workdir)
    state = restore_or_init(run, log=log)
    if is_main():
        write_text(os.path.join(run.workdir, "config.json"), to_json(cfg))
        write_json(os.path.join(run.workdir, "data.json"), run.ds.info(run.task.name), indent=2)
    log(_summary(run, state))
    start = int(state.step)
    if start >= s.total_steps:
        return _finished(run, state, log)

    # The data feed and the jitted calls.
    chunk = make_chunk_fn(make_train_step(run.model, run.tx, run.task, cfg.train.seed), run.par)
    every = (s.log_every, s.eval_every, s.checkpoint_every)
    feed = Feed(run.ds, run.task, run.order, run.par, cfg, state.params, start, s.total_steps, every)
    evaluate_now = _evaluator(run, feed.resident)
    log(feed.describe())
    console = Console(s.total_steps, start)
    train_log = _TrainLog(run, console, start)
    stopper = StopRequest()
    t_start = last_save = time.perf_counter()
    step, unchecked = start, None
    try:
        for step, k, at_boundary, inputs in feed:
            state, m = chunk(state, inputs)
            if run.par.sync_each_call:
                jax.block_until_ready(m)
            train_log.add(m)
            if cfg.train.on_nonfinite == "stop":
                # the previous call's flags, read with this call queued behind it: the device never idles here
                _check_finite(unchecked)
                unchecked = (step, m)
            step += k
            if not at_boundary:
                continue

            # Check: nothing non-finite is logged, evaluated or saved.
            _check_finite(unchecked)
            unchecked = None
            # Stop: SIGTERM / SIGINT (on any process) or a cluster preemption notice saves and exits.
            if stopper.requested() or run.ckpt.preempted(step):
                _save_and_stop(run, step, state, stopper, console)
            # Log.
            if step % s.log_every == 0 or step == s.total_steps:
                train_log.write(step)
            # Evaluate.
            if step % s.eval_every == 0 and step < s.total_steps:
                ev = evaluate_now(state)
                run.metrics.write(step, "test", **ev)
                console.line(f"step {step}: {_describe(ev)}")
            # Save.
            if _should_save(run, step, last_save):
                run.ckpt.save(step, state, force=step == s.total_steps)
                last_save = time.perf_counter()

        console.close()
        ev = evaluate_now(state)
        run.metrics.write(step, "test", **ev)
        run.ckpt.wait()
        if is_main():  # the primary process finalizes Orbax's saves: its folder has the last word
            run.ckpt.check_committed(step)
    finally:
        for closing in (feed, stopper, console, run.ckpt, run.metrics):
            closing.close()
        plot_curves(run.metrics.path, os.path.join(run.workdir, "curves.png"))
    elapsed = time.perf_counter() - t_start
    log(f"done: step {step} | {_describe(ev)} | {(step - start) / elapsed:.1f} steps/s over {elapsed:.1f}s | "
        f"{run.workdir}")
    return {"step": step, "split": "test", **ev}


def _finished(run: Run, state, log) -> dict:
    """A run already at its last step: its final test metrics, from metrics.jsonl or evaluated again."""
    step = int(state.step)
    log(f"already finished: step {step} of {run.steps.total_steps} in {run.workdir}")
    try:
        done = [m for m in run.metrics.read() if m["split"] == "test" and m["step"] == step]
        if done:
            return {**done[-1], "examples": int(done[-1]["examples"])}
        return {"step": step, "split": "test", **_evaluator(run, train_resident(run.ds, run.task, run.config.data))(
            state)}
    finally:
        run.ckpt.close()


def evaluate(config, workdir: str, step: int | None = None, log=print) -> dict:
    """Evaluates a checkpoint of the run in `workdir` (default: the latest) on the test split; returns the same
    keys as `train()`."""
    run = build_run(config, workdir, log=log)
    try:
        step = step if step is not None else run.ckpt.latest_step()
        if step is None:
            raise CheckpointError(f"No checkpoint in {run.ckpt.directory}; train first with the same --workdir.")
        state = run.ckpt.restore(step, init_state(run))
        ev = _evaluator(run, False)(state)
    finally:
        run.ckpt.close()
    log(f"evaluate: step {step} | {_describe(ev)}")
    return {"step": step, "split": "test", **ev}
