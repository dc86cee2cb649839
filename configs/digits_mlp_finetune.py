"""Fine-tune the digits MLP to a 2-class head (digit >= 5), SGD 0.001, from the digits pretraining run.

    python launch.py --config=configs/digits_mlp_pretrain.py --workdir=runs/digits_pt
    python launch.py --config=configs/digits_mlp_finetune.py --workdir=runs/digits_ft --config.init_from=runs/digits_pt

Did it pay off? Test accuracy of the validation-selected checkpoint, mean (each) of 3 seeds, 2026-12-02, from
`python -m bench.finetune_payoff` (a 0.964 pretraining run of configs/digits_mlp_pretrain.py):
  this recipe (SGD 0.001, 10 epochs)          fine-tuned 0.935 (0.936 0.939 0.931)  fresh init 0.899 (0.919 0.894 0.883)
  SGD momentum 0.9, lr 0.01, warmup + cosine  fine-tuned 0.979 (0.981 0.978 0.978)  fresh init 0.975 (0.972 0.978 0.975)
  scikit-learn MLPClassifier((256, 128)) from scratch on the same split: 0.981 (0.986 0.978 0.981)
Pretraining buys 0.036 with this slow recipe and 0.004 with a sound one, which nearly closes the gap on its own.
"""
from ptft_jax.config import defaults


def get_config():
    c = defaults()
    c.model = dict(name="mlp", hidden=(256, 128))  # the head size comes from the data: 2 classes
    c.data.source = "digits"
    c.data.val_fraction = 0.1  # selected on 10% of the training data; the test split is evaluated once, at the end
    c.train.keep_best = "val/accuracy"  # the test figure is of the best checkpoint by validation accuracy
    c.data.label_map = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]  # the new task: is the digit >= 5?
    c.data.batch_size = 8
    c.data.eval_batch_size = 360
    c.optim.name = "sgd"
    c.optim.lr = 0.001
    c.train.epochs = 10
    c.init_from = "runs/digits_pt"
    c.finetune.strategy = "full"  # or linear_probe; finetune.lr_mults=[("dense_.*", 0.1)]; finetune.layer_decay
    return c
