"""A tiny ResNet-18 (width 8, CIFAR stem, BatchNorm) on scikit-learn's 8x8 digits, offline and CPU-fast (under a
minute): SGD momentum 0.9 nesterov, lr 0.05, weight decay 5e-4 on kernels, cosine, pad-1 random crops (no flips).

    python launch.py --config=configs/digits_resnet_pretrain.py --workdir=runs/digits_resnet_pt
"""
from ptft_jax.config import defaults


def get_config():
    c = defaults()
    c.model = dict(name="resnet18", width=8, stem="cifar")
    c.data.source = "digits"
    c.data.augment = "crop_flip"
    c.data.crop_padding = 1
    c.data.flip = False  # a mirrored digit is another symbol
    c.data.batch_size = 32
    c.data.eval_batch_size = 360
    c.optim.name = "sgd"
    c.optim.lr = 0.05
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.weight_decay = 5e-4
    c.optim.schedule = "cosine"
    c.train.epochs = 6
    c.train.log_every = 22
    return c
