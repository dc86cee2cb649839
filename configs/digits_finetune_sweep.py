"""A fine-tuning sweep on digits: learning rate x strategy (full, linear probe, backbone lr x0.1).

    python launch.py --config=configs/digits_mlp_pretrain.py --workdir=runs/digits_pt
    python launch.py --config=configs/digits_finetune_sweep.py --workdir=runs/digits_sweep --sweep
    python launch.py --mode=report --workdir=runs/digits_sweep          # the table again, best first
    python launch.py --config=configs/digits_finetune_sweep.py --workdir=runs/digits_sweep --sweep_print
"""
from ptft_jax import sweep
from ptft_jax.config import recipe


def get_config():
    return recipe("digits_mlp_finetune")  # the base config of every member


def get_sweep():
    strategies = [
        {"finetune.strategy": "full"},
        {"finetune.strategy": "linear_probe"},
        {"finetune.lr_mults": [("dense_.*", 0.1)]},  # backbone at a tenth of the head's rate
    ]
    return sweep.product(sweep.axis("optim.lr", [0.01, 0.001]), strategies)
