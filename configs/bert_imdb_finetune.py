"""Fine-tune a masked-LM BERT on IMDB movie reviews, binary sentiment of long texts (TFDS `imdb_reviews`: 25,000
train and 25,000 test reviews). Reviews are truncated to 256 tokens (the model has 512 positions); AdamW 2e-5,
batch 32, 2 epochs.

    python -m ptft_jax.prepare imdb_reviews                   # once, needs the [tf] extra
    python launch.py --config=configs/bert_imdb_finetune.py --workdir=runs/imdb --config.init_from=runs/bert_base
    python launch.py --config=configs/bert_imdb_finetune.py --workdir=runs/imdb_512 \
        --config.init_from=runs/bert_base --config.data.max_len=512 --config.data.batch_size=16
"""
from ptft_jax.config import defaults

BERT_GRAFT = [("head/.*", "init"), ("pooler/.*", "load_or_init"), ("mlm/.*", "skip"), (".*", "load")]


def get_config(preset="base"):
    c = defaults()
    c.model = dict(name="bert", size=preset, dropout_rate=0.1, dtype="bfloat16")
    c.data.source = "tfds:imdb_reviews"
    c.data.train_split = "train"
    c.data.test_split = "test"
    c.data.max_len = 256
    c.data.batch_size = 32
    c.data.eval_batch_size = 128
    c.optim.name = "adamw"
    c.optim.lr = 2e-5
    c.optim.eps = 1e-6
    c.optim.weight_decay = 0.01
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = 0.2
    c.train.epochs = 2
    c.train.log_every = 100
    c.init_from = "runs/bert_base"
    c.graft = BERT_GRAFT
    return c
