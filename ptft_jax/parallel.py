"""One mesh over every device of every process; the batch is split on the `data` axis, params replicated."""
from __future__ import annotations

import os
import signal
import sys
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ptft_jax.errors import ConfigError
from ptft_jax.multihost import Cluster, waiting_line


def initialize(cluster: Cluster | None):
    """Starts `jax.distributed` for a multi-process run (`cluster`: `multihost.cluster_from()` reads it from flags
    or PTFT_* variables), else does nothing; on managed clusters (Cloud TPU, SLURM, ...)
    `jax.distributed.initialize()` finds the processes by itself when PTFT_DISTRIBUTED=1.

    Says once what it waits for, since the wait is silent otherwise: `jax.distributed` holds every process until
    all have connected to process 0, and ends them (a C++ abort, which launch.py's supervisor turns into a sentence)
    when that takes longer than `cluster.init_timeout` seconds.
    """
    if cluster is not None:
        print(waiting_line(cluster), file=sys.stderr, flush=True)
        jax.distributed.initialize(cluster.coordinator, num_processes=cluster.num_processes,
                                   process_id=cluster.process_id, initialization_timeout=cluster.init_timeout)
    elif os.environ.get("PTFT_DISTRIBUTED") == "1":
        jax.distributed.initialize()


class Parallel:
    """The mesh and the shardings the loop uses."""

    def __init__(self, devices=None):
        devices = devices if devices is not None else jax.devices()
        self.mesh = Mesh(np.asarray(devices), ("data",))
        self.num_devices = len(devices)
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharded = NamedSharding(self.mesh, P("data"))
        self.chunk_sharded = NamedSharding(self.mesh, P(None, "data"))  # [steps, batch, ...]
        self.process_index = jax.process_index()
        self.process_count = jax.process_count()
        # Dispatching collectives back to back can stall XLA's CPU rendezvous: wait on each call there.
        self.sync_each_call = devices[0].platform == "cpu" and len(devices) > 1

    def check_batch(self, batch_size: int, what: str = "data.batch_size"):
        if batch_size % self.num_devices:
            raise ConfigError(f"{what} {batch_size} is not divisible by the {self.num_devices} devices; "
                              f"use a multiple of {self.num_devices}.")

    def process_slice(self, batch_size: int) -> slice:
        """This process's share of a global batch: the slice of its rows."""
        per = batch_size // self.process_count
        return slice(self.process_index * per, (self.process_index + 1) * per)

    def global_array(self, local: np.ndarray, sharding: NamedSharding, batch_axis: int = 0):
        """Assembles per-process rows into one global array sharded on the batch axis."""
        shape = list(local.shape)
        shape[batch_axis] *= self.process_count
        return jax.make_array_from_process_local_data(sharding, local, tuple(shape))

    def replicate(self, value):
        """Puts a host value (the same on every process) on every device."""
        value = np.asarray(value)
        return jax.make_array_from_callback(value.shape, self.replicated, lambda idx: value[idx])

    def agree(self, flag: bool) -> bool:
        """Process 0's `flag` on every process: for decisions taken from a clock, which processes read apart."""
        if self.process_count == 1:
            return bool(flag)
        return bool(multihost_utils.broadcast_one_to_all(np.int32(bool(flag))))

    def describe(self) -> str:
        d = jax.devices()[0]
        return (f"{self.num_devices} {d.platform} device(s) ({d.device_kind}) in {self.process_count} process(es); "
                f"mesh data={self.num_devices}")


class StopRequest:
    """Turns SIGTERM / SIGINT into a request the loop honours at the end of its current call, on every process."""

    def __init__(self):
        self.signum = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signum = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a stop request"

    def requested(self) -> bool:
        """True on every process when any process got a signal (processes agree, so all save together)."""
        if jax.process_count() == 1:
            return self.signum is not None
        flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
        self.signum = self.signum or (int(np.max(flags)) or None)
        return self.signum is not None

    def close(self):
        """Puts the previous signal handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
