"""Pretrain the seed MLP (784-256-128-10, SGD 0.01, 10 epochs) on mnist5k: 5,000 real MNIST digits, no download.

    python launch.py --config=configs/mnist5k_mlp_pretrain.py --workdir=runs/mnist5k_pt
"""
from ptft_jax.config import defaults


def get_config():
    c = defaults()
    c.model = dict(name="mlp", hidden=(256, 128))
    c.data.source = "mnist5k"
    c.data.batch_size = 8
    c.optim.name = "sgd"
    c.optim.lr = 0.01
    c.train.epochs = 10
    return c
