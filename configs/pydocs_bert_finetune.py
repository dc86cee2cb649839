"""Fine-tune the pydocs masked-LM BERT (configs/pydocs_bert_pretrain.py) to classify a standard-library docstring
by its package family (email, asyncio, xml, http, unittest, logging, json, multiprocessing; data.source=pydocs,
fixed seeded stratified split: 1186 train, 297 test). Offline, CPU, a few minutes. The second half of the offline
BERT pair:

    python launch.py --config=configs/pydocs_bert_pretrain.py --workdir=runs/pydocs_pt
    python launch.py --config=configs/pydocs_bert_finetune.py --workdir=runs/pydocs_ft
    python launch.py --config=configs/pydocs_bert_finetune.py --workdir=runs/pydocs_ft_fresh \
        --config.init_from=None --config.graft=None --config.data.vocab=runs/pydocs_pt/tokenizer  # fresh init
    python launch.py --config=configs/pydocs_bert_finetune.py --workdir=runs/pydocs_ft_other \
        --config.init_from=runs/other_pt        # another pretraining run (same model size)

Measured on the shared 2-core dev machine (2026-11-29), from the pretraining recipe, seeds 0 1 2, against the same
config from a fresh init with the same tokenizer (the third command):
  this recipe (lr 1e-3, 10 epochs)       pretrained 0.865 (0.859 0.886 0.852)  fresh 0.825 (0.815 0.828 0.832)
  4 epochs                               pretrained 0.846 (0.835 0.852 0.852)  fresh 0.731 (0.727 0.721 0.744)
  4 epochs at lr 3e-4                    pretrained 0.781 (0.748 0.811 0.785)  fresh 0.390 (0.401 0.387 0.381)
  data.train_per_class=20, batch 16,     pretrained 0.723 (0.741 0.710 0.717)  fresh 0.416 (0.360 0.357 0.532)
    warmup 10 (100 steps)
About 70 s wall a run at 10 epochs under load from another job. Pretraining helps most with few labels or few steps
(tests/test_bert_transfer.py checks the 20-per-class case, shrunk).

The tokenizer is the pretraining run's (init_from's WORKDIR/tokenizer/, copied into this run's WORKDIR/tokenizer/),
so the vocabulary and the embeddings agree; model.vocab_size is left unset and comes from it. The graft loads the
embeddings and every encoder layer, loads the pooler when the checkpoint has one (a masked-LM checkpoint has none,
so it is initialised), creates a fresh classification head and drops the masked-LM head.
"""
from ptft_jax.config import defaults


def get_config(preset="tiny"):
    c = defaults()
    c.model = dict(name="bert", size=preset, dropout_rate=0.1)  # num_classes comes from the data: 8 families
    c.data.source = "pydocs"
    c.data.max_len = 64
    c.data.batch_size = 32
    c.data.eval_batch_size = 300
    c.optim.name = "adamw"
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.01
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 20
    c.train.epochs = 10
    c.train.log_every = 37
    c.init_from = "runs/pydocs_pt"
    c.graft = [("head/.*", "init"), ("pooler/.*", "load_or_init"), ("mlm/.*", "skip"), (".*", "load")]
    return c
