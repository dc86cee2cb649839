"""ptft_jax: pretrain and fine-tune neural networks with JAX/Flax.

    import ptft_jax
    config = ptft_jax.load_config("configs/digits_mlp_pretrain.py", ["optim.lr=0.05"])
    result = ptft_jax.train(config, "runs/digits_pt")      # {"step", "loss", "accuracy", ...} on the test split
    ptft_jax.evaluate(config, "runs/digits_pt")

The names below are imported on first use (PEP 562), so `import ptft_jax`, a config error or
`python -m ptft_jax.prepare` do not wait for jax, orbax and grain.
"""
import importlib

from ptft_jax.errors import CheckpointError, ConfigError, DataError, Diverged, Interrupted, UserError

_LAZY = {"train": "ptft_jax.train", "evaluate": "ptft_jax.train", "predict": "ptft_jax.predict",
         "graft": "ptft_jax.graft", "GraftReport": "ptft_jax.graft", "GraftError": "ptft_jax.graft",
         "load_config": "ptft_jax.config", "apply_overrides": "ptft_jax.config", "defaults": "ptft_jax.config"}

__all__ = ["train", "evaluate", "predict", "graft", "GraftReport", "GraftError", "load_config", "apply_overrides",
           "defaults", "sweep", "UserError", "ConfigError", "DataError", "CheckpointError", "Diverged", "Interrupted"]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name == "sweep":
        value = importlib.import_module("ptft_jax.sweep")
    else:
        raise AttributeError(f"module 'ptft_jax' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
