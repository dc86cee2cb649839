"""Fine-tune the CIFAR-10 ResNet-18 on CIFAR-100: every leaf but the head (BatchNorm statistics included) is
grafted from the CIFAR-10 run, the head is a fresh 100-class layer. SGD momentum 0.9 nesterov, lr 0.02, weight
decay 5e-4, cosine, batch 128, 30 epochs, the same crops and flips. The inputs keep CIFAR-10's normalisation,
the statistics the backbone was trained with.

Prepare the data once (needs TensorFlow): pip install 'ptft_jax[tf]' && python -m ptft_jax.prepare cifar100
    python launch.py --config=configs/cifar10_resnet18_pretrain.py --workdir=runs/cifar10_resnet18_pt
    python launch.py --config=configs/cifar100_resnet18_finetune.py --workdir=runs/cifar100_resnet18_ft \\
        --config.init_from=runs/cifar10_resnet18_pt
"""
from ptft_jax.config import defaults


def get_config():
    c = defaults()
    c.model = dict(name="resnet18", stem="cifar", dtype="float32")  # the same backbone; 100 classes from the data
    c.data.source = "tfds:cifar100"
    c.data.val_fraction = 0.1  # selected on 10% of the training data; the test split is evaluated once, at the end
    c.train.keep_best = "val/accuracy"  # the test figure is of the best checkpoint by validation accuracy
    c.data.mean = (0.4914, 0.4822, 0.4465)  # CIFAR-10's, as in pretraining
    c.data.std = (0.2470, 0.2435, 0.2616)
    c.data.augment = "crop_flip"
    c.data.crop_padding = 4
    c.data.batch_size = 128
    c.data.eval_batch_size = 1000
    c.optim.name = "sgd"
    c.optim.lr = 0.02
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.weight_decay = 5e-4
    c.optim.schedule = "cosine"
    c.train.epochs = 30
    c.train.log_every = 100
    c.init_from = "runs/cifar10_resnet18_pt"
    c.finetune.strategy = "full"  # or linear_probe; finetune.layer_decay=0.8 (blocks block_0..block_7)
    return c
