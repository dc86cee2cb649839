"""Masked-LM text packed by lanes (text/stream.py): the streamed batches against an independent materialised packing,
the lane split over processes, resume, reshuffled epochs, bad shards, the tokenizer sample, the index cache."""
import importlib
import json
import os
import shutil

import jax
import numpy as np
import pytest

import ptft_jax
from ptft_jax import tasks
from ptft_jax.text import pack, stream
from ptft_jax.text.dataset import load_masked_lm
from ptft_jax.text.masking import MLMMasking
from ptft_jax.text.tokenizer import WordPieceTokenizer

from conftest import CONFIGS, params_of, quiet

B, L, SEED = 4, 16, 7


def corpus(path, docs=40, seed=0, words=120):
    """A .txt file of `docs` documents (1-3 lines of 1-25 words each), blank lines between them; its texts."""
    rng = np.random.default_rng(seed)
    vocab = [f"tok{i}" for i in range(words)]
    texts = []
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(docs):
            lines = [" ".join(rng.choice(vocab, rng.integers(1, 25))) for _ in range(rng.integers(1, 4))]
            texts.append(" ".join(lines))
            f.write("\n".join(lines) + "\n" * int(rng.integers(2, 4)))
    return texts


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("corpus") / "a.txt")
    texts = corpus(path)
    docs = stream.FileDocuments([path], jsonl=False)
    tok = WordPieceTokenizer.train(texts, vocab_size=150)
    return path, texts, docs, tok


def lanes(docs, tok, ids=None, seed=SEED, workers=2, memory=False):
    ids = np.arange(len(docs)) if ids is None else ids
    tokens = stream.MemoryDocuments(docs, tok, ids, quiet) if memory else stream.Tokens(docs, tok)
    return stream.LaneStream(tokens, ids, tok, L, B, seed, MLMMasking(tok, L, seed), num_workers=workers)


def take(s, start, stop, share=slice(None), state=None, keep_at=()):
    it = s.batches(start, stop, share, state, keep_at)
    try:
        return [next(it) for _ in range(start, stop)]
    finally:
        it.close()


def same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_documents_are_the_blank_line_separated_texts(small):
    _, texts, docs, _ = small
    assert len(docs) == len(texts)
    assert [docs.segments(i)[0] for i in range(len(docs))] == texts


def test_streamed_batches_equal_each_lane_materialised_with_pack(small):
    """Row l of step s is the s-th row of pack() over lane l's documents (positions l, l+B, ... of each epoch's
    seeded permutation, epoch after epoch), masked from default_rng([seed, 2, s, l]); several epochs."""
    _, texts, docs, tok = small
    steps = 60
    got = take(lanes(docs, tok), 0, steps)
    ids = tok.tokenize_batch(texts)
    masking = MLMMasking(tok, L, SEED)
    lengths = []
    for lane in range(B):
        order = [i for e in range(6) for i in np.random.default_rng([SEED, e]).permutation(len(texts))[lane::B]]
        rows = pack([ids[i] for i in order], L, tok.cls_id, tok.sep_id, tok.pad_id)
        assert len(rows["input_ids"]) > steps
        lengths.append(sum(len(ids[i]) + 1 for i in order[:len(texts) // B]))
        for s in range(steps):
            want = masking.mask({k: v[s:s + 1] for k, v in rows.items()}, np.random.default_rng([SEED, 2, s, lane]))
            for k in want:
                np.testing.assert_array_equal(got[s][k][lane:lane + 1], want[k], err_msg=f"{k} step {s} lane {lane}")
    assert steps * (L - 1) > 2 * max(lengths)  # the comparison spans at least two epochs of every lane
    # data.stream=false holds the tokens in memory: the same batches
    same(take(lanes(docs, tok, memory=True, workers=1), 0, steps), got)


def test_two_processes_read_the_rows_of_one_and_resume_from_saved_lane_states(small):
    _, _, docs, tok = small
    s = lanes(docs, tok)
    full = take(s, 0, 30, keep_at={13})
    halves = [take(lanes(docs, tok, workers=1), 0, 30, share) for share in (slice(0, 2), slice(2, 4))]
    same([{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*halves)], full)
    state = s.state_at(13)
    assert state.shape == (B, 3) and state[:, 2].any()  # mid-document: tokens of the current document used
    same(take(lanes(docs, tok), 13, 30, state=state), full[13:])
    # a process of a 2-process run resumes its lanes from the global state another process count saved
    same(take(lanes(docs, tok), 13, 30, slice(2, 4), state=state),
         [{k: v[2:] for k, v in b.items()} for b in full[13:]])


def test_epochs_reshuffle_seeded(small):
    _, _, docs, tok = small
    s = lanes(docs, tok)
    p0, p1 = s.permutation(0), s.permutation(1)
    assert sorted(p0) == sorted(p1) == list(range(len(docs))) and not np.array_equal(p0, p1)
    np.testing.assert_array_equal(lanes(docs, tok).permutation(1), p1)
    assert not np.array_equal(lanes(docs, tok, seed=SEED + 1).permutation(1), p1)
    a, b = take(s, 0, 3), take(lanes(docs, tok, seed=SEED + 1), 0, 3)
    assert not np.array_equal(a[0]["input_ids"], b[0]["input_ids"])


def test_batch_larger_than_documents_is_one_sentence(small):
    _, _, docs, tok = small
    with pytest.raises(ptft_jax.DataError, match="data.batch_size 4 is larger than the 3 training documents"):
        lanes(docs, tok, ids=np.arange(3))


def test_bad_shards_name_the_file_and_byte_offset(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("one two\n\nthree four\n")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text\n\nstill fine\nbroken \xff here\n\nlast one\n")
    offset = bad.read_bytes().index(b"\xff")
    with pytest.raises(ptft_jax.DataError) as e:
        stream.FileDocuments([str(good), str(bad)], jsonl=False)
    assert str(e.value).startswith(f"{bad}: the text at byte offset {offset} is not UTF-8;")
    assert "data.skip_bad_documents=true" in str(e.value) and len(str(e.value).splitlines()) == 1
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ptft_jax.DataError, match=f"^{empty}: the file is empty \\(byte offset 0\\)"):
        stream.FileDocuments([str(empty)], jsonl=False)
    gone = tmp_path / "gone.txt"
    os.symlink(tmp_path / "nowhere", gone)  # listed as a file, but cannot be opened (root reads any mode)
    with pytest.raises(ptft_jax.DataError, match=f"^{gone}: cannot be read at byte offset 0"):
        stream.FileDocuments([str(gone)], jsonl=False)
    lines = tmp_path / "a.jsonl"
    lines.write_text('{"text": "a b"}\n{"text": 3}\n{"text": "c", "text_b": "d"}\n')
    with pytest.raises(ptft_jax.DataError, match=f"^{lines}: the line at byte offset 16 is not a JSON object"):
        stream.FileDocuments([str(lines)], jsonl=True)
    # skip_bad_documents: each bad document (or file) left out and counted
    docs = stream.FileDocuments([str(good), str(bad), str(empty), str(gone)], jsonl=False, skip_bad=True)
    assert docs.skipped == 3
    assert [docs.segments(i)[0] for i in range(len(docs))] == ["one two", "three four", "fine text", "last one"]
    docs = stream.FileDocuments([str(lines)], jsonl=True, skip_bad=True)
    assert docs.skipped == 1 and [docs.segments(i) for i in range(len(docs))] == [("a b",), ("c", "d")]


def mlm_config(source, **extra):
    return ptft_jax.load_config(os.path.join(CONFIGS, "pydocs_bert_pretrain.py") + ":tiny", {
        "data.source": source, "data.max_len": L, "data.vocab_size": 150, "data.batch_size": B,
        "data.eval_batch_size": 16, "data.test_fraction": 0.1, "optim.warmup_steps": 2, "train.steps": 24,
        "train.log_every": 4, "train.eval_every": 100, "train.checkpoint_every": 12, **extra})


def test_tokenizer_sample_bounds_the_texts_and_the_index_is_cached(tmp_path, monkeypatch):
    texts = corpus(tmp_path / "a.txt", docs=60)
    seen = []
    trained = WordPieceTokenizer.train.__func__

    def train(cls, texts, **kw):
        seen.append(list(texts))
        return trained(cls, seen[-1], **kw)
    monkeypatch.setattr(WordPieceTokenizer, "train", classmethod(train))
    cfg = mlm_config(f"text:{tmp_path / 'a.txt'}", **{"data.tokenizer_sample": 9}).data
    ds = load_masked_lm(cfg, str(tmp_path / "w1"), log=quiet)
    assert len(seen[0]) == 9 and set(seen[0]) <= {texts[int(i)] for i in ds.train.ids}
    assert len(ds.train) == 54 and len(ds.test) > 0
    assert len(os.listdir(tmp_path / "w1" / stream.INDEX_DIR)) == 1
    monkeypatch.setattr(stream, "scan", lambda *a, **k: pytest.fail("scanned again"))
    shutil.rmtree(tmp_path / "w1" / "tokenizer")  # (else the run's own tokenizer is loaded, not trained)
    load_masked_lm(cfg, str(tmp_path / "w1"), log=quiet)  # the index comes from the cache, the sample alike
    assert seen[1] == seen[0]


def test_stream_true_needs_a_stream_source():
    with pytest.raises(ptft_jax.ConfigError, match="data.stream=true streams text:, jsonl: or tfds: sources"):
        load_masked_lm(mlm_config("pydocs_mlm", **{"data.stream": True}).data, log=quiet)
    cfg = ptft_jax.load_config(os.path.join(CONFIGS, "digits_mlp_pretrain.py"), {"data.stream": "true"})
    with pytest.raises(ptft_jax.ConfigError, match="data.stream=true streams masked-LM pretraining text"):
        tasks.from_config(cfg).load(cfg.data)


def rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(x) for x in f]


@pytest.mark.slow
def test_stopped_stream_resumes_bit_identical_to_the_in_memory_run(tmp_path, monkeypatch):
    """A streamed run stopped mid-epoch (in-process stop request at step 8) and resumed ends with the metrics and
    params of an uninterrupted data.stream=false run; a bad file is skipped and counted by both."""
    data = tmp_path / "corpus"
    data.mkdir()
    corpus(data / "a.txt", docs=50)
    (data / "b.txt").write_bytes(b"\xfe\xfe not text\n")
    source = f"text:{data}"
    extra = {"data.skip_bad_documents": True}
    ref = ptft_jax.train(mlm_config(source, **extra, **{"data.stream": False}), str(tmp_path / "ref"), log=quiet)

    train_module = importlib.import_module("ptft_jax.train")
    real = train_module.StopRequest

    class StopAt8(real):
        def requested(self):
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == 2:  # the boundaries are steps 4, 8, 12, ...
                self.signum = 15
            return self.signum is not None
    monkeypatch.setattr(train_module, "StopRequest", StopAt8)
    with pytest.raises(ptft_jax.Interrupted, match="at step 8"):
        ptft_jax.train(mlm_config(source, **extra), str(tmp_path / "run"), log=quiet)
    monkeypatch.setattr(train_module, "StopRequest", real)
    out = ptft_jax.train(mlm_config(source, **extra), str(tmp_path / "run"), log=quiet)
    a, b = rows(tmp_path / "ref"), rows(tmp_path / "run")
    drop = ("steps_per_s", "step_memory_bytes")
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == \
        [{k: v for k, v in r.items() if k not in drop} for r in b]
    assert [r["skipped_documents"] for r in b if r["split"] == "train"] == [1] * 6
    assert out["loss"] == ref["loss"]
    for x, y in zip(jax.tree.leaves(params_of(tmp_path / "ref")), jax.tree.leaves(params_of(tmp_path / "run"))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_jsonl_masked_lm_reads_text_and_text_b_without_labels(tmp_path):
    rng = np.random.default_rng(1)
    with open(tmp_path / "a.jsonl", "w") as f:
        for i in range(30):
            row = {"text": " ".join(f"tok{j}" for j in rng.integers(0, 50, 8))}
            if i % 3 == 0:
                row["text_b"] = f"second part {i}"
            f.write(json.dumps(row) + "\n")
    ds = load_masked_lm(mlm_config(f"jsonl:{tmp_path / 'a.jsonl'}", **{"data.stream": False}).data, log=quiet)
    assert len(ds.train) == 27 and ds.name == "a" and not ds.train.streamed
    first = next(iter(ds.train.lanes(4, 0, MLMMasking(ds.tokenizer, L, 0)).batches(0, 1, slice(None))))
    assert first["input_ids"].shape == (4, L) and (first["input_ids"][:, 0] == ds.tokenizer.cls_id).all()
    pair = stream.doc_tokens(ds.tokenizer, [("a b", "c"), ("", "d")])
    sep = ds.tokenizer.sep_id
    assert [list(p).count(sep) for p in pair] == [2, 1]  # each non-empty segment ends with [SEP], as pack() does
