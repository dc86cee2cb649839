"""The seed's recipe: MLP 784-256-128-10 on TFDS MNIST, SGD 0.01, 10 epochs, read via tfds.data_source.

Prepare the data once (needs TensorFlow): pip install 'ptft_jax[tf]' && python -m ptft_jax.prepare mnist
    python launch.py --config=configs/mnist_mlp_pretrain.py --workdir=runs/mnist_pt
"""
from ptft_jax.config import defaults


def get_config():
    c = defaults()
    c.model = dict(name="mlp", hidden=(256, 128))
    c.data.source = "tfds:mnist"
    c.data.batch_size = 64
    c.data.eval_batch_size = 1000
    c.optim.name = "sgd"
    c.optim.lr = 0.01
    c.train.epochs = 10
    c.train.log_every = 100
    return c
