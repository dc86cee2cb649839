"""Pretrain BERT with masked-LM on English Wikipedia (TFDS `wikipedia/20230601.en`), BERT's phase-1 recipe:
sequences of 128 tokens, batch 256, AdamW 1e-4 with 10,000 warmup steps, weight decay 0.01, 15% masking.

    python -m ptft_jax.prepare wikipedia/20230601.en          # once: needs the [tf] extra and apache-beam (TFDS
                                                              # builds Wikipedia with a Beam pipeline; hours)
    python launch.py --config=configs/bert_mlm_pretrain.py --workdir=runs/bert_base            # preset base
    python launch.py --config=configs/bert_mlm_pretrain.py:small --workdir=runs/bert_small     # tiny..large
    python launch.py --config=configs/bert_mlm_pretrain.py --workdir=runs/bert_lm1b \
        --config.data.source=tfds:lm1b --config.data.test_split=test  # another corpus

Presets (model.size): tiny (2 x 128), mini (4 x 256), small (4 x 512), medium (8 x 512), base (12 x 768),
large (24 x 1024); compute in bfloat16, params and optimiser state in float32. With `data.vocab` unset a WordPiece
vocabulary of 30,522 tokens is trained on the training texts and saved in WORKDIR/tokenizer/; give
`--config.data.vocab=PATH/vocab.txt` to use a published one (e.g. bert-base-uncased's). `data.whole_word=true`
selects whole words. The last 1% of Wikipedia's only split is held out for the masked-LM test metrics.

The articles are streamed (ptft_jax/text/stream.py): read through `tfds.data_source`, tokenised, packed and
masked per step on `data.num_workers` host threads, so host memory stays flat whatever the corpus size and the
first step starts without a pass over the corpus; a resumed run continues where each row's lane stood. The
tokenizer is trained on `data.tokenizer_sample` (100,000) articles; the test metrics use at most
`data.max_test_documents` (10,000) of the held-out 1%. `data.max_documents` (None: every article) caps the
training articles. BERT used a linear decay; this recipe uses cosine (optim.schedule).
"""
from ptft_jax.config import defaults


def get_config(preset="base"):
    c = defaults()
    c.model = dict(name="bert_mlm", size=preset, dropout_rate=0.1, dtype="bfloat16")
    c.data.source = "tfds:wikipedia/20230601.en"
    c.data.train_split = "train[:99%]"
    c.data.test_split = "train[99%:]"
    c.data.text_fields = "text"
    c.data.vocab_size = 30522
    c.data.max_len = 128
    c.data.batch_size = 256
    c.data.eval_batch_size = 512
    c.optim.name = "adamw"
    c.optim.lr = 1e-4
    c.optim.b2 = 0.999
    c.optim.eps = 1e-6
    c.optim.weight_decay = 0.01
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 10_000
    c.optim.clip_norm = 1.0
    c.train.steps = 1_000_000
    c.train.log_every = 100
    c.train.eval_every = 10_000
    c.train.checkpoint_every = 10_000
    return c
