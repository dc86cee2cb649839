"""Fine-tune the tiny digits ResNet-18 to a 2-class head (digit >= 5), grafting everything else (BatchNorm
statistics included) from the digits ResNet pretraining run. Offline, CPU-fast.

    python launch.py --config=configs/digits_resnet_pretrain.py --workdir=runs/digits_resnet_pt
    python launch.py --config=configs/digits_resnet_finetune.py --workdir=runs/digits_resnet_ft \
        --config.init_from=runs/digits_resnet_pt
"""
from ptft_jax.config import defaults


def get_config():
    c = defaults()
    c.model = dict(name="resnet18", width=8, stem="cifar")  # the head size comes from the data: 2 classes
    c.data.source = "digits"
    c.data.val_fraction = 0.1  # selected on 10% of the training data; the test split is evaluated once, at the end
    c.train.keep_best = "val/accuracy"  # the test figure is of the best checkpoint by validation accuracy
    c.data.label_map = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]  # the new task: is the digit >= 5?
    c.data.augment = "crop_flip"
    c.data.crop_padding = 1
    c.data.flip = False  # a mirrored digit is another symbol
    c.data.batch_size = 32
    c.data.eval_batch_size = 360
    c.optim.name = "sgd"
    c.optim.lr = 0.01
    c.optim.momentum = 0.9
    c.optim.weight_decay = 5e-4
    c.optim.schedule = "cosine"
    c.train.epochs = 3
    c.train.log_every = 22
    c.init_from = "runs/digits_resnet_pt"
    return c
