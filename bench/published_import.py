"""Importing a BERT-base-sized transformers folder (made by bench/published_make.py): read time, peak RSS and the
classifier logits against transformers' (float32). `PYTHONPATH=. python bench/published_import.py [OUT]`."""
import os
import resource
import sys
import time

import numpy as np

from ptft_jax.interop import hf_bert

out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/bb"
t0 = time.perf_counter()
imp = hf_bert.read(os.path.join(out, "base"))
seconds = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
size = os.path.getsize(os.path.join(out, "base", "model.safetensors")) / 2**20
print(f"read: {seconds:.2f} s, peak RSS after the read {rss:.0f} MiB, file {size:.0f} MiB")

import jax.numpy as jnp  # noqa: E402 - after the read, so that the peak RSS above is the reader's

from ptft_jax import models  # noqa: E402

ref = np.load(os.path.join(out, "ref.npz"))
model = models.build(dict(name="bert", **imp.model), imp.num_classes)
x = {"input_ids": jnp.asarray(ref["ids"], jnp.int32), "token_type_ids": jnp.zeros(ref["ids"].shape, jnp.int32),
     "attention_mask": jnp.asarray(ref["am"], jnp.int32)}
logits = np.asarray(model.apply({"params": imp.variables["params"]}, x))
print(f"max |logits - transformers'| {np.abs(logits - ref['logits']).max():.2e} "
      f"(logits up to {np.abs(ref['logits']).max():.2f})")
