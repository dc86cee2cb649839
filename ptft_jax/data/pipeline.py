"""From a `Split` to batches: the epoch order, host batches through grain, padded eval batches.

The order of training examples is a function of (seed, step) alone: epoch e is the permutation
`np.random.default_rng([seed, e]).permutation(n)` cut into batches, remainder dropped. So the data position
of a run is its step, a resumed run reads exactly the batches it would have read, and the device-resident
path (which gathers the same indices on the device) sees the same batches as the host path.
(grain's own `MapDataset.shuffle` permutes index by index in Python: 0.9 s per 60,000-example epoch,
against about 1 ms here; grain still does the reading, batching and prefetching on host threads.)
"""
from __future__ import annotations

import functools

import grain
import numpy as np

from ptft_jax.data.sources import Split
from ptft_jax.errors import DataError


class EpochOrder:
    """Indices of the examples in each training batch."""

    def __init__(self, size: int, batch_size: int, seed: int):
        if batch_size > size:
            raise DataError(f"data.batch_size {batch_size} is larger than the training split ({size} examples); "
                            f"lower data.batch_size.")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.steps_per_epoch = size // batch_size

    @functools.lru_cache(maxsize=2)
    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.size).astype(np.int32)

    def indices(self, step: int) -> np.ndarray:
        epoch, pos = divmod(step, self.steps_per_epoch)
        return self.permutation(epoch)[pos * self.batch_size:(pos + 1) * self.batch_size]

    def chunk(self, start: int, count: int) -> np.ndarray:
        """[count, batch] indices of steps start..start+count-1."""
        return np.stack([self.indices(s) for s in range(start, start + count)])


def select(split: Split, classes=None, label_map=None, per_class=None) -> Split:
    """Keeps the given classes (renumbered), maps labels, and keeps the first `per_class` of each class."""
    if classes is None and label_map is None and per_class is None:
        return split
    arrays = dict(split.arrays)
    labels = arrays["label"]
    keep = np.ones(len(labels), bool)
    if classes is not None:
        classes = list(classes)
        keep &= np.isin(labels, classes)
        lookup = np.full(max(int(labels.max()), max(classes)) + 1, -1, np.int32)
        lookup[classes] = np.arange(len(classes), dtype=np.int32)
        labels = lookup[np.maximum(labels, 0)]
    if label_map is not None:
        label_map = np.asarray(label_map, np.int32)
        if labels[keep].max() >= len(label_map):
            raise DataError(f"data.label_map has {len(label_map)} entries but labels go up to {labels[keep].max()}; "
                            f"give one new label per class.")
        labels = np.where(keep, label_map[np.clip(labels, 0, len(label_map) - 1)], -1)
    if per_class is not None:
        counts: dict[int, int] = {}
        for i in np.flatnonzero(keep):
            c = int(labels[i])
            counts[c] = counts.get(c, 0) + 1
            if counts[c] > per_class:
                keep[i] = False
    idx = np.flatnonzero(keep)
    arrays = {k: v[idx] for k, v in arrays.items()}
    arrays["label"] = labels[idx].astype(np.int32)
    if len(idx) == 0:
        raise DataError("data.classes / data.label_map / data.train_per_class leave no examples; check them.")
    return Split(len(idx), arrays=arrays)


class _StepBatch(grain.transforms.Map):
    """step -> this process's rows of that step's global batch (augmented by `augment`, see augment.py)."""

    def __init__(self, split: Split, order: EpochOrder, rows: slice, augment=None):
        self.split, self.order, self.rows, self.augment = split, order, rows, augment

    def map(self, step):
        indices = self.order.indices(int(step))
        if self.augment is not None:
            return self.augment(self.split, indices, self.rows, int(step))
        return self.split.take(indices[self.rows])


def host_batches(split: Split, order: EpochOrder, start: int, stop: int, rows: slice,
                 num_threads: int = 4, prefetch: int = 8, augment=None):
    """An iterator over this process's share of the batches of steps start..stop-1, read ahead on threads."""
    ds = grain.MapDataset.range(start, stop).map(_StepBatch(split, order, rows, augment))
    opts = grain.ReadOptions(num_threads=max(1, num_threads), prefetch_buffer_size=max(1, prefetch))
    return iter(ds.to_iter_dataset(opts))


def eval_indices(n: int, batch_size: int):
    """(idx, mask), each [n_batches, batch_size]: every example exactly once, in order; the last batch padded with
    the last example, `mask` 0 on padding."""
    flat = np.arange(-(-n // batch_size) * batch_size)
    mask = (flat < n).astype(np.float32)
    return np.minimum(flat, n - 1).astype(np.int32).reshape(-1, batch_size), mask.reshape(-1, batch_size)


def eval_batches(split: Split, batch_size: int, rows: slice):
    """The batches of eval_indices, read from the host split."""
    idx, mask = eval_indices(len(split), batch_size)
    for i, m in zip(idx, mask):
        batch = split.take(i[rows])
        batch["mask"] = m[rows]
        yield batch


class DeviceFeed:
    """Chunks of host batches stacked and put on the devices ahead of the step, on a background thread.

    `plan` yields (first step, k) for every jitted call in order; `batches` yields this process's batch of each
    step; `put(stacked)` makes the global device arrays of one chunk [k, B, ...]. Up to `depth` chunks wait on
    the devices, so the step never waits on host stacking or the host-to-device copy. `next(step, k)` returns
    the chunk of that call (and checks the plan agrees); an error on the thread is raised there.
    """

    def __init__(self, batches, plan, put, depth: int = 1):
        import queue
        import threading
        self._queue = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(batches, plan, put), daemon=True,
                                        name="ptft_device_feed")
        self._thread.start()

    def _fill(self, batches, plan, put):
        import queue
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
