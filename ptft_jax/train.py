"""The one training loop for pretraining and fine-tuning: `train(config, workdir)` and `evaluate(config, workdir)`.

    launch.py -> train() (this file) -> step.make_train_step (the jitted step) -> models.build (the model)

Where the data lives and how many steps one call runs is the data feed's business (data/feed.py); what the
model computes per task is tasks.py's; the loop checks, stops, logs, evaluates and saves.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ptft_jax import compile_cache, lora, models, optim, tasks
from ptft_jax.checkpoint import Checkpoints, InitFrom
from ptft_jax.config import Durations, defaults, durations, flatten, to_json, validate
from ptft_jax.data.feed import Evaluator, Feed, stream_state, test_resident, train_resident
from ptft_jax.data.pipeline import EpochOrder
from ptft_jax.errors import CheckpointError, ConfigError, Diverged, Interrupted
from ptft_jax.files import WorkdirLock, write_json, write_text
from ptft_jax.graft import graft
from ptft_jax.metrics import Console, MetricsFile, SteadyRate, is_main, params_by_module, plot_curves
from ptft_jax.parallel import Parallel, StopRequest
from ptft_jax.selection import Selection
from ptft_jax.step import TrainState, make_chunk_fn, make_eval_fn, make_train_step, step_memory
from ptft_jax.text.stream import StreamSplit

# Config keys a resumed run may change; any other difference means the workdir holds another run.
RESUMABLE_CHANGES = ("train.epochs", "train.steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
                     "train.keep", "train.steps_per_call", "train.compile_cache", "train.checkpoint_min_secs",
                     "data.data_dir", "data.in_memory", "data.device_resident", "data.device_budget_mb",
                     "data.num_threads", "data.num_workers", "data.prefetch", "data.device_prefetch",
                     "data.eval_batch_size")


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
    best: Checkpoints | None = None  # WORKDIR/best: the best checkpoint by train.keep_best


def build_run(config, workdir: str, log=print) -> Run:
    config = validate(config)
    init_from = InitFrom.parse(config.init_from, config.init_step) if config.init_from else None
    workdir = _make_workdir(workdir)
    d, t = config.data, config.train
    compile_cache.enable(t.compile_cache)
    par = Parallel()
    par.check_batch(d.batch_size)
    per_device = d.batch_size // par.num_devices
    if per_device % t.grad_accum:
        raise ConfigError(f"train.grad_accum {t.grad_accum} does not divide each device's {per_device} examples "
                          f"(data.batch_size {d.batch_size} over {par.num_devices} devices); choose a grad_accum "
                          f"that divides {per_device}.")
    par.check_batch(d.eval_batch_size, "data.eval_batch_size")
    if init_from is not None and init_from.model:
        config = _published_model(config, init_from, log)
    task = tasks.from_config(config)
    ds = task.load(d, workdir, init_from.tokenizer_dir if init_from else None, log)
    ds = task.with_val(ds, d, log)
    task = task.bind(ds)
    vocab_size = ds.tokenizer_info["vocab_size"] if ds.tokenizer_info else None
    model = models.build(config.model, ds.num_classes, vocab_size=vocab_size, remat=t.remat)
    order = ds.train.order(d.batch_size) if isinstance(ds.train, StreamSplit) else \
        EpochOrder(len(ds.train), d.batch_size, t.seed)  # (a text stream's steps per epoch are an estimate)
    steps = durations(config, order.steps_per_epoch)
    params_shape = jax.eval_shape(lambda: model.init(jax.random.key(0), task.init_inputs(ds)))["params"]
    tx = optim.build(config.optim, finetune=config.finetune, params=params_shape, durations=steps)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if os.path.exists(ckpt_dir) and not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"{ckpt_dir} is a file, not the run's checkpoint folder; move it away (or use another "
                              f"--workdir) and rerun.")
    saved = json.loads(to_json(config))
    ckpt = Checkpoints(ckpt_dir, keep=t.keep, config=saved)
    best = Checkpoints(os.path.join(workdir, BEST_DIR), keep=1, config=saved) if t.keep_best else None
    return Run(config, workdir, par, task, ds, model, tx, order, steps, ckpt,
               MetricsFile(os.path.join(workdir, "metrics.jsonl")), init_from, best)


BEST_DIR = "best"  # WORKDIR/best: train.keep_best's checkpoint (one Orbax step folder, the best step)


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


def _saved_config(run: Run, log) -> dict | None:
    """The config of the run in the workdir: config.json, or (when that file is damaged) the copy its newest
    checkpoint holds; None for a new workdir."""
    path = os.path.join(run.workdir, "config.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError:
        pass
    for step in sorted(run.ckpt.all_steps(), reverse=True):
        saved = run.ckpt.saved_config(step)
        if saved is not None:
            log(f"warning: {path} is damaged; checked this config against the copy in checkpoint step {step} "
                f"(config.json is rewritten below)")
            return saved
    if not run.ckpt.all_steps():
        return None  # nothing trained yet: nothing to protect
    raise CheckpointError(f"{path} is damaged (not JSON) and no checkpoint holds a copy of the run's config; rerun "
                          f"with --allow_config_change to resume with this config, or use another --workdir.")


def _check_same_run(run: Run, log):
    saved = _saved_config(run, log)
    if saved is None:
        return
    config, workdir = run.config, run.workdir
    old = flatten(saved)
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
        # lora: the optimiser state is of the trainable params, made with them (_lora_state)
        opt_state = None if run.config.finetune.strategy == "lora" else run.tx.init(params)
        return TrainState(jnp.zeros((), jnp.int32), params, opt_state, model_state)

    key = jax.random.fold_in(jax.random.key(run.config.train.seed), 0)
    return jax.jit(init, out_shardings=run.par.replicated)(key)


def restore_or_init(run: Run, log=print) -> TrainState:
    """Resumes from the newest checkpoint that restores (damaged newer ones are set aside), else grafts from
    `init_from`, else starts fresh."""
    state = init_state(run)
    if run.config.finetune.strategy == "lora" and run.ckpt.all_steps():
        state = _lora_base(run, state)  # the restore target: the frozen base read again from init_from
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
        run.metrics.truncate_after(step, warn=log)
        return restored
    if failed:
        raise failed[0][1]
    run.metrics.truncate_after(0, warn=log)  # lines of an attempt killed before its first checkpoint
    return _graft(run, state, log) if run.init_from else state


def _graft(run: Run, state: TrainState, log) -> TrainState:
    """The fresh state with leaves grafted from `init_from` by `config.graft`; writes graft.json."""
    fresh = {"params": state.params, **state.model_state}
    errors_file = os.path.join(run.workdir, "graft_errors.txt") if is_main() else None  # else a temporary file
    variables, report = graft(jax.device_get(fresh), run.init_from, run.config.graft, errors_file=errors_file)
    if run.config.finetune.strategy == "lora":  # before graft.json is written: a bad lora_targets leaves no trace
        state = _lora_state(run, state, variables, lora.loaded_paths(report.rows))
    variables = jax.tree.map(run.par.replicate, variables)
    params = variables.pop("params")
    if is_main():
        write_json(os.path.join(run.workdir, "graft.json"), report.to_dict(), indent=2)
    log(report.table(verbose=logging.get_verbosity() >= 1))  # --verbosity=1: every leaf
    if run.config.finetune.strategy == "lora":
        return state.replace(model_state=variables)
    opt_state = jax.jit(run.tx.init, out_shardings=run.par.replicated)(params)
    return TrainState(state.step, params, opt_state, variables)


def _lora_state(run: Run, state: TrainState, variables: dict, loaded: set) -> TrainState:
    """A LoRA state from the host variables of a grafted (or rebuilt) model: lora.split's trainable params and
    frozen base, replicated, the optimiser state of the trainable ones; model_state as in `state`."""
    cfg = run.config
    trainable, frozen = lora.split(variables["params"], loaded, cfg.finetune, cfg.model.name, cfg.train.seed)
    trainable, frozen = jax.tree.map(run.par.replicate, (trainable, frozen))
    opt_state = jax.jit(run.tx.init, out_shardings=run.par.replicated)(trainable)
    return TrainState(state.step, trainable, opt_state, state.model_state, frozen)


def _lora_base(run: Run, state: TrainState) -> TrainState:
    """A fresh state's LoRA twin with the frozen base read again from init_from (lora.read_base: refused when that
    checkpoint changed since graft.json was written): the target a LoRA checkpoint restores into."""
    base = lora.read_base(run.workdir, run.config, run.config.finetune)
    params = lora.flat(jax.device_get(state.params))
    params.update(lora.flat(base["base"]))
    return _lora_state(run, state, {"params": lora.unflat(params)}, set(lora.flat(base["base"])))


def _evaluator(run: Run, with_train_resident: bool, split=None) -> Evaluator:
    """The test split's evaluator (or `split`'s: the validation split)."""
    resident = test_resident(run.ds, run.task, run.config.data, with_train_resident, split)
    return Evaluator(make_eval_fn(run.model, run.task, run.par), run.ds, run.par, run.config.data, resident, split)


def _scores(ev: dict) -> dict:
    """The metrics of an evaluation worth logging: loss, accuracy and F1 where computed."""
    return {k: v for k, v in ev.items() if k not in ("examples", "best_step")}


def _describe(ev: dict, split: str = "test") -> str:
    return " | ".join(f"{split} {k.replace('_', ' ')} {v:.4f}" for k, v in _scores(ev).items())


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
    """The train lines of metrics.jsonl and the console: means over the calls since the last line.

    The console's steps/s and ETA are the steady training rate (SteadyRate): calls that compile (the first of
    each size: the loop cuts remainders into a few sizes) and the time spent evaluating or saving are left out.
    metrics.jsonl's `steps_per_s` stays the wall-clock rate of each interval; `lr` is the schedule's learning
    rate at the logged step."""

    def __init__(self, run: Run, console: Console, start: int):
        self.run, self.console = run, console
        self.pending, self.skipped = [], 0
        self.last_step, self.last_time = start, time.perf_counter()
        self.lr = optim.learning_rate(run.config.optim, run.steps)
        self.steady, self.sizes, self.compiling, self.last = SteadyRate(), set(), False, None

    def compiles(self, k: int) -> bool:
        """Whether the call of k steps about to run compiles (no call of its size ran yet): its time is left out."""
        self.compiling = k not in self.sizes
        if self.compiling:
            self.sizes.add(k)
            self.pause()
        return self.compiling

    def add(self, metrics, k: int):
        self.pending.append(metrics)
        self.last = metrics
        if self.compiling:
            jax.block_until_ready(metrics)  # its run, too, is left out
            self.resume()
        else:
            self.steady.count(k)

    def pause(self):
        """Stops the steady clock once the queued calls have run (evaluating and saving are not training)."""
        if self.last is not None:
            jax.block_until_ready(self.last)
        self.steady.pause()

    def resume(self):
        self.steady.resume()

    def write(self, step: int, **extra):
        ms, self.pending = jax.device_get(self.pending), []
        loss = float(np.mean(np.concatenate([m["loss"] for m in ms])))
        acc = float(np.mean(np.concatenate([m["accuracy"] for m in ms])))
        self.skipped += int(np.sum(np.concatenate([m["nonfinite"] for m in ms])))
        now = time.perf_counter()
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = step, now
        self.run.metrics.write(step, "train", loss=loss, accuracy=acc, steps_per_s=rate, skipped_steps=self.skipped,
                               lr=self.lr(step), **extra)
        self.console.update(step, self.steady.rate(), loss=loss, acc=acc)


def _should_save(run: Run, step: int, last_save: float) -> bool:
    """The last step; every train.checkpoint_every steps when set; else each epoch's end, but not within
    train.checkpoint_min_secs of the last save (process 0's clock decides, for every process)."""
    t, s = run.config.train, run.steps
    if step == s.total_steps:
        return True
    if step % s.checkpoint_every:
        return False
    return bool(t.checkpoint_every) or run.par.agree(time.perf_counter() - last_save >= t.checkpoint_min_secs)


def _save_and_stop(run: Run, step: int, state, stopper, console, extra=None):
    run.ckpt.save(step, state, force=True, extra=extra)
    run.ckpt.wait()
    console.close()
    raise Interrupted(f"Stopped by {stopper.signal_name} at step {step}; a checkpoint was saved in "
                      f"{run.ckpt.directory}: rerun the same command to resume.", stopper.signum or 15)


def _param_counts(run: Run, state) -> dict:
    """{"params": all of them, "trainable_params": those finetune.strategy trains}."""
    return {"params": models.count_params(state.params) + lora.count(state.frozen),
            "trainable_params": optim.count_trainable(state.params, run.config.finetune.strategy)}


def _model_params(state):
    """The model's params (for a LoRA state, their shapes: the merged kernels are never made outside the step)."""
    return state.params if state.frozen is None else jax.eval_shape(lora.merge, state.params, state.frozen)


def _summary(run: Run, state) -> str:
    cfg, p = run.config, _model_params(state)
    sizes = f"{len(run.ds.train)} train, {_val_size(run)}{len(run.ds.test)} test"
    counts = _param_counts(run, state)
    trained = "" if counts["trainable_params"] == counts["params"] else \
        f", {counts['trainable_params']:,} trained ({cfg.finetune.strategy})"
    budget = (f", grad_accum {cfg.train.grad_accum}" if cfg.train.grad_accum > 1 else "") + \
        (f", remat {cfg.train.remat}" if cfg.train.remat is not False else "")
    return (f"model {cfg.model.name}: {counts['params']:,} params{trained} ({params_by_module(p)}) | "
            f"data {run.ds.name}: "
            f"{sizes} | {run.par.describe()} | {run.steps.total_steps} "
            f"steps ({run.order.steps_per_epoch}/epoch, batch {cfg.data.batch_size}{budget}) | checkpoints in "
            f"{run.ckpt.directory}")


def _val_size(run: Run) -> str:
    return f"{len(run.ds.val)} val, " if run.ds.val is not None else ""


def train(config, workdir: str, log=print, allow_config_change: bool = False) -> dict:
    """Trains (pretraining or fine-tuning, by config) and returns the final test metrics
    {"step", "split", "loss", "accuracy", ["f1" | "macro_f1"], "examples"}.

    Rerunning with the same workdir resumes from the latest checkpoint; a workdir holding a run of another config is
    refused unless `allow_config_change`, and one in use by another launch (WORKDIR/lock) is refused.
    SIGTERM/SIGINT save a checkpoint and raise `Interrupted`.
    """
    log = log if is_main() else (lambda *_: None)
    workdir = _make_workdir(workdir)
    lock = WorkdirLock(workdir) if is_main() else None
    if lock:
        lock.acquire()
    try:
        return _train(config, workdir, log, allow_config_change)
    except OSError as e:  # a full disk, a vanished or read-only folder: on a workdir file or another the run uses
        if e.errno not in _STORAGE_ERRNOS:
            raise
        raise CheckpointError(f"{e.filename or workdir}: {e.strerror}; the checkpoints already saved are intact: "
                              f"free space or fix the file or folder, then rerun.") from e
    finally:
        if lock:
            lock.release()


_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.ENOENT, errno.EIO)


def _train(config, workdir: str, log, allow_config_change: bool) -> dict:
    run = build_run(config, workdir, log=log)
    cfg, s = run.config, run.steps
    if not allow_config_change:
        _check_same_run(run, log)
    state = restore_or_init(run, log=log)
    if is_main():
        write_text(os.path.join(run.workdir, "config.json"), to_json(cfg))
        write_json(os.path.join(run.workdir, "data.json"), run.ds.info(run.task.name), indent=2)
    log(_summary(run, state))
    counts = _param_counts(run, state)
    start = int(state.step)
    select = None
    if run.ds.val is not None:  # rebuilt from the log up to the resumed step: a resumed run remembers its count
        rows = [r for r in run.metrics.read() if r["step"] <= start]
        select = Selection(cfg.train.keep_best, cfg.train.early_stop, rows)
    if start >= s.total_steps or (select and select.stop):
        return {**_finished(run, state, select, log), **counts}
    if select is None:
        log("no validation split (data.val_fraction / data.val_split): the evaluations during training are on the "
            "test split, and nothing is selected on them")

    # The data feed and the jitted calls.
    chunk = make_chunk_fn(make_train_step(run.model, run.tx, run.task, cfg.train.seed, cfg.train.grad_accum,
                                          run.par, optim.trainable(state.params, cfg.finetune.strategy)), run.par)
    every = (s.log_every, s.eval_every, s.checkpoint_every)
    feed = Feed(run.ds, run.task, run.order, run.par, cfg, _model_params(state), start, s.total_steps, every,
                stream_state(run.ds, run.ckpt, start, cfg.data.batch_size))
    console = Console(s.total_steps, start)
    evaluate_now = console.before_first_call(_evaluator(run, feed.resident, run.ds.val),  # validation, else test
                                             "compiling the evaluation...")
    eval_split = "test" if select is None else "val"
    log(feed.describe())
    train_log = _TrainLog(run, console, start)
    stopper = StopRequest()
    t_start = last_save = time.perf_counter()
    step, unchecked, first_line = start, None, None if start == 0 else {}  # step_memory_bytes: a fresh run's
    try:
        for step, k, at_boundary, inputs in feed:
            if train_log.compiles(k) and step == start:
                console.notice("compiling the train step...")
            state, m = chunk(state, inputs)
            if first_line is None:  # read from the executable the call just compiled: one trace, no compile
                first_line = step_memory(chunk, state, inputs)
            if run.par.sync_each_call:
                jax.block_until_ready(m)
            train_log.add(m, k)
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
            # Log.
            if step % s.log_every == 0 or step == s.total_steps:
                train_log.write(step, **first_line, **feed.logged())
                first_line = {}
            train_log.pause()  # evaluating and saving are not training time (resumed below)
            # Evaluate (and select: the best checkpoint, early stopping).
            if (step % s.eval_every == 0 and step < s.total_steps) or (select and step == s.total_steps):
                ev = evaluate_now(state)
                run.metrics.write(step, eval_split, **ev)
                console.line(f"step {step}: {_describe(ev, eval_split)}")
                if select and select.update(step, ev) and run.best:
                    run.best.save(step, state, force=True)
                    run.best.wait()  # committed before any later checkpoint: a resumed run never lacks its best
            # Stop: SIGTERM / SIGINT (on any process) or a cluster preemption notice saves and exits; after the log
            # and the evaluation of this step, so that the resumed run's metrics.jsonl is the uninterrupted one's.
            if stopper.requested() or run.ckpt.preempted(step):
                _save_and_stop(run, step, state, stopper, console, feed.saved_with(step))
            # Save.
            if select and select.stop:
                console.line(f"early stop at step {step}: {select.early_stop} evaluation(s) without a better "
                             f"{select.spec} ({select.describe()})")
                run.ckpt.save(step, state, force=True, extra=feed.saved_with(step))
                break
            if _should_save(run, step, last_save):
                run.ckpt.save(step, state, force=step == s.total_steps, extra=feed.saved_with(step))
                last_save = time.perf_counter()
            train_log.resume()

        train_log.pause()
        console.close()
        ev = _final_test(run, state, step, select, feed.resident, evaluate_now if select is None else None)
        run.ckpt.wait()
        if is_main():  # the primary process finalizes Orbax's saves: its folder has the last word
            run.ckpt.check_committed(step)
    finally:
        for closing in (feed, stopper, console, run.ckpt, run.metrics, run.best):
            if closing is not None:
                closing.close()
        _plot(run, log)
    elapsed, rate = time.perf_counter() - t_start, train_log.steady.rate()
    chosen = f" (the best checkpoint, step {ev['best_step']})" if "best_step" in ev else ""
    speed = f"{rate:.1f} steps/s training, " if rate else ""
    log(f"done: step {step} | {_describe(ev)}{chosen} | {speed}{elapsed:.1f}s in all | {run.workdir}")
    return {"step": step, "split": "test", **ev, **counts}


def _plot(run: Run, log):
    """WORKDIR/curves.png; a failure to write it (a full disk) is a warning, never the error a run reports."""
    try:
        plot_curves(run.metrics.path, os.path.join(run.workdir, "curves.png"))
    except OSError as e:
        log(f"warning: could not write {os.path.join(run.workdir, 'curves.png')} ({e.strerror})")


def _final_test(run: Run, state, step: int, select, with_train_resident: bool, evaluator=None) -> dict:
    """The one evaluation on the test split, at the end: of the best checkpoint under train.keep_best (its step in
    `best_step`), else of `state`; written to metrics.jsonl as the test row of `step`. `evaluator`: the loop's own
    when it already evaluates the test split (no validation split), which saves a compile."""
    extra = {}
    if run.best is not None and select is not None and select.best_step is not None:
        if select.best_step != step:
            if select.best_step not in run.best.all_steps():
                raise CheckpointError(f"The best checkpoint (step {select.best_step}) is missing from "
                                      f"{run.best.directory}; rerun with a new --workdir.")
            state = run.best.restore(select.best_step, state)
        extra = {"best_step": select.best_step}
    ev = (evaluator or _evaluator(run, with_train_resident))(state)
    run.metrics.write(step, "test", **ev, **extra)
    return {**ev, **extra}


def _finished(run: Run, state, select, log) -> dict:
    """A run already at its last step (or stopped early): its final test metrics, from metrics.jsonl, or evaluated
    (and written there) when a kill came between the final checkpoint and the final evaluation."""
    step = int(state.step)
    how = f"stopped early ({select.describe()})" if step < run.steps.total_steps else "finished"
    log(f"already {how}: step {step} of {run.steps.total_steps} in {run.workdir}")
    try:
        done = [m for m in run.metrics.read() if m["split"] == "test" and m["step"] == step]
        if done:
            ints = {k: int(done[-1][k]) for k in ("examples", "best_step") if k in done[-1]}
            return {**done[-1], **ints}
        ev = _final_test(run, state, step, select, train_resident(run.ds, run.task, run.config.data))
        _plot(run, log)
        return {"step": step, "split": "test", **ev}
    finally:
        for closing in (run.ckpt, run.metrics, run.best):
            if closing is not None:
                closing.close()


def evaluate(config, workdir: str, step: int | str | None = None, log=print) -> dict:
    """Evaluates a checkpoint of the run in `workdir` on the test split: by default the newest that restores (a
    damaged newer one is skipped with a warning, and left as it is), or a step, or "best" (the train.keep_best
    checkpoint in WORKDIR/best); returns the same keys as `train()`."""
    run = build_run(config, workdir, log=log)
    ckpt = run.ckpt
    if step == "best":
        ckpt = Checkpoints(os.path.join(run.workdir, BEST_DIR), create=False)
        if not os.path.isdir(ckpt.directory):
            raise CheckpointError(f"{run.workdir} has no best checkpoint (train.keep_best was not set); evaluate "
                                  f"its latest checkpoint instead.")
    try:
        if step == "best":
            step = ckpt.latest_step()
        steps = [int(step)] if step is not None else sorted(ckpt.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"No checkpoint in {ckpt.directory}; train first with the same --workdir.")
        target, failed = init_state(run), []
        if run.config.finetune.strategy == "lora":
            target = _lora_base(run, target)
        for step in steps:
            try:
                state = ckpt.restore(step, target)
                break
            except CheckpointError as e:
                failed.append((step, e))
        if len(failed) == len(steps):
            raise failed[0][1]
        for bad, e in failed:
            log(f"warning: checkpoint step {bad} is damaged ({str(e.__cause__ or e)[:200]}); evaluating step {step}")
        ev = _evaluator(run, False)(state)
    finally:
        for closing in {id(c): c for c in (ckpt, run.ckpt, run.best) if c is not None}.values():
            closing.close()
    log(f"evaluate: step {step} | {_describe(ev)}")
    return {"step": step, "split": "test", **ev}
