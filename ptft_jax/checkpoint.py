"""Orbax checkpoints under WORKDIR/checkpoints: save, resume, and raw restore for grafting."""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from ptft_jax.errors import CheckpointError


class Checkpoints:
    def __init__(self, directory: str, keep: int = 3, create: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create, enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                            item_handlers={"state": ocp.StandardCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self):
        return list(self.manager.all_steps())

    def save(self, step: int, state, force: bool = False) -> bool:
        return self.manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=force)

    def restore(self, step: int, target):
        """Restores into the structure, shapes and shardings of `target` (a state or its abstract twin)."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"The checkpoint at {self.directory}/{step} does not match this config's model or optimiser "
                f"({str(e).splitlines()[0][:200]}); use a new --workdir or the config it was saved with.") from e
        return out.state

    def restore_raw(self, step: int) -> dict:
        """The saved tree as nested dicts and lists, whatever topology saved it: for grafting.

        Arrays land on this process's first device, so a checkpoint written by 8 devices (or 8 hosts) reads on 1.
        """
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        meta = self.metadata(step)
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        return out.state

    def metadata(self, step: int):
        """The saved tree's shapes and dtypes, without reading the arrays."""
        return self.manager.item_metadata(step).state

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()
