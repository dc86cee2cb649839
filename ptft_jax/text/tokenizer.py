"""A BERT WordPiece tokenizer on HF `tokenizers`: train on texts or load a `vocab.txt`; encode to padded arrays.

    tok = WordPieceTokenizer.train(texts, vocab_size=8000, lowercase=True)
    tok.save(workdir)                                    # writes workdir/vocab.txt (+ tokenizer_config.json)
    tok = WordPieceTokenizer.load(workdir)               # or a BERT vocab.txt, or a Hugging Face tokenizer folder
    batch = tok.encode(["a sentence", ...], max_len=128)             # single sentences
    batch = tok.encode(["first", ...], ["second", ...], max_len=128)  # pairs: [CLS] A [SEP] B [SEP]
    # batch = {"input_ids", "token_type_ids", "attention_mask"}: int32 [N, max_len], padded with [PAD]

The vocabulary starts with [PAD] [UNK] [CLS] [SEP] [MASK] (ids 0..4) when trained here; a loaded vocab.txt keeps
its own ids (the published BERT vocabularies have [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103).
"""
from __future__ import annotations

import collections
import json
import os
import threading
from typing import Iterable, Sequence

import numpy as np

from ptft_jax.errors import ConfigError, DataError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
VOCAB_FILE = "vocab.txt"
CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_JSON = "tokenizer.json"


def _build(vocab: dict | None, lowercase: bool, strip_accents: bool | None = None, chinese_chars: bool = True):
    """BERT's pipeline, as transformers' BertTokenizer builds it from the same three flags."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    model = models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100) if vocab is not None else \
        models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=chinese_chars,
                                                strip_accents=strip_accents, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not readable JSON ({e}).") from None


def _flags(folder: str) -> tuple[dict, dict | None]:
    """(the normalisation flags a folder records, tokenizer.json's WordPiece vocabulary or None).
    tokenizer_config.json (do_lower_case, strip_accents, tokenize_chinese_chars) first, as transformers reads it,
    then tokenizer.json's BertNormalizer."""
    flags, vocab = {}, None
    tj = os.path.join(folder, TOKENIZER_JSON)
    if os.path.isfile(tj):
        data = _read_json(tj)
        model = data.get("model") or {}
        if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
            raise DataError(f"{tj} holds a {model.get('type')} tokenizer; BERT's is WordPiece.")
        vocab = {str(t): int(i) for t, i in model["vocab"].items()}
        norm = data.get("normalizer") or {}
        if norm.get("type") == "BertNormalizer":
            flags = {"lowercase": norm.get("lowercase"), "strip_accents": norm.get("strip_accents"),
                     "chinese_chars": norm.get("handle_chinese_chars")}
            flags = {k: v for k, v in flags.items() if v is not None or k == "strip_accents"}
    conf = os.path.join(folder, CONFIG_FILE)
    if os.path.isfile(conf):
        c = _read_json(conf)
        for ours, theirs in (("lowercase", "do_lower_case"), ("strip_accents", "strip_accents"),
                             ("chinese_chars", "tokenize_chinese_chars")):
            if theirs in c:
                flags[ours] = c[theirs]
    return flags, vocab


class WordPieceTokenizer:
    """BERT tokenisation (BertNormalizer + BertPreTokenizer + WordPiece) with [CLS]/[SEP] templates."""

    def __init__(self, tokenizer, lowercase: bool = True, strip_accents: bool | None = None,
                 chinese_chars: bool = True):
        from tokenizers import processors
        # transformers' do_lower_case, strip_accents (None: as lowercase) and tokenize_chinese_chars
        self.lowercase, self.strip_accents, self.chinese_chars = bool(lowercase), strip_accents, bool(chinese_chars)
        self._tok = tokenizer
        self._lock = threading.Lock()  # encode() switches padding/truncation on the shared tokenizer
        for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
            if tokenizer.token_to_id(t) is None:
                raise DataError(f"the vocabulary lacks the special token {t}; a BERT vocab.txt needs all of "
                                f"{', '.join(SPECIAL_TOKENS)}.")
        tokenizer.add_special_tokens(list(SPECIAL_TOKENS))  # keeps their ids; decode() can skip them
        cls, sep = self.cls_id, self.sep_id
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)])

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 30522, lowercase: bool = True,
              min_frequency: int = 2, limit_alphabet: int = 1000) -> "WordPieceTokenizer":
        """Learns a WordPiece vocabulary of at most `vocab_size` tokens (special tokens first) from `texts`."""
        from tokenizers import trainers
        if vocab_size < len(SPECIAL_TOKENS) + 1:
            raise ConfigError(f"vocab_size {vocab_size} is too small; it must exceed the {len(SPECIAL_TOKENS)} "
                              f"special tokens.")
        texts = list(texts)
        tok = _build(None, lowercase)
        # tokenizers' trainer numbers the `##c` continuation pieces in hash-map order, different in every process,
        # and breaks ties between equally frequent merges by those numbers, so the same texts can give another
        # vocabulary (huggingface/tokenizers#1794). Giving it the `##c` of every alphabet character up front, in
        # sorted order, makes the numbering and hence the vocabulary the same in every process.
        chars = collections.Counter()
        for t in texts:
            chars.update(tok.normalizer.normalize_str(t))
        alphabet = sorted(c for c, _ in sorted(chars.items(), key=lambda kv: (-kv[1], kv[0]))[:limit_alphabet]
                          if not c.isspace())
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=list(SPECIAL_TOKENS) + ["##" + c for c in alphabet],
                                            limit_alphabet=limit_alphabet, continuing_subword_prefix="##",
                                            show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        # Then number the special tokens first and the rest sorted, so that vocab.txt is the same file too.
        tokens = set(tok.get_vocab(with_added_tokens=True)) - set(SPECIAL_TOKENS)
        vocab = {t: i for i, t in enumerate(list(SPECIAL_TOKENS) + sorted(tokens))}
        return cls(_build(vocab, lowercase), lowercase)

    @classmethod
    def from_vocab(cls, vocab_file: str, lowercase: bool = True, strip_accents: bool | None = None,
                   chinese_chars: bool = True) -> "WordPieceTokenizer":
        """A BERT vocab.txt (one token a line; the line number is the id)."""
        if not os.path.isfile(vocab_file):
            raise DataError(f"{vocab_file} does not exist; give a BERT vocab.txt or a directory holding one.")
        with open(vocab_file, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]
        while tokens and tokens[-1] == "":
            tokens.pop()
        vocab = {}
        for i, t in enumerate(tokens):
            vocab.setdefault(t, i)
        return cls(_build(vocab, lowercase, strip_accents, chinese_chars), lowercase, strip_accents, chinese_chars)

    @classmethod
    def load(cls, path: str, lowercase: bool | None = None) -> "WordPieceTokenizer":
        """From a directory written by `save`, a Hugging Face tokenizer folder (vocab.txt, or tokenizer.json when
        there is no vocab.txt; the flags of tokenizer_config.json), or a vocab.txt itself.

        `lowercase` None: the folder's own do_lower_case (True when it records none); an explicit value that
        contradicts the folder's is a ConfigError (the vocabulary was built for the other casing)."""
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        flags, json_vocab = _flags(folder)
        own = flags.get("lowercase")
        if lowercase is not None and own is not None and bool(lowercase) != bool(own):
            raise ConfigError(f"data.lowercase is {bool(lowercase)} but the vocabulary in {folder} was made with "
                              f"do_lower_case {bool(own)}; leave data.lowercase unset to use the vocabulary's own.")
        lowercase = bool(own if own is not None else True if lowercase is None else lowercase)
        args = (lowercase, flags.get("strip_accents"), bool(flags.get("chinese_chars", True)))
        vocab_file = os.path.join(path, VOCAB_FILE) if os.path.isdir(path) else path
        if os.path.isdir(path) and not os.path.isfile(vocab_file) and json_vocab is not None:
            return cls(_build(json_vocab, *args), *args)
        if os.path.isdir(path) and not os.path.isfile(vocab_file):
            raise DataError(f"{path} holds no vocabulary: neither {VOCAB_FILE} nor {TOKENIZER_JSON}.")
        return cls.from_vocab(vocab_file, *args)

    def save(self, directory: str, model_max_length: int | None = None) -> str:
        """Writes directory/vocab.txt (ids in order) and tokenizer_config.json (the flags, under transformers'
        names, so that AutoTokenizer loads the folder alike); returns the vocab.txt path."""
        os.makedirs(directory, exist_ok=True)
        vocab = self._tok.get_vocab(with_added_tokens=True)
        by_id = sorted(vocab.items(), key=lambda kv: kv[1])
        if [i for _, i in by_id] != list(range(len(by_id))):
            raise DataError("the vocabulary ids are not contiguous 0..V-1; it cannot be saved as a vocab.txt.")
        path = os.path.join(directory, VOCAB_FILE)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(t + "\n" for t, _ in by_id)
        os.replace(tmp, path)
        conf = {"tokenizer_class": "BertTokenizer", "do_lower_case": self.lowercase,
                "strip_accents": self.strip_accents, "tokenize_chinese_chars": self.chinese_chars,
                "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                "mask_token": "[MASK]"}  # no "vocab_size" or "model": transformers takes them as attributes
        if model_max_length:
            conf["model_max_length"] = int(model_max_length)
        with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(conf, f, indent=1)
        return path

    # ---- vocabulary -----------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(int(i))

    pad_id = property(lambda self: self._tok.token_to_id("[PAD]"))
    unk_id = property(lambda self: self._tok.token_to_id("[UNK]"))
    cls_id = property(lambda self: self._tok.token_to_id("[CLS]"))
    sep_id = property(lambda self: self._tok.token_to_id("[SEP]"))
    mask_id = property(lambda self: self._tok.token_to_id("[MASK]"))

    @property
    def special_ids(self) -> tuple[int, ...]:
        return tuple(self._tok.token_to_id(t) for t in SPECIAL_TOKENS)

    def continuation_mask(self) -> np.ndarray:
        """bool [V]: True for WordPiece continuation tokens (`##...`), for whole-word masking."""
        out = np.zeros(self.vocab_size, bool)
        for t, i in self._tok.get_vocab(with_added_tokens=True).items():
            out[i] = t.startswith("##")
        return out

    # ---- encoding -------------------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` without [CLS]/[SEP] (for packing documents)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def tokenize_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode(self, texts: Sequence[str] | str, pairs: Sequence[str] | str | None = None,
               max_len: int = 128) -> dict[str, np.ndarray]:
        """Padded int32 [N, max_len] input_ids, token_type_ids and attention_mask; long inputs are truncated
        (pairs: the longer segment first) so that [CLS] and the [SEP]s always remain."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if pairs is not None:
            pairs = [pairs] if isinstance(pairs, str) else list(pairs)
            if len(pairs) != len(texts):
                raise DataError(f"{len(texts)} first segments but {len(pairs)} second segments.")
        if max_len < (5 if pairs is not None else 3):
            raise ConfigError(f"max_len {max_len} leaves no room for tokens after [CLS]/[SEP].")
        with self._lock:
            self._tok.enable_truncation(max_length=max_len, strategy="longest_first")
            self._tok.enable_padding(length=max_len, pad_id=self.pad_id, pad_token="[PAD]", pad_type_id=0)
            try:
                enc = self._tok.encode_batch(texts if pairs is None else list(zip(texts, pairs)))
            finally:
                self._tok.no_truncation()
                self._tok.no_padding()
        out = {"input_ids": np.array([e.ids for e in enc], np.int32).reshape(len(texts), max_len),
               "token_type_ids": np.array([e.type_ids for e in enc], np.int32).reshape(len(texts), max_len),
               "attention_mask": np.array([e.attention_mask for e in enc], np.int32).reshape(len(texts), max_len)}
        return out

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def normalize(self, text: str) -> str:
        """The text as the tokenizer sees it (cleaned, lower-cased when configured)."""
        return self._tok.normalizer.normalize_str(text)
