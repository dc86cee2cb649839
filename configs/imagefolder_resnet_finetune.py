"""Fine-tune a pretrained ResNet on your own folder of images (one subfolder per class, or train/ and test/
subfolders holding them; see README "Your own data"). Two presets:

  :imagenet (default)  ResNet-50 from the ImageNet run: random-resized 224 crops + flips, centre crops for
                       evaluation, ImageNet normalisation, SGD momentum 0.9 lr 0.01, cosine, 20 epochs, bfloat16.
  :cifar               ResNet-18 (CIFAR stem) from the CIFAR-10 run: images resized to 32x32, pad-4 crops +
                       flips, CIFAR-10 normalisation, SGD momentum 0.9 nesterov lr 0.02, cosine, 30 epochs.

Every leaf but the head (BatchNorm statistics included) is grafted; the head is new, sized by the folder's
classes. Set data.source and init_from:
    python launch.py --config=configs/imagefolder_resnet_finetune.py --workdir=runs/pets_ft \\
        --config.data.source=folder:/data/pets --config.init_from=runs/imagenet_resnet50_pt
    python launch.py --config=configs/imagefolder_resnet_finetune.py:cifar --workdir=runs/pets32_ft \\
        --config.data.source=folder:/data/pets --config.init_from=runs/cifar10_resnet18_pt
"""
from ptft_jax.config import defaults


def get_config(preset="imagenet"):
    c = defaults()
    c.data.source = "folder:PATH/TO/IMAGES"  # replace: --config.data.source=folder:/your/images
    c.data.val_fraction = 0.1  # selected on 10% of the training data; the test split is evaluated once, at the end
    c.train.keep_best = "val/accuracy"  # the test figure is of the best checkpoint by validation accuracy
    c.data.batch_size = 64
    c.data.eval_batch_size = 200
    c.optim.name = "sgd"
    c.optim.momentum = 0.9
    c.optim.schedule = "cosine"
    c.train.log_every = 20
    c.finetune.strategy = "full"  # or linear_probe (head only); finetune.layer_decay=0.8
    if preset == "imagenet":
        c.model = dict(name="resnet50", stem="imagenet", dtype="bfloat16")
        c.data.mean = (0.485, 0.456, 0.406)
        c.data.std = (0.229, 0.224, 0.225)
        c.data.augment = "inception_crop"
        c.data.image_size = 224
        c.optim.lr = 0.01
        c.optim.weight_decay = 1e-4
        c.train.epochs = 20
        c.init_from = "runs/imagenet_resnet50_pt"
    elif preset == "cifar":
        c.model = dict(name="resnet18", stem="cifar", dtype="float32")
        c.data.mean = (0.4914, 0.4822, 0.4465)
        c.data.std = (0.2470, 0.2435, 0.2616)
        c.data.augment = "crop_flip"
        c.data.image_size = 32
        c.optim.lr = 0.02
        c.optim.nesterov = True
        c.optim.weight_decay = 5e-4
        c.train.epochs = 30
        c.init_from = "runs/cifar10_resnet18_pt"
    else:
        raise ValueError(f"unknown preset {preset!r}: use imagenet or cifar")
    return c
