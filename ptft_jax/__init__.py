"""ptft_jax: pretrain and fine-tune neural networks with JAX/Flax.

    import ptft_jax
    config = ptft_jax.load_config("configs/digits_mlp_pretrain.py", ["optim.lr=0.05"])
    result = ptft_jax.train(config, "runs/digits_pt")      # {"step", "loss", "accuracy", ...} on the test split
    ptft_jax.evaluate(config, "runs/digits_pt")

The API is imported on first use (PEP 562), so `import ptft_jax`, `import ptft_jax.text`, a config error or
`python -m ptft_jax.prepare` do not wait for jax, orbax and grain.
"""
import importlib
import sys
import types

from ptft_jax.errors import CheckpointError, ConfigError, DataError, Diverged, Interrupted, UserError

_API = {"train": "ptft_jax.train", "evaluate": "ptft_jax.train", "predict": "ptft_jax.predict",
        "graft": "ptft_jax.graft", "GraftReport": "ptft_jax.graft", "GraftError": "ptft_jax.graft",
        "load_config": "ptft_jax.config", "apply_overrides": "ptft_jax.config", "defaults": "ptft_jax.config"}

__all__ = [*_API, "sweep", "UserError", "ConfigError", "DataError", "CheckpointError", "Diverged", "Interrupted"]


_SET = {}  # names assigned by a user (e.g. a test's monkeypatch)


def _api(name: str):
    def get(module):
        return _SET[name] if name in _SET else getattr(importlib.import_module(_API[name]), name)

    def set_(module, value):
        # importing the submodule of the same name (ptft_jax.train, .predict, .graft) sets this attribute to the
        # module: the name stays the function
        if not isinstance(value, types.ModuleType):
            _SET[name] = value
    return property(get, set_)


class _Package(types.ModuleType):
    """`ptft_jax.train`, `.predict` and `.graft` are the functions, though modules of those names exist too."""


for _name in _API:
    setattr(_Package, _name, _api(_name))


def __getattr__(name):
    if name == "sweep":
        return importlib.import_module("ptft_jax.sweep")
    raise AttributeError(f"module 'ptft_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


sys.modules[__name__].__class__ = _Package
