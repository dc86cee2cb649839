"""ResNet-18 (CIFAR stem: 3x3/1 conv, no max-pool; 11,173,962 params) on CIFAR-10: pad-4 random crops and flips,
SGD momentum 0.9 nesterov, lr 0.1, weight decay 5e-4 on kernels, cosine decay, batch 128, 200 epochs.

Prepare the data once (needs TensorFlow): pip install 'ptft_jax[tf]' && python -m ptft_jax.prepare cifar10
    python launch.py --config=configs/cifar10_resnet18_pretrain.py --workdir=runs/cifar10_resnet18_pt
Shorter: --config.train.epochs=30. Faster on GPUs/TPUs: --config.model.dtype=bfloat16.
"""
from ptft_jax.config import defaults


def get_config():
    c = defaults()
    c.model = dict(name="resnet18", stem="cifar", dtype="float32")
    c.data.source = "tfds:cifar10"
    c.data.augment = "crop_flip"
    c.data.crop_padding = 4
    c.data.batch_size = 128
    c.data.eval_batch_size = 1000
    c.optim.name = "sgd"
    c.optim.lr = 0.1
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.weight_decay = 5e-4
    c.optim.schedule = "cosine"
    c.train.epochs = 200
    c.train.log_every = 100
    return c
