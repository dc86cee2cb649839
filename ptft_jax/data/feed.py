"""The loop's one view of its data: `Feed` hands it every jitted call's `(first_step, steps, at_boundary, inputs)`,
and `Evaluator` maps a state to test metrics. Both decide once, here, where the data lives:

* Device-resident: a training split in memory that needs no host work (no augmentation, no masked-LM masking) and
  fits `data.device_budget_mb` (or data.device_resident=true) stays on the devices, and each call gathers its
  batches by index: the same batches, in the same order, as the host path.
* Host: grain reads and transforms batches on threads (pipeline.py), and `DeviceFeed` stacks each call's batches
  and puts them on the devices `data.device_prefetch` calls ahead, so the step does not wait on the host.
* The test split goes on the devices whenever it is in memory and fits beside a resident training split (also
  beside a host-fed, augmented one: evaluation never augments), and is evaluated in one call.

Steps per call: `train.steps_per_call`, else up to `train.log_every`, except one for conv nets on the CPU backend
(XLA's CPU backend runs convolutions inside lax.scan about 20x slower: ResNet-18, 1.50 s against 0.08 s a step)
and, on the host path, no more steps than fit HOST_CHUNK_BYTES (every call's batches are held twice, on the host
and on the devices; an ImageNet batch of 1024 is 154 MB: one step a call). Calls end at every log, evaluation
and checkpoint boundary; a remainder is cut into powers of two (few distinct compiled sizes).
"""
from __future__ import annotations

import queue
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from ptft_jax.data.pipeline import eval_batches, eval_indices, host_batches
from ptft_jax.errors import CheckpointError, ConfigError
from ptft_jax.metrics import f1_scores
from ptft_jax.text.stream import StreamSplit

HOST_CHUNK_BYTES = 256 << 20  # the most host batches one call takes (stacked on the host and put on the devices)


def call_sizes(n: int, per_call: int) -> list[int]:
    """Splits n steps into calls of `per_call` steps, the rest in powers of two."""
    sizes = [per_call] * (n // per_call)
    rest = n % per_call
    bit = 1 << max(rest.bit_length() - 1, 0)
    while rest:
        if rest >= bit:
            sizes.append(bit)
            rest -= bit
        bit >>= 1
    return sizes


def call_plan(start: int, total: int, per_call: int, every):
    """(first step, k, whether it ends at a boundary) of every jitted call from `start` to `total`, each call
    ending at the nearest multiple of any of `every` (log, evaluation and checkpoint intervals)."""
    step = start
    while step < total:
        stop = min([step + per_call, total] + [(step // e + 1) * e for e in every if e])
        for k in call_sizes(stop - step, per_call):
            yield step, k, step + k == stop
            step += k


def _fits(data_cfg, *splits) -> bool:
    """Whether these splits' arrays go on the devices: data.device_resident=true, or within data.device_budget_mb."""
    nbytes = sum(v.nbytes for split in splits for v in split.arrays.values())
    return data_cfg.device_resident == "true" or nbytes <= data_cfg.device_budget_mb * 2**20


def train_resident(ds, task, data_cfg) -> bool:
    if data_cfg.augment or task.host_only:
        return False  # augmentation and masked-LM masking run in the host pipeline only
    if data_cfg.device_resident == "false" or ds.train.arrays is None:
        if data_cfg.device_resident == "true":
            raise ConfigError("data.device_resident=true needs the training split in memory; set data.in_memory=true.")
        return False
    return _fits(data_cfg, ds.train)


def test_resident(ds, task, data_cfg, with_train: bool, split=None) -> bool:
    """Whether the test split (or `split`: the validation split) goes on the devices: in memory, not host-only
    (masked-LM), residency not turned off, and within the budget (with the training split when that is resident
    too)."""
    split = ds.test if split is None else split
    if split.arrays is None or not len(split) or task.host_only or data_cfg.device_resident == "false":
        return False
    return _fits(data_cfg, ds.train, split) if with_train else _fits(data_cfg, split)


def _has_convolutions(params) -> bool:
    return any(getattr(p[-1], "key", None) == "kernel" and leaf.ndim >= 4
               for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0])


def default_steps_per_call(ds, task, config, par, params, resident: bool) -> int:
    """See the module docstring."""
    if jax.default_backend() == "cpu" and _has_convolutions(params):
        return 1
    per_call = config.train.log_every
    if resident:
        return per_call
    batch_bytes = task.example_bytes(ds, config.data) * (config.data.batch_size // par.process_count)
    fits = HOST_CHUNK_BYTES // max(1, batch_bytes)
    return per_call if fits >= per_call else 1 << max(0, int(fits).bit_length() - 1)


class Feed:
    """Every jitted call's training inputs from `start` to `total`, as `(first_step, k, at_boundary, inputs)`:
    `inputs` is {"data", "idx"} (resident) or {"batches"} (host), for `step.make_chunk_fn`'s function."""

    def __init__(self, ds, task, order, par, config, params, start: int, total: int, every, stream_state=None):
        d = config.data
        self.par, self.order = par, order
        self.share = par.process_slice(d.batch_size)
        self.resident = train_resident(ds, task, d)
        self.per_call = config.train.steps_per_call or default_steps_per_call(ds, task, config, par, params,
                                                                              self.resident)
        self.plan = list(call_plan(start, total, self.per_call, every))
        self._device_feed = self.stream = self._batches = None
        if self.resident:
            self._data = {k: par.replicate(v) for k, v in ds.train.arrays.items()}
        else:
            transform = task.host_transform(ds, d, config.train.seed)
            if isinstance(ds.train, StreamSplit):  # masked-LM lanes (text/stream.py); their state goes with saves
                self.stream = ds.train.lanes(d.batch_size, config.train.seed, transform, d.num_workers, d.prefetch)
                batches = self._batches = self.stream.batches(start, total, self.share, stream_state,
                                                              keep_at={s + k for s, k, end in self.plan if end})
            else:
                batches = host_batches(ds.train, order, start, total, self.share, d.num_threads, d.prefetch,
                                       augment=transform)
            put = lambda stacked: {k: par.global_array(v, par.chunk_sharded, batch_axis=1)  # noqa: E731
                                   for k, v in stacked.items()}
            self._device_feed = DeviceFeed(batches, [(s, k) for s, k, _ in self.plan], put, depth=d.device_prefetch)

    def describe(self) -> str:
        where = "device-resident split, indices per call" if self.resident else "host pipeline (grain), prefetched"
        if self.stream is not None:
            where = (f"{self.order.batch_size} text lanes on {self.stream.num_workers} worker thread(s), "
                     f"{'streamed from disk' if self.stream.streamed else 'tokenised in memory'}, prefetched")
        return f"input: {where} | {self.per_call} step(s) per call"

    def __iter__(self):
        for step, k, at_boundary in self.plan:
            if self.resident:
                idx = self.order.chunk(step, k)[:, self.share]
                idx = self.par.global_array(idx, self.par.chunk_sharded, batch_axis=1)
                yield step, k, at_boundary, {"data": self._data, "idx": idx}
            else:
                yield step, k, at_boundary, {"batches": self._device_feed.next(step, k)}

    def saved_with(self, step: int) -> dict | None:
        """What a checkpoint of `step` stores besides the state: the stream's lane states, all processes'."""
        if self.stream is None:
            return None
        lanes = self.stream.state_at(step)
        if self.par.process_count > 1:
            lanes = np.asarray(multihost_utils.process_allgather(lanes.astype(np.int32))).reshape(-1, 3)
        return {"stream": {"lanes": np.asarray(lanes).tolist()}}

    def logged(self) -> dict:
        """Extra values of every train row of metrics.jsonl."""
        return {} if self.stream is None else {"skipped_documents": self.stream.skipped}

    def close(self):
        if self._device_feed is not None:
            self._device_feed.close()
        if self._batches is not None:
            self._batches.close()


def stream_state(ds, ckpt, step: int, batch_size: int):
    """The lane states a stream resumes from: those saved with checkpoint `step` (None for a fresh run)."""
    if not step or not isinstance(ds.train, StreamSplit):
        return None
    saved = ckpt.stored(step, "stream")
    lanes = np.asarray(saved["lanes"], np.int64) if isinstance(saved, dict) and "lanes" in saved else None
    if lanes is None or lanes.shape != (batch_size, 3):
        raise CheckpointError(f"The checkpoint {ckpt.directory}/{step} holds no position of the text stream for "
                              f"{batch_size} rows (it was saved by another version or batch size), so the run cannot "
                              f"resume where it was; use a new --workdir.")
    return lanes


class Evaluator:
    """`evaluator(state)` -> test (or `split`'s) metrics {"loss", "accuracy", ["f1" | "macro_f1"], "examples"}
    through `eval_fn` (step.make_eval_fn's function): in one call when the split is device-resident, else batch by
    batch from the host; both add the same padded batches in the same order."""

    def __init__(self, eval_fn, ds, par, data_cfg, resident: bool, split=None):
        self.eval_fn, self.split, self.par = eval_fn, ds.test if split is None else split, par
        self.batch_size = data_cfg.eval_batch_size
        self.share = par.process_slice(self.batch_size)
        self.resident = resident
        if resident:
            self._data = {k: par.replicate(v) for k, v in self.split.arrays.items()}

    def _totals(self, state):
        par = self.par
        if self.resident:
            idx, mask = eval_indices(len(self.split), self.batch_size)
            idx, mask = (par.global_array(a[:, self.share], par.chunk_sharded, batch_axis=1) for a in (idx, mask))
            return self.eval_fn(state, {"data": self._data, "idx": idx, "mask": mask})
        totals = None
        for batch in eval_batches(self.split, self.batch_size, self.share):
            out = self.eval_fn(state, {"batch": {k: par.global_array(v, par.batch_sharded) for k, v in batch.items()}})
            if par.sync_each_call:
                jax.block_until_ready(out)
            totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
        return totals

    def __call__(self, state) -> dict:
        totals = jax.device_get(self._totals(state))
        n = float(totals["count"])
        out = {"loss": float(totals["loss"]) / n, "accuracy": float(totals["correct"]) / n}
        if "tp" in totals:
            out.update(f1_scores(totals["tp"], totals["fp"], totals["fn"]))
        return {**out, "examples": int(n)}


class DeviceFeed:
    """Chunks of host batches stacked and put on the devices ahead of the step, on a background thread.

    `plan` yields (first step, k) for every jitted call in order; `batches` yields this process's batch of each
    step; `put(stacked)` makes the global device arrays of one chunk [k, B, ...]. Up to `depth` chunks wait on
    the devices, so the step never waits on host stacking or the host-to-device copy. `next(step, k)` returns
    the chunk of that call (and checks the plan agrees); an error on the thread is raised there.
    """

    def __init__(self, batches, plan, put, depth: int = 1):
        self._queue = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(batches, plan, put), daemon=True,
                                        name="ptft_device_feed")
        self._thread.start()

    def _fill(self, batches, plan, put):
        try:
            for step, k in plan:
                local = [next(batches) for _ in range(k)]
                item = (step, k, put({key: np.stack([b[key] for b in local]) for key in local[0]}))
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self._queue.put((None, None, e))

    def next(self, step: int, k: int):
        got_step, got_k, chunk = self._queue.get()
        if isinstance(chunk, BaseException):
            raise chunk
        if (got_step, got_k) != (step, k):
            raise RuntimeError(f"DeviceFeed out of step: expected the call ({step}, {k}), got ({got_step}, {got_k}).")
        return chunk

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
