"""Pretrain the seed MLP (Dense 256-128, 10-class head, SGD 0.01, 10 epochs) on scikit-learn's 8x8 digits.

    python launch.py --config=configs/digits_mlp_pretrain.py --workdir=runs/digits_pt
"""
from ptft_jax.config import defaults


def get_config():
    c = defaults()
    c.model = dict(name="mlp", hidden=(256, 128))
    c.data.source = "digits"
    c.data.batch_size = 8
    c.data.eval_batch_size = 360
    c.optim.name = "sgd"
    c.optim.lr = 0.01
    c.train.epochs = 10
    return c
