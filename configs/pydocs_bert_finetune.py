"""Fine-tune the pydocs masked-LM BERT (configs/pydocs_bert_pretrain.py) to classify a standard-library docstring
by its package family (email, asyncio, xml, http, unittest, logging, json, multiprocessing; data.source=pydocs,
fixed seeded stratified split). Offline, CPU, a few minutes. The second half of the offline BERT pair:

    python launch.py --config=configs/pydocs_bert_pretrain.py --workdir=runs/pydocs_pt
    python launch.py --config=configs/pydocs_bert_finetune.py --workdir=runs/pydocs_ft
    python launch.py --config=configs/pydocs_bert_finetune.py --workdir=runs/pydocs_ft_other \
        --config.init_from=runs/other_pt        # another pretraining run (same model size)

The tokenizer is the pretraining run's (init_from's WORKDIR/tokenizer/, copied into this run's WORKDIR/tokenizer/),
so the vocabulary and the embeddings agree; model.vocab_size is left unset and comes from it. The graft loads the
embeddings and every encoder layer, creates a fresh pooler and classification head and drops the masked-LM head.
"""
from ptft_jax.config import defaults


def get_config(preset="mini"):
    c = defaults()
    c.model = dict(name="bert", size=preset, dropout_rate=0.1)  # num_classes comes from the data: 8 families
    c.data.source = "pydocs"
    c.data.max_len = 64
    c.data.batch_size = 32
    c.data.eval_batch_size = 300
    c.optim.name = "adamw"
    c.optim.lr = 3e-4
    c.optim.weight_decay = 0.01
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 20
    c.train.epochs = 4
    c.train.log_every = 37
    c.init_from = "runs/pydocs_pt"
    c.graft = [("head/.*", "init"), ("pooler/.*", "init"), ("mlm/.*", "skip"), (".*", "load")]
    return c
