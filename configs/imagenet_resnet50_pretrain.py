"""ResNet-50 v1.5 on ImageNet (TFDS imagenet2012), the standard 90-epoch recipe (Goyal et al. 2017): SGD momentum
0.9, batch 1024, lr 0.4 (= 0.1 x 1024 / 256) with 5 warmup epochs then cosine decay, weight decay 1e-4 on
kernels only, label smoothing 0.1, the last BatchNorm of each residual branch zero-initialised, random-resized
224 crops + flips for training, resize to 256 + centre 224 crop for evaluation, bfloat16 compute (params and
optimiser state float32). Expect about 76-77% top-1.

Prepare the data once (needs TensorFlow, and the ImageNet tar files in ~/tensorflow_datasets/downloads/manual/):
    pip install 'ptft_jax[tf]' && python -m ptft_jax.prepare imagenet2012
    python launch.py --config=configs/imagenet_resnet50_pretrain.py --workdir=runs/imagenet_resnet50_pt
The global batch is split over every device of every process; JPEG decoding and cropping run on host threads
(data.num_threads), so give the host enough cores.
"""
from ptft_jax.config import defaults


def get_config():
    c = defaults()
    c.model = dict(name="resnet50", stem="imagenet", zero_init_residual=True, dtype="bfloat16")
    c.data.source = "tfds:imagenet2012"
    c.data.train_split = "train"
    c.data.test_split = "validation"
    c.data.mean = (0.485, 0.456, 0.406)
    c.data.std = (0.229, 0.224, 0.225)
    c.data.augment = "inception_crop"
    c.data.image_size = 224
    c.data.batch_size = 1024
    c.data.eval_batch_size = 1000
    c.data.num_threads = 16
    c.data.prefetch = 4
    c.optim.name = "sgd"
    c.optim.lr = 0.4
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = 5.0
    c.train.label_smoothing = 0.1
    c.train.epochs = 90
    c.train.log_every = 100
    return c
