"""Pretrain a BERT `tiny` (2 layers, hidden 128; standard post-LN) with masked-LM on the docstrings of the installed
Python standard library (data.source=pydocs_mlm: offline, on every machine; the test docstrings of the fine-tuning
task are left out), on CPU in a few minutes. The first half of the offline BERT pair;
configs/pydocs_bert_finetune.py fine-tunes the result to classify docstrings by package.

    python launch.py --config=configs/pydocs_bert_pretrain.py --workdir=runs/pydocs_pt
    python launch.py --config=configs/pydocs_bert_pretrain.py:mini --workdir=runs/pydocs_pt_mini  # 4 x 256, slower

Measured on the idle 2-core dev machine (2026-11-29): 1500 steps of batch 64 x 64 tokens in 191 s, masked-LM
test accuracy 0.172 (loss 5.18; 0.138 at step 500, 0.166 at 1000). Fine-tuned with configs/pydocs_bert_finetune.py
it gives 0.850 test accuracy against 0.746 from a fresh init (see there). The corpus is small (~250k tokens), so
the settings are for learning fast: dropout 0, lr 2e-3 after 100 warmup steps (lr 3e-3 collapsed to a constant
prediction in a trial; the former `mini` recipe, dropout 0.1, lr 1e-3, 300 steps, stayed at the unigram plateau).

A WordPiece vocabulary of at most data.vocab_size tokens is trained on the training texts and saved in
WORKDIR/tokenizer/; the model's vocab_size is left unset, so it is the tokenizer's size (models.build: an unset
model.vocab_size is taken from the tokenizer; a set one must be at least that). Documents are packed into
sequences of data.max_len tokens; 15% of the tokens of each training batch are selected on the host (80% [MASK],
10% random, 10% kept), freshly per (seed, step); the test split is masked once with a fixed seed. Metrics are
the masked-LM loss and accuracy over the selected tokens.
"""
from ptft_jax.config import defaults


def get_config(preset="tiny"):
    c = defaults()
    c.model = dict(name="bert_mlm", size=preset, dropout_rate=0.0)
    c.data.source = "pydocs_mlm"
    c.data.vocab_size = 4000
    c.data.max_len = 64
    c.data.test_fraction = 0.05
    c.data.batch_size = 64
    c.data.eval_batch_size = 256
    c.optim.name = "adamw"
    c.optim.lr = 2e-3
    c.optim.b2 = 0.98
    c.optim.eps = 1e-6
    c.optim.weight_decay = 0.01
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 100
    c.optim.clip_norm = 1.0
    c.train.steps = 1500
    c.train.log_every = 100
    c.train.eval_every = 500
    c.train.checkpoint_every = 1500
    return c
