"""The persistent compilation cache: a second process with the same config loads its executables instead of
compiling them, and the cache can be turned off or pointed elsewhere."""
import json
import os
import subprocess
import sys

import pytest

from ptft_jax import compile_cache

from conftest import CONFIGS, ROOT

# Trains the digits recipe for a few steps in a fresh process and prints the persistent-cache hits JAX recorded.
SCRIPT = """
import json, sys
import jax
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
import ptft_jax
config = ptft_jax.load_config(sys.argv[1], ["train.steps=20", "train.log_every=10"] + sys.argv[3:])
result = ptft_jax.train(config, sys.argv[2], log=lambda line: None)
print(json.dumps({"hits": len(hits), "dir": jax.config.jax_compilation_cache_dir, "accuracy": result["accuracy"]}))
"""


def run(workdir, env, *overrides):
    e = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}
    e.update(env)
    p = subprocess.run([sys.executable, "-c", SCRIPT, os.path.join(CONFIGS, "digits_mlp_pretrain.py"), str(workdir),
                        *overrides], capture_output=True, text=True, timeout=300, env=e, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_second_process_loads_the_compiled_executables(tmp_path):
    cache = tmp_path / "cache"
    first = run(tmp_path / "a", {}, f"train.compile_cache={cache}")
    assert first["dir"] == str(cache)
    entries = sorted(f for f in os.listdir(cache) if f.endswith("-cache"))
    assert first["hits"] == 0 and len(entries) >= 3, entries  # init, the train chunk, eval at least
    second = run(tmp_path / "b", {}, f"train.compile_cache={cache}")
    assert second["hits"] == len(entries), (second, entries)  # every executable the first process compiled
    assert second["accuracy"] == pytest.approx(first["accuracy"])  # same executables, same numbers


def test_auto_is_on_for_accelerators_only(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    default = str(tmp_path / "xdg" / "ptft_jax" / "xla")
    assert compile_cache.folder("auto", "gpu") == compile_cache.folder("auto", "tpu") == default
    assert compile_cache.folder("auto", "cpu") is None
    assert compile_cache.folder("", "gpu") is None and compile_cache.folder(None, "gpu") is None
    assert compile_cache.folder("~/x", "cpu") == os.path.expanduser("~/x")


# What train() runs first (train.build_run -> compile_cache.enable), in a fresh process: its jax settings are new.
ENABLE = """
import json, sys
import jax
from ptft_jax import compile_cache
print(json.dumps({"returned": compile_cache.enable(sys.argv[1]), "dir": jax.config.jax_compilation_cache_dir}))
"""


def enable_in_a_fresh_process(setting, env):
    e = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}
    p = subprocess.run([sys.executable, "-c", ENABLE, setting], capture_output=True, text=True, timeout=120,
                       env={**e, **env}, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_auto_is_off_on_this_cpu_and_jax_setting_wins(tmp_path):
    """(That train() calls enable() with train.compile_cache is shown by the first test, which trains.)"""
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert enable_in_a_fresh_process("auto", env) == {"returned": None, "dir": None}  # auto on this CPU
    assert not (tmp_path / "xdg" / "ptft_jax").exists()
    theirs = enable_in_a_fresh_process(str(tmp_path / "mine"),
                                       {**env, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "theirs")})
    assert theirs == {"returned": str(tmp_path / "theirs"), "dir": str(tmp_path / "theirs")}
    assert not (tmp_path / "mine").exists()
    mine = enable_in_a_fresh_process(str(tmp_path / "mine"), env)
    assert mine == {"returned": str(tmp_path / "mine"), "dir": str(tmp_path / "mine")} and (tmp_path / "mine").is_dir()


def test_an_unusable_cache_folder_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"),
                        f"--config={os.path.join(CONFIGS, 'digits_mlp_pretrain.py')}", f"--workdir={tmp_path / 'run'}",
                        f"--config.train.compile_cache={blocker / 'xla'}"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"})
    assert p.returncode != 0
    assert "Cannot create the compile cache folder" in p.stderr and "train.compile_cache" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
