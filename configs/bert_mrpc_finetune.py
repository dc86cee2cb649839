"""Fine-tune a masked-LM BERT on GLUE MRPC, paraphrase detection of sentence pairs (TFDS `glue/mrpc`: sentence1,
sentence2; [CLS] A [SEP] B [SEP] with token type 1 for B). GLUE reports accuracy and F1 (of class 1,
"equivalent"): both are logged. Validation is the test split; AdamW 2e-5, batch 32, 3 epochs.

    python -m ptft_jax.prepare glue/mrpc                      # once, needs the [tf] extra
    python launch.py --config=configs/bert_mrpc_finetune.py --workdir=runs/mrpc --config.init_from=runs/bert_base
"""
from ptft_jax.config import defaults

BERT_GRAFT = [("head/.*", "init"), ("pooler/.*", "load_or_init"), ("mlm/.*", "skip"), (".*", "load")]


def get_config(preset="base"):
    c = defaults()
    c.model = dict(name="bert", size=preset, dropout_rate=0.1, dtype="bfloat16")
    c.data.source = "tfds:glue/mrpc"
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
    c.train.log_every = 20
    c.init_from = "runs/bert_base"
    c.graft = BERT_GRAFT
    return c
