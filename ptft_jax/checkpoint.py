"""Orbax checkpoints under WORKDIR/checkpoints: save, resume, raw restore, and `init_from` parsed once."""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import logging
import os
import re
import sys
import time
import uuid
from typing import Any

import flax
import jax
import orbax.checkpoint as ocp

from ptft_jax.errors import CheckpointError
from ptft_jax.interop import hf_bert, torch_resnet


@dataclasses.dataclass(frozen=True)
class InitFrom:
    """Where a fine-tuning run's weights come from: `init_from` (a run's workdir, its checkpoints/ folder, or a
    checkpoint step directory) and `init_step`, parsed once."""
    path: str          # as given, made absolute
    directory: str     # the Orbax checkpoints folder
    step: int | None   # the step asked for (a step directory's own, or init_step); None: the latest (or best)

    @property
    def workdir(self) -> str:
        """The pretraining run's workdir."""
        parent, base = os.path.split(self.directory)
        return parent if base in ("checkpoints", "best") else self.directory

    @property
    def tokenizer_dir(self) -> str:
        """Where the tokenizer of a text run's weights lives (WORKDIR/tokenizer)."""
        return os.path.join(self.workdir, "tokenizer")

    model: dict = dataclasses.field(default_factory=dict)  # config.model fields the weights fix (none for a run)

    @classmethod
    def parse(cls, path, step: int | None = None) -> "InitFrom | Published":
        """A run's workdir / checkpoints folder / step directory, or `hf:DIR` / `torch:FILE` (`Published`)."""
        if str(path).startswith(PUBLISHED_PREFIXES):
            return Published.parse(str(path))
        path = os.path.abspath(os.path.expanduser(str(path))).rstrip("/")
        if not os.path.exists(path):
            raise CheckpointError(f"init_from {path} does not exist; point it at a pretraining run's workdir.")
        base = os.path.basename(path)
        if step == "best":  # the run's train.keep_best checkpoint, in WORKDIR/best
            if not os.path.isdir(os.path.join(path, "best")):
                raise CheckpointError(f"init_step=best, but {path} has no best checkpoint (WORKDIR/best: the run did "
                                      f"not set train.keep_best); leave init_step unset for its latest checkpoint.")
            return cls(path, os.path.join(path, "best"), None)
        if os.path.isdir(os.path.join(path, "checkpoints")):
            return cls(path, os.path.join(path, "checkpoints"), step)
        if base.isdigit() and os.path.isdir(os.path.join(path, "state")):
            return cls(path, os.path.dirname(path), int(base))
        if os.path.isdir(path) and any(d.isdigit() for d in os.listdir(path)):
            return cls(path, path, step)
        raise CheckpointError(f"init_from {path} is neither a run's workdir nor a checkpoint step directory; "
                              f"point it at WORKDIR or WORKDIR/checkpoints/STEP of a pretraining run.")

    def restore(self):
        """(the step directory, its step, the saved tree as host arrays, raw: no target needed)."""
        ck = Checkpoints(self.directory, create=False)
        try:
            steps = ck.all_steps()
            if not steps:
                raise CheckpointError(f"init_from {self.path} holds no complete checkpoint; finish the pretraining "
                                      f"run first.")
            step = max(steps) if self.step is None else self.step
            if step not in steps:
                raise CheckpointError(f"init_from {self.path} has no checkpoint at step {step}; it has steps "
                                      f"{sorted(steps)}.")
            try:
                raw = ck.restore_raw(step)
            except CheckpointError as e:  # a damaged checkpoint: the step to pick instead is init_step's
                raise CheckpointError(f"The checkpoint {self.directory}/{step} cannot be read "
                                      f"({type(e.__cause__ or e).__name__}); "
                                      f"it may be damaged: pick another step with init_step.") from e
        finally:
            ck.close()
        return os.path.join(self.directory, str(step)), step, jax.device_get(raw)


PUBLISHED_PREFIXES = ("hf:", "torch:")


class Published:
    """Published weights as an init_from source: `hf:DIR` (a transformers BERT folder) or `torch:FILE` (a
    torchvision / timm ResNet state_dict). The file is read once, on first use, by interop/ (without torch)."""

    def __init__(self, spec: str, kind: str, path: str):
        self.spec, self.kind, self.path, self.step = spec, kind, path, None
        self._imported = None

    @classmethod
    def parse(cls, spec: str) -> "Published":
        kind, _, path = spec.partition(":")
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.exists(path):
            what = "a transformers save_pretrained folder" if kind == "hf" else "a state_dict file"
            raise CheckpointError(f"init_from {spec}: {path} does not exist; point it at {what}.")
        return cls(spec, kind, path)

    @property
    def imported(self):
        if self._imported is None:
            self._imported = (hf_bert if self.kind == "hf" else torch_resnet).read(self.path)
        return self._imported

    @property
    def model(self) -> dict:
        """The config.model fields the weights fix; torch weights also ask for torch's BatchNorm running-variance
        update (bn_unbiased_var), which a config may turn off."""
        model = dict(self.imported.model)
        if self.kind == "torch":
            model.setdefault("bn_unbiased_var", True)
        return model

    @property
    def sha256(self) -> str:
        return self.imported.sha256

    @property
    def tokenizer_dir(self) -> str | None:
        if self.kind != "hf":
            return None
        if self.imported.tokenizer_dir is None:
            raise CheckpointError(f"init_from {self.spec} has no tokenizer files (vocab.txt or tokenizer.json); "
                                  f"download the model's tokenizer into {self.path} as well.")
        return self.imported.tokenizer_dir

    def restore(self):
        """(the weights file, None, the variables in ptft_jax's layout): what graft() takes."""
        imp = self.imported
        return imp.source, None, imp.variables


def load_checkpoint(path: str, step: int | None = None):
    """(source path, step, raw saved tree) from a workdir, its checkpoints/ folder, or a checkpoint step dir."""
    return InitFrom.parse(path, step).restore()


def _cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(base), "ptft_jax", "paths")


def glob_free(directory: str) -> str:
    """`directory`, or where it holds `[`, `*` or `?`, a symlink to it whose path holds none, for Orbax.

    Orbax 0.12.8 joins a checkpoint folder's path with a pattern and globs it (epath's glob is glob.glob): the OCDBT
    merge of a save (serialization/ocdbt_utils.py, `ocdbt.process_*`), the array metadata read of a restore
    (metadata/array_metadata_store.py) and the pending snapshots (path/snapshot/snapshot.py). A folder named
    `run[x]` then matches nothing: the save is renamed into place without its merged manifest and never restores.
    Escaping (glob.escape) cannot help, since Orbax also creates and renames folders under the same path. So Orbax
    gets $XDG_CACHE_HOME/ptft_jax/paths/<sha256 of the path> (~/.cache/...), a link to the real folder (Orbax never
    resolves links above a step folder). The link's name depends on the path alone, so every run and every process
    of a run derives the same one (a host with its own cache folder makes its own link to the same real folder);
    each caller makes it with an atomic rename, so concurrent runs cannot trip over each other. Links are never
    removed (another run may be using one); they are a few bytes each. Orbax's own log lines name the link."""
    if glob.escape(directory) == directory:
        return directory
    root = _cache_root()
    bad = "".join(c for c in "[*?" if c in directory)
    if glob.escape(root) != root:
        raise CheckpointError(f"The checkpoint folder {directory} holds {bad!r} and so does {root}, where ptft_jax "
                              f"keeps its glob-free links for Orbax: rename the workdir or set XDG_CACHE_HOME.")
    alias = os.path.join(root, hashlib.sha256(directory.encode()).hexdigest()[:32])
    try:
        if os.readlink(alias) == directory:
            return alias
    except OSError:
        pass
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
        tmp = f"{alias}.{uuid.uuid4().hex[:12]}.tmp"
        os.symlink(directory, tmp)
        os.replace(tmp, alias)
    except OSError as e:
        raise CheckpointError(f"The checkpoint folder {directory} holds {bad!r}, which Orbax reads as a glob "
                              f"pattern, and its link in {root} cannot be made ({e.strerror or e}): make {root} "
                              f"writable or rename the workdir.") from e
    return alias


@flax.struct.dataclass
class _Saved:
    """What a checkpoint holds of a step.TrainState: all but `frozen` (a LoRA run's base, re-read from init_from),
    under the field names checkpoints have always had."""
    step: Any
    params: Any
    opt_state: Any
    model_state: Any


def _saved(state):
    if not hasattr(state, "frozen"):
        return state
    return _Saved(state.step, state.params, state.opt_state, state.model_state)


class Checkpoints:
    """Orbax's CheckpointManager of TrainStates on `directory`, through a glob-free link where the path needs one
    (glob_free); every message names `directory`, the real folder, never the link. `config` (a dict) is stored in
    every step's metadata, so that a run whose config.json is damaged can still be checked and resumed."""

    def __init__(self, directory: str, keep: int = 3, create: bool = True, config: dict | None = None):
        self.directory = os.path.abspath(directory)
        self.config = config
        self.last_step = None  # the step of the newest save asked for (named when a background save fails)
        _quiet_storage_tracebacks()
        self._orbax_dir = glob_free(self.directory)
        if create and self._orbax_dir != self.directory:
            os.makedirs(self.directory, exist_ok=True)  # Orbax cannot make a folder through a dangling link
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create, enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(self._orbax_dir, options=options,
                                            item_handlers={"state": ocp.StandardCheckpointHandler()})

    def _real(self, text: str) -> str:
        """Orbax's text with the link's path replaced by the real folder's."""
        return text.replace(self._orbax_dir, self.directory)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self):
        return list(self.manager.all_steps())

    def save(self, step: int, state, force: bool = False, extra: dict | None = None) -> bool:
        """Saves `state` as `step`; `extra` (JSON-able, e.g. the text stream's position) is stored beside the config
        in the step's metadata (`stored` reads it back)."""
        self.last_step = int(step)
        state = _saved(state)
        custom = {**({"config": self.config} if self.config else {}), **(extra or {})}
        try:
            return self.manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                                     force=force, custom_metadata=custom or None)
        except Exception as e:  # noqa: BLE001 - filtered by _io_failure, the rest re-raised
            if not _io_failure(e):
                raise
            raise self._save_error(step, e) from e

    def _save_error(self, step, e) -> CheckpointError:
        cause = getattr(e, "strerror", None) or _storage_cause(str(e))
        return CheckpointError(f"Saving the checkpoint of step {step} in {self.directory} failed ({cause}); "
                               f"the earlier checkpoints are intact: free space or fix the folder, then rerun.")

    def saved_config(self, step: int) -> dict | None:
        """The config stored with a step (None for checkpoints written before configs were stored)."""
        try:
            custom = self.manager.metadata(step).custom_metadata or {}
        except Exception:  # noqa: BLE001 - a damaged step's metadata: no copy to offer
            return None
        return custom.get("config")

    def stored(self, step: int, key: str):
        """What `save(..., extra={key: ...})` stored with a step, or None."""
        try:
            return (self.manager.metadata(step).custom_metadata or {}).get(key)
        except Exception:  # noqa: BLE001 - a damaged step's metadata holds nothing to offer
            return None

    def restore(self, step: int, target):
        """Restores into the structure, shapes and shardings of `target` (a state or its abstract twin); a
        TrainState's `frozen` (never saved) is the target's."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _saved(target))
        try:
            with closed_loop_noise_dropped():
                try:
                    out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
                except Exception:
                    time.sleep(0.2)  # the reads still in flight end inside the hook (see closed_loop_noise_dropped)
                    raise
        except Exception as e:  # noqa: BLE001 - reported as one sentence; the caller may fall back
            first = (self._real(str(e)).splitlines() or [type(e).__name__])[0][:200]
            raise CheckpointError(
                f"The checkpoint at {self.directory}/{step} cannot be restored into this config's model and "
                f"optimiser ({type(e).__name__}: {first}); use a new --workdir or the config it was saved with.") from e
        if hasattr(target, "frozen"):
            return type(target)(**{f.name: getattr(out.state, f.name) for f in dataclasses.fields(_Saved)},
                                frozen=target.frozen)
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
        try:
            meta = self.metadata(step)
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
            out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        except Exception as e:  # noqa: BLE001 - reported as one sentence
            first = (self._real(str(e)).splitlines() or [type(e).__name__])[0][:200]
            raise CheckpointError(f"The checkpoint at {self.directory}/{step} cannot be read ({type(e).__name__}: "
                                  f"{first}); it may be damaged: use another step or rerun the training.") from e
        return out.state

    def metadata(self, step: int):
        """The saved tree's shapes and dtypes, without reading the arrays."""
        return self.manager.item_metadata(step).state

    def preempted(self, step: int) -> bool:
        """Whether the cluster announced a preemption (jax.distributed's preemption sync point, as Orbax reads it):
        the loop then saves and stops as for SIGTERM. False where no such service runs."""
        try:
            return bool(self.manager.reached_preemption(step))
        except RuntimeError:  # no preemption sync manager in this jax.distributed setup
            return False

    def wait(self):
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - filtered by _io_failure, the rest re-raised
            if not _io_failure(e):
                raise
            raise self._save_error(self.last_step, e) from e

    def check_committed(self, step: int):
        """Raises a CheckpointError unless the folder, read again from disk, holds the finalized checkpoint of
        `step` with its state: what a run checks before it says it is done."""
        steps = ocp.path.step.checkpoint_steps(self._orbax_dir)
        if step not in steps or not os.path.isdir(os.path.join(self.directory, str(step), "state")):
            raise CheckpointError(f"The final checkpoint of step {step} was not committed in {self.directory} (it "
                                  f"holds steps {sorted(steps) or 'none'}); free space or fix the folder, then rerun "
                                  f"the same command to save it.")

    def close(self):
        self.manager.close()


def _io_failure(e: BaseException) -> bool:
    """Whether a save failed on the storage (a full disk, a read-only or vanished folder): an OSError, or the
    ValueError / RuntimeError that Orbax's TensorStore layer raises for one (`RESOURCE_EXHAUSTED`, `Errno`)."""
    if isinstance(e, OSError):
        return True
    text = str(e)
    return isinstance(e, (ValueError, RuntimeError)) and any(k in text for k in (
        "RESOURCE_EXHAUSTED", "No space left", "Errno", "os_error_code", "PERMISSION_DENIED", "Read-only"))


def _storage_cause(text: str) -> str:
    """'File too large' out of TensorStore's 'OUT_OF_RANGE: Error writing ... : File too large [os_error_code=27]'."""
    m = re.search(r":\s*([^:\[]+?)\s*\[os_error_code", text)
    return m.group(1) if m else text.splitlines()[0][:160]


class _StorageErrorFilter(logging.Filter):
    """Drops Orbax's own traceback of a background save that failed on the storage: the loop reports that failure
    as one sentence (Checkpoints.wait); every other record passes."""

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and "orbax" in record.pathname and _io_failure(exc))


def _quiet_storage_tracebacks():
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _StorageErrorFilter) for f in logger.filters):
        logger.addFilter(_StorageErrorFilter())


@contextlib.contextmanager
def closed_loop_noise_dropped():
    """Orbax reads a checkpoint's arrays in an event loop that it closes as soon as one read fails; the reads still
    in flight then each print an unraisable "RuntimeError: Event loop is closed" traceback on stderr. Those, and
    only those, are dropped while a checkpoint is read."""
    previous = sys.unraisablehook

    def hook(unraisable):
        e = unraisable.exc_value
        if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous
