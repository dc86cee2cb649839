"""What a reader of a published format hands to the graft: `Imported`."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Imported:
    """Weights from a published format, in ptft_jax's layout, ready to graft."""
    variables: dict                  # {"params": {...}[, "batch_stats": {...}]}: nested dicts of NumPy arrays
    model: dict                      # the config.model fields the weights fix (sizes; a ResNet also its "name")
    source: str                      # the weights file read
    sha256: str                      # of that file
    kind: str                        # bert | bert_classifier | bert_mlm | bert_pretraining | resnet
    num_classes: int | None = None   # the classes of a classifier head in the file (None: no head)
    class_names: tuple | None = None  # id2label in order, where the file's config has names
    tokenizer_dir: str | None = None  # the folder holding the tokenizer files (hf:), if any
    notes: list = dataclasses.field(default_factory=list)  # what was mapped or dropped, for the report
