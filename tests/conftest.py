import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import types

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
DIGITS = os.path.join(CONFIGS, "digits_mlp_pretrain.py")
FINETUNE = os.path.join(CONFIGS, "digits_mlp_finetune.py")
# matplotlib's font cache (and train.compile_cache=auto's folder, were the tests on a GPU) go to one folder per
# session, not to ~/.cache; the subprocesses inherit it.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="ptft_tests_cache_")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], True)
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)


def pytest_collection_modifyitems(config, items):
    """The slow tests first (stable otherwise): on the CI's two xdist workers the long runs start early and the
    short ones fill in around them, instead of one long test running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def launch(*args, devices: int | None = None, timeout: int = 300, env=None) -> subprocess.CompletedProcess:
    """Runs the real launch.py in a subprocess."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=launch_env(devices, env), cwd=ROOT)


def launch_env(devices: int | None = None, env=None) -> dict:
    """The environment launch() gives its subprocess: no XLA_FLAGS of ours, or N fake CPU devices."""
    e = dict(os.environ)
    e.pop("XLA_FLAGS", None)
    if devices:
        e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    e.update(env or {})
    return e


class Log(list):
    def __call__(self, line):
        self.append(line)

    def text(self):
        return "\n".join(self)


@pytest.fixture
def log():
    """A log function that keeps the lines for assertions."""
    return Log()


def quiet(*_):
    """A log function that drops every line."""


# --- reading runs ------------------------------------------------------------------------------------------------

def checkpoint_of(workdir, step=None):
    """(source, step, raw saved tree) of a run's checkpoint (its latest unless `step`)."""
    from ptft_jax.graft import load_checkpoint
    return load_checkpoint(str(workdir), step)


def params_of(workdir, step=None):
    """The saved params of a run's checkpoint (its latest unless `step`)."""
    return checkpoint_of(workdir, step)[2]["params"]


def saved_steps(workdir):
    """The step folders in WORKDIR/checkpoints, sorted."""
    return sorted(int(s) for s in os.listdir(os.path.join(str(workdir), "checkpoints")) if s.isdigit())


def metrics_rows(workdir, split=None):
    """The lines of WORKDIR/metrics.jsonl (those of one split when given)."""
    import json
    with open(os.path.join(str(workdir), "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if split is None or r["split"] == split]


def assert_trees_equal(a, b, exact=True, rtol=1e-4, atol=1e-5):
    """Two trees have the same leaves: bit for bit, or within rtol/atol."""
    import jax
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) and la
    for x, y in zip(la, lb):
        if exact:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        else:
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def digits_images(n=None, start=0):
    """The first n of scikit-learn's 8x8 digits as uint8 images [N, 8, 8, 1] (scaled 0..16 -> 0..255, as the
    `digits` source does) and their labels."""
    from sklearn.datasets import load_digits
    d = load_digits()
    stop = None if n is None else start + n
    return np.round(d.images[start:stop] * 255 / 16).astype(np.uint8)[..., None], d.target[start:stop]


def copy_run(src, dst):
    """A copy of a run's workdir, for a test that writes to it."""
    shutil.copytree(str(src), str(dst))
    return str(dst)


# --- shared runs -------------------------------------------------------------------------------------------------
# A tiny run costs little beyond its XLA compiles, and each distinct number of steps per jitted call is one more
# compile: keep its log / eval / checkpoint boundaries (the eval and checkpoint default to every epoch) at multiples
# of one call size, e.g. 60 steps logged every 30 within a 180-step epoch.

@pytest.fixture(scope="session")
def digits_pretrained(tmp_path_factory):
    """A short pretraining run of the digits MLP recipe (64-256-128-10), 60 steps, checkpoints at steps 30 and
    60, its start summary in .log. Shared by every file: read it, or copy it (copy_run) before writing to it."""
    import ptft_jax
    workdir = str(tmp_path_factory.mktemp("digits_pt") / "run")
    config = ptft_jax.load_config(DIGITS, {"train.steps": 60, "train.checkpoint_every": 30, "train.log_every": 30})
    log = Log()
    result = ptft_jax.train(config, workdir, log=log)
    return types.SimpleNamespace(workdir=workdir, config=config, result=result, log=log)
