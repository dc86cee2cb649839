"""The seed's fine-tune on real MNIST, offline: the mnist5k MLP gets a new 2-class head (digit >= 5), SGD 0.001.

    python launch.py --config=configs/mnist5k_mlp_pretrain.py --workdir=runs/mnist5k_pt
    python launch.py --config=configs/mnist5k_mlp_finetune.py --workdir=runs/mnist5k_ft \
        --config.init_from=runs/mnist5k_pt
"""
from ptft_jax.config import defaults


def get_config():
    c = defaults()
    c.model = dict(name="mlp", hidden=(256, 128))
    c.data.source = "mnist5k"
    c.data.val_fraction = 0.1  # selected on 10% of the training data; the test split is evaluated once, at the end
    c.train.keep_best = "val/accuracy"  # the test figure is of the best checkpoint by validation accuracy
    c.data.label_map = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    c.data.batch_size = 8
    c.optim.name = "sgd"
    c.optim.lr = 0.001
    c.train.epochs = 10
    c.init_from = "runs/mnist5k_pt"
    return c
