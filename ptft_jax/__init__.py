"""ptft_jax: pretrain and fine-tune neural networks with JAX/Flax.

    import ptft_jax
    config = ptft_jax.load_config("configs/digits_mlp_pretrain.py", ["optim.lr=0.05"])
    result = ptft_jax.train(config, "runs/digits_pt")      # {"step", "loss", "accuracy", ...} on the test split
    ptft_jax.evaluate(config, "runs/digits_pt")
"""
from ptft_jax.config import apply_overrides, defaults, load_config
from ptft_jax.errors import CheckpointError, ConfigError, DataError, Diverged, Interrupted, UserError
from ptft_jax import sweep
from ptft_jax.graft import GraftError, GraftReport, graft
from ptft_jax.predict import predict
from ptft_jax.train import evaluate, train

__all__ = ["train", "evaluate", "predict", "graft", "GraftReport", "GraftError", "load_config", "apply_overrides", "defaults", "UserError", "ConfigError", "DataError",
           "CheckpointError", "Diverged", "Interrupted"]
