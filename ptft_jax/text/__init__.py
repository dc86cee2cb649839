"""Text for BERT: a WordPiece tokenizer (HF `tokenizers`), masked-LM masking and packing, an offline corpus."""
from ptft_jax.text.corpus import pydocs_classification, stdlib_docstrings
from ptft_jax.text.masking import mask_tokens, pack
from ptft_jax.text.tokenizer import SPECIAL_TOKENS, WordPieceTokenizer

__all__ = ["SPECIAL_TOKENS", "WordPieceTokenizer", "mask_tokens", "pack", "pydocs_classification",
           "stdlib_docstrings"]
