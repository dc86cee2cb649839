"""From a `Split` to batches: the epoch order, host batches through grain, padded evaluation batches.

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

from ptft_jax.dataset import Split
from ptft_jax.errors import DataError


class EpochOrder:
    """Indices of the examples in each training batch. Kept by hand rather than grain's shuffles: 1 ms per
    60,000 indices against 1.7-4 s, and a plain function of (seed, step) that the device-resident path shares."""

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


class _StepBatch(grain.transforms.Map):
    """step -> this process's rows of that step's global batch (augmented by `augment`, see augment.py)."""

    def __init__(self, split: Split, order: EpochOrder, share: slice, augment=None):
        self.split, self.order, self.share, self.augment = split, order, share, augment

    def map(self, step):
        indices = self.order.indices(int(step))
        if self.augment is not None:
            return self.augment(self.split, indices, self.share, int(step))
        return self.split.take(indices[self.share])


def host_batches(split: Split, order: EpochOrder, start: int, stop: int, share: slice,
                 num_threads: int = 4, prefetch: int = 8, augment=None):
    """An iterator over this process's share of the batches of steps start..stop-1, read ahead on threads."""
    ds = grain.MapDataset.range(start, stop).map(_StepBatch(split, order, share, augment))
    opts = grain.ReadOptions(num_threads=max(1, num_threads), prefetch_buffer_size=max(1, prefetch))
    return iter(ds.to_iter_dataset(opts))


def eval_indices(n: int, batch_size: int):
    """(idx, mask), each [n_batches, batch_size]: every example exactly once, in order; the last batch padded with
    the last example, `mask` 0 on padding."""
    flat = np.arange(-(-n // batch_size) * batch_size)
    mask = (flat < n).astype(np.float32)
    return np.minimum(flat, n - 1).astype(np.int32).reshape(-1, batch_size), mask.reshape(-1, batch_size)


def eval_batches(split: Split, batch_size: int, share: slice):
    """The batches of eval_indices, read from the host split."""
    idx, mask = eval_indices(len(split), batch_size)
    for i, m in zip(idx, mask):
        batch = split.take(i[share])
        batch["mask"] = m[share]
        yield batch
