"""Like configs/bert_sst2_finetune.py, on GLUE MRPC: paraphrase detection of sentence pairs (TFDS `glue/mrpc`:
sentence1, sentence2; [CLS] A [SEP] B [SEP] with token type 1 for B). GLUE reports accuracy and F1 (of class 1,
"equivalent"): both are logged. Validation is the test split.

    python -m ptft_jax.prepare glue/mrpc                      # once, needs the [tf] extra
    python launch.py --config=configs/bert_mrpc_finetune.py --workdir=runs/mrpc --config.init_from=runs/bert_base
"""
from ptft_jax.config import recipe


def get_config(preset="base"):
    c = recipe("bert_sst2_finetune", preset)
    c.data.source = "tfds:glue/mrpc"
    c.train.keep_best = "val/f1"  # MRPC is reported by F1
    c.train.log_every = 20
    return c
