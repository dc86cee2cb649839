"""Fine-tune a published ImageNet ResNet (a torchvision or timm ResNet-18/34/50/101 state_dict: .safetensors, .pth
or .pt) on your folder of images. The depth and width come from the file; torchvision's views: random-resized
224 crops + flips for training, resize 256 + centre crop 224 for evaluation, ImageNet normalisation; SGD momentum
0.9, lr 0.01, cosine, 20 epochs; BatchNorm's running variance updated as torch does it (unbiased).

    wget https://download.pytorch.org/models/resnet50-11ad3fa6.pth -P weights/   # once, where there is network
    python launch.py --config=configs/torchvision_resnet_finetune.py --workdir=runs/pets_tv \\
        --config.init_from=torch:weights/resnet50-11ad3fa6.pth --config.data.source=folder:/data/pets

Every leaf but the head (BatchNorm statistics included) is grafted; the head is new, sized by the folder's classes
(or kept, with `load_if_fits`, when the folder has the file's 1000 classes).
"""
from ptft_jax.config import defaults

GRAFT = [("head/.*", "load_if_fits"), (".*", "load")]


def get_config():
    c = defaults()
    c.model = dict(name="resnet50", stem="imagenet", dtype="bfloat16", bn_unbiased_var=True)  # depth, width: the file's
    c.data.source = "folder:PATH/TO/IMAGES"  # replace: --config.data.source=folder:/your/images
    c.data.val_fraction = 0.1  # selected on 10% of the training data; the test split is evaluated once, at the end
    c.train.keep_best = "val/accuracy"  # the test figure is of the best checkpoint by validation accuracy
    c.data.mean = (0.485, 0.456, 0.406)
    c.data.std = (0.229, 0.224, 0.225)
    c.data.augment = "inception_crop"
    c.data.image_size = 224
    c.data.batch_size = 64
    c.data.eval_batch_size = 200
    c.optim.name = "sgd"
    c.optim.momentum = 0.9
    c.optim.lr = 0.01
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "cosine"
    c.train.epochs = 20
    c.train.log_every = 20
    c.init_from = "torch:PATH/TO/resnet50.pth"  # replace: --config.init_from=torch:weights/resnet50-11ad3fa6.pth
    c.graft = GRAFT
    return c
