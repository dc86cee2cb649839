"""Orbax checkpoints under WORKDIR/checkpoints: save, resume, and raw restore for grafting."""
from __future__ import annotations

import os
import time

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
        try:
            return self.manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                                     force=force)
        except OSError as e:
            raise self._save_error(step, e) from e

    def _save_error(self, step, e) -> CheckpointError:
        return CheckpointError(f"Saving the checkpoint of step {step} in {self.directory} failed ({e.strerror or e}); "
                               f"the earlier checkpoints are intact: free space or fix the folder, then rerun.")

    def restore(self, step: int, target):
        """Restores into the structure, shapes and shardings of `target` (a state or its abstract twin)."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        except Exception as e:  # noqa: BLE001 - reported as one sentence; the caller may fall back
            first = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise CheckpointError(
                f"The checkpoint at {self.directory}/{step} cannot be restored into this config's model and "
                f"optimiser ({type(e).__name__}: {first}); use a new --workdir or the config it was saved with.") from e
        return out.state

    def set_aside(self, step: int) -> str:
        """Renames a damaged step folder out of the manager's sight (kept for inspection, never deleted)."""
        src = os.path.join(self.directory, str(step))
        dst = f"{src}.damaged-{int(time.time())}"
        os.replace(src, dst)
        self.manager.reload()
        return dst

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
        try:
            self.manager.wait_until_finished()
        except OSError as e:
            raise self._save_error(self.latest_step(), e) from e

    def close(self):
        self.manager.close()
