"""Fine-tune a published BERT (a transformers folder: config.json, model.safetensors or pytorch_model.bin, and its
tokenizer) on your CSV / JSONL rows or a TFDS text task. The model's sizes, its dropout rates and its tokenizer
(vocab.txt or tokenizer.json, with tokenizer_config.json's casing) come from the folder; BERT's fine-tuning recipe:
AdamW 2e-5, batch 32, 3 epochs, 10% warmup, 128 tokens.

    huggingface-cli download bert-base-uncased --local-dir weights/bert-base-uncased   # once, where there is network
    python launch.py --config=configs/hf_bert_finetune.py --workdir=runs/my_bert \\
        --config.init_from=hf:weights/bert-base-uncased --config.data.source=csv:my_rows.csv
    python launch.py --config=configs/hf_bert_finetune.py --workdir=runs/sst2_hf \\
        --config.init_from=hf:weights/bert-base-uncased --config.data.source=tfds:glue/sst2 \\
        --config.data.test_split=validation

The graft loads the embeddings and every layer, the pooler when the folder has one, and the classifier head when
the folder holds a classifier with the same number of labels (`load_if_fits`; else the head is new); the masked-LM
head is dropped (and the next-sentence head is never read).
"""
from ptft_jax.config import defaults

GRAFT = [("head/.*", "load_if_fits"), ("pooler/.*", "load_or_init"), ("mlm/.*", "skip"), (".*", "load")]


def get_config():
    c = defaults()
    c.model = dict(name="bert", dtype="bfloat16")  # sizes from the folder's config.json
    c.data.source = "csv:PATH/TO/ROWS.csv"  # replace: csv:/jsonl: text,label[,text_b] rows, or tfds:NAME
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
    c.train.log_every = 50
    c.init_from = "hf:PATH/TO/BERT"  # replace: --config.init_from=hf:weights/bert-base-uncased
    c.graft = GRAFT
    return c
