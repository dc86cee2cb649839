"""JAX's persistent compilation cache, so that a resume, a rerun or a sweep of the same shapes skips XLA compiles.

`train.compile_cache`: "auto" keeps compiled executables in $XDG_CACHE_HOME/ptft_jax/xla (~/.cache/...) on GPUs and
TPUs, where compiles take the longest; a path keeps them there on any backend; "" turns the cache off. On CPU "auto"
is off: some CPUs reject every executable JAX reloads, with an error line each (jax-ml/jax#38445), for a saving of
about a second a launch. A cache folder already set for JAX (the JAX_COMPILATION_CACHE_DIR environment variable or
`jax.config.update("jax_compilation_cache_dir", ...)`) is left as it is, and so is the first folder set in a
process. Every executable is cached (JAX's default skips compiles under 1 s) and the folder is kept under 4 GiB,
least recently used first. Only process 0 writes. The folder holds code that JAX runs: keep it private.
"""
from __future__ import annotations

import importlib.util
import os

import jax

from ptft_jax.errors import ConfigError

MIN_COMPILE_SECS = 0.0  # JAX's default, 1 s, would skip most CPU compiles (each under a second, many per run)
MAX_BYTES = 4 << 30  # least recently used executables are deleted beyond this (JAX's default: no limit)


def default_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ptft_jax", "xla")


def folder(setting, backend: str) -> str | None:
    """The cache folder that `train.compile_cache` = `setting` asks for on `backend` (None: no cache)."""
    setting = "" if setting is None else str(setting).strip()
    if setting.lower() in ("", "off", "none", "false"):
        return None
    if setting.lower() == "auto":
        return default_dir() if backend != "cpu" else None
    return os.path.abspath(os.path.expanduser(setting))


def enable(setting) -> str | None:
    """Points JAX's persistent cache at the folder `setting` asks for; returns the folder in use (None: off)."""
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    path = folder(setting, jax.default_backend())
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"Cannot create the compile cache folder {path} ({e.strerror}); set "
                          f"train.compile_cache to a writable folder, or to '' to turn the cache off.") from e
    if jax.config.jax_persistent_cache_min_compile_time_secs == 1.0:  # JAX's defaults: not chosen by the user
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
    if jax.config.jax_compilation_cache_max_size == -1 and importlib.util.find_spec("filelock"):  # JAX needs it
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    jax.config.update("jax_compilation_cache_dir", path)
    return path
