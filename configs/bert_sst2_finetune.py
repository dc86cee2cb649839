"""Fine-tune a masked-LM BERT (configs/bert_mlm_pretrain.py) on GLUE SST-2, single-sentence sentiment (TFDS
`glue/sst2`; GLUE's test labels are hidden, so the validation split is the test split). BERT's recipe: AdamW 2e-5,
batch 32, 3 epochs, 10% warmup, max 128 tokens.

    python -m ptft_jax.prepare glue/sst2                      # once, needs the [tf] extra
    python launch.py --config=configs/bert_sst2_finetune.py --workdir=runs/sst2 --config.init_from=runs/bert_base
    python launch.py --config=configs/bert_sst2_finetune.py:small --workdir=runs/sst2_small \
        --config.init_from=runs/bert_small                    # the preset must match the pretrained model's

The tokenizer is the pretraining run's (init_from's WORKDIR/tokenizer/). The graft loads the embeddings and
every encoder layer, loads the pooler when the checkpoint has one (a masked-LM checkpoint has none: it is
initialised), creates a fresh 2-class head and drops the masked-LM head. Metrics: accuracy.
"""
from ptft_jax.config import defaults

GRAFT = [("head/.*", "init"), ("pooler/.*", "load_or_init"), ("mlm/.*", "skip"), (".*", "load")]


def get_config(preset="base"):
    c = defaults()
    c.model = dict(name="bert", size=preset, dropout_rate=0.1, dtype="bfloat16")
    c.data.source = "tfds:glue/sst2"
    c.data.val_fraction = 0.1  # selected on 10% of the training data; the test split is evaluated once, at the end
    c.train.keep_best = "val/accuracy"  # the test figure is of the best checkpoint by validation accuracy
    c.data.train_split = "train"
    c.data.test_split = "validation"
    c.data.max_len = 128
    c.data.batch_size = 32
    c.data.eval_batch_size = 256
    c.optim.name = "adamw"
    c.optim.lr = 2e-5
    c.optim.eps = 1e-6
    c.optim.weight_decay = 0.01
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = 0.3
    c.train.epochs = 3
    c.train.log_every = 100
    c.init_from = "runs/bert_base"
    c.graft = GRAFT
    return c
