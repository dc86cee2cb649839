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
from ptft_jax.config import recipe

GRAFT = [("head/.*", "load_if_fits"), ("pooler/.*", "load_or_init"), ("mlm/.*", "skip"), (".*", "load")]


def get_config():
    c = recipe("bert_sst2_finetune")  # BERT's fine-tuning recipe: AdamW 2e-5, batch 32, 3 epochs, warmup
    c.model = dict(name="bert", dtype="bfloat16")  # sizes and dropout from the folder's config.json
    c.data.source = "csv:PATH/TO/ROWS.csv"  # replace: csv:/jsonl: text,label[,text_b] rows, or tfds:NAME
    c.data.test_split = "test"
    c.train.log_every = 50
    c.init_from = "hf:PATH/TO/BERT"  # replace: --config.init_from=hf:weights/bert-base-uncased
    c.graft = GRAFT
    return c
