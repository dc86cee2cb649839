"""Like configs/bert_sst2_finetune.py, on IMDB movie reviews: binary sentiment of long texts (TFDS `imdb_reviews`:
25,000 train and 25,000 test reviews), truncated to 256 tokens (the model has 512 positions); 2 epochs.

    python -m ptft_jax.prepare imdb_reviews                   # once, needs the [tf] extra
    python launch.py --config=configs/bert_imdb_finetune.py --workdir=runs/imdb --config.init_from=runs/bert_base
    python launch.py --config=configs/bert_imdb_finetune.py --workdir=runs/imdb_512 \
        --config.init_from=runs/bert_base --config.data.max_len=512 --config.data.batch_size=16
"""
from ptft_jax.config import recipe


def get_config(preset="base"):
    c = recipe("bert_sst2_finetune", preset)
    c.data.source = "tfds:imdb_reviews"
    c.data.test_split = "test"
    c.data.max_len = 256
    c.data.eval_batch_size = 128
    c.optim.warmup_epochs = 0.2
    c.train.epochs = 2
    return c
