"""A BERT-base-sized transformers folder for bench/published_import.py. Run with a Python that has torch and
transformers (e.g. /work/refvenv/bin/python bench/published_make.py [OUT]); writes OUT/base (default /tmp/bb) and
the reference logits of 4 sequences of 64 tokens, one padded."""
import os
import sys

import numpy as np
import torch
import transformers

out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/bb"
torch.manual_seed(0)
model = transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=2)).eval()
with torch.no_grad():
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.01)  # away from the init, so that a wrong mapping shows
model.save_pretrained(os.path.join(out, "base"))
rng = np.random.default_rng(0)
ids = rng.integers(0, 30522, (4, 64))
mask = np.ones((4, 64), np.int64)
mask[1, 40:] = 0
with torch.no_grad():
    logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
np.savez(os.path.join(out, "ref.npz"), ids=ids, am=mask, logits=logits)
