"""Masked-LM pretraining text streamed from disk: documents read by index, tokenised, packed and masked per step.

A corpus is never held whole. `FileDocuments` finds every document of `text:` / `jsonl:` files by one scan (a
uint64 byte offset per document: 8 bytes, cached in WORKDIR/stream_index/ by each file's path, size and mtime) and
reads document i with one seek; `TfdsDocuments` reads `tfds.data_source`, random access already;
`MemoryDocuments` holds tokenised documents (data.stream=false), so that both paths give the same batches.

`LaneStream` makes the batches. Row l of every step comes from lane l: lane l packs the documents at positions
l, l+B, l+2B, ... of epoch e's order (`default_rng([seed, e]).permutation(n)`, then epoch e+1's) exactly as
`masking.pack` does: [CLS] + the next max_len-1 tokens of `d0 [SEP] d1 [SEP] ...`. A lane's state is three
integers (epoch, position in the lane's share of the epoch, tokens of that document already used), so the state
of all B lanes, stored with each checkpoint, resumes a run bit for bit; a process runs only the lanes of its rows
(`process_slice`), so any number of processes that divides the batch gives the same global batches, and reads only
the documents its lanes own. Rows are masked from `default_rng([seed, 2, step, lane])`, needing no other row.
Lanes are split over `num_workers` threads; the tokenizer (Rust, `encode_batch`) releases the GIL, so threads are
enough here (bench/text_pipeline.py measures them).
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import queue
import threading
import time
from typing import Any

import numpy as np

from ptft_jax.dataset import Split
from ptft_jax.errors import DataError

INDEX_DIR = "stream_index"
SCAN_CHUNK = 1 << 20  # bytes read at a time by the index scan: larger blocks' temporaries stay in the heap
# (4 MB blocks left +44 MB of RSS after a 500 MB corpus, 1 MB blocks +12 MB; bench/text_pipeline.py)
_SPACE = np.zeros(256, bool)
_SPACE[list(b" \t\r\n\x0b\x0c")] = True  # what makes a line blank (a blank line ends a text: document)
SKIP_HINT = "or set data.skip_bad_documents=true to skip (and count) such documents"


def _every(seconds=10.0):
    """A function that is true at most once every `seconds` (progress lines on long work)."""
    last = [time.perf_counter()]

    def due():
        now = time.perf_counter()
        if now - last[0] >= seconds:
            last[0] = now
            return True
        return False
    return due


# ---- documents ----------------------------------------------------------------------------------------------

def scan(path: str, jsonl: bool, skip_bad: bool, log=print):
    """(start offsets uint64 [n], end of file, offsets of bad documents) of one file: a document is a run of
    non-blank lines (text) or one non-blank line (jsonl, checked to be an object with a "text" string). Bytes that
    are not UTF-8 (or a bad jsonl line) are a DataError naming the file and the byte offset, unless `skip_bad`."""
    starts, bad, pos, carry, prev_blank = [], [], 0, b"", True
    due, t0 = _every(), time.perf_counter()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        while True:
            block = f.read(SCAN_CHUNK)
            data = carry + block
            if not data:
                break
            if block:  # whole lines only (a newline byte never sits inside a UTF-8 sequence)
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    carry = data
                    continue
                data, carry = data[:cut], data[cut:]
            else:
                carry = b""
            arr = np.frombuffer(data, np.uint8)
            nl = np.flatnonzero(arr == 10)
            line_starts = np.concatenate([[0], nl + 1])
            if line_starts[-1] == len(arr):
                line_starts = line_starts[:-1]
            blank = np.add.reduceat(~_SPACE[arr], line_starts, dtype=np.int32) == 0
            new = ~blank if jsonl else ~blank & np.concatenate([[prev_blank], blank[:-1]])
            first = pos + line_starts[new]
            starts.append(first.astype(np.uint64))
            prev_blank = bool(blank[-1])
            for utf8, off in _check_block(data, line_starts[~blank], jsonl):
                if not skip_bad:
                    what = "text at byte offset {} is not UTF-8" if utf8 else \
                        "line at byte offset {} is not a JSON object with a \"text\" string"
                    raise DataError(f"{path}: the {what.format(pos + off)}; fix or remove it, {SKIP_HINT}.")
                bad.append(pos + off)
            pos += len(data)
            if due():
                log(f"indexing {path}: {pos / 2**20:,.0f} of {size / 2**20:,.0f} MB "
                    f"({pos / 2**20 / (time.perf_counter() - t0):,.0f} MB/s)")
    return (np.concatenate(starts) if starts else np.zeros(0, np.uint64)), pos, np.asarray(bad, np.uint64)


def _check_block(data: bytes, line_starts, jsonl: bool):
    """(True, offset in `data`) of bytes that are not UTF-8, then (False, a line's start) of each jsonl line that is
    not an object with a "text" string (checked only in a block that is all UTF-8)."""
    p, clean = 0, True
    while p < len(data):
        try:
            data[p:].decode("utf-8")
            break
        except UnicodeDecodeError as e:
            clean = False
            yield True, p + e.start
            p = data.find(b"\n", p + e.start) + 1 or len(data)
    if not jsonl or not clean:
        return
    for start in line_starts.tolist():
        end = data.find(b"\n", start)
        try:
            r = json.loads(data[start:end if end >= 0 else len(data)])
            if isinstance(r, dict) and isinstance(r.get("text"), str):
                continue
        except ValueError:
            pass
        yield False, int(start)


class FileDocuments:
    """The documents of `text:` (.txt, blank-line separated) or `jsonl:` files, read one at a time by offset."""

    def __init__(self, files, jsonl: bool, cache_dir: str | None = None, skip_bad: bool = False, log=print):
        self.files, self.jsonl, self.skipped = list(files), jsonl, 0
        self._starts, self._ends, counts = [], [], []
        for path in self.files:
            starts, ends = self._index(path, cache_dir, skip_bad, log)
            self._starts.append(starts)
            self._ends.append(ends)  # the end of file when documents end where the next starts (no bad ones)
            counts.append(len(starts))
        self._first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def _index(self, path, cache_dir, skip_bad, log):
        """(starts, ends) of the good documents of `path` (bad ones dropped and counted under skip_bad)."""
        empty = np.zeros(0, np.uint64)
        try:
            st = os.stat(path)
            if st.st_size == 0:
                if not skip_bad:
                    raise DataError(f"{path}: the file is empty (byte offset 0); remove it, {SKIP_HINT}.")
                self.skipped += 1
                return empty, 0
            key = hashlib.sha256(json.dumps([os.path.abspath(path), st.st_size, st.st_mtime_ns, self.jsonl,
                                             skip_bad, 1]).encode()).hexdigest()[:24]
            cached = os.path.join(cache_dir, f"{key}.npz") if cache_dir else None
            try:
                with np.load(cached) as z:
                    starts, end, bad = z["starts"], int(z["end"]), z["bad"]
            except (OSError, ValueError, KeyError, TypeError):
                starts, end, bad = scan(path, self.jsonl, skip_bad, log)
                if cached:
                    self._save(cached, log, starts=starts, end=np.uint64(end), bad=bad)
        except OSError as e:
            if not skip_bad:
                raise DataError(f"{path}: cannot be read at byte offset 0 ({e.strerror or e}); fix or remove the "
                                f"file, {SKIP_HINT}.") from None
            self.skipped += 1
            return empty, 0
        if not len(bad):
            return starts, int(end)
        ends = np.append(starts[1:], np.uint64(end))
        hit = np.unique(np.searchsorted(starts, bad, side="right") - 1)
        hit = hit[hit >= 0]
        keep = np.setdiff1d(np.arange(len(starts)), hit)
        self.skipped += len(hit)
        return starts[keep], ends[keep]

    @staticmethod
    def _save(path, log, **arrays):
        from ptft_jax.files import atomic
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with atomic(path, "wb") as f:
                np.savez(f, **arrays)
        except OSError as e:  # the index only saves time
            log(f"warning: could not cache the document index in {path} ({e.strerror or e})")

    def __len__(self):
        return int(self._first[-1])

    def segments(self, i: int) -> tuple[str, ...]:
        """Document i's texts: one for text (its non-blank lines joined by a space), text (and text_b) for jsonl."""
        f = int(np.searchsorted(self._first, i, side="right") - 1)
        j = i - int(self._first[f])
        starts, ends = self._starts[f], self._ends[f]
        start = int(starts[j])
        end = int(ends[j]) if not isinstance(ends, int) else int(starts[j + 1]) if j + 1 < len(starts) else ends
        path = self.files[f]
        try:
            with open(path, "rb") as fh:
                fh.seek(start)
                raw = fh.read(end - start)
            text = raw.decode("utf-8")
        except OSError as e:
            raise DataError(f"{path}: cannot be read at byte offset {start} ({e.strerror or e}).") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: the text at byte offset {start + e.start} is not UTF-8 (the file changed "
                            f"since it was indexed); fix it and rerun.") from None
        if not self.jsonl:
            return (" ".join(s for s in (line.strip() for line in text.split("\n")) if s),)
        try:
            r = json.loads(text)
            return (r["text"],) if r.get("text_b") is None else (r["text"], str(r["text_b"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise DataError(f"{path}: the line at byte offset {start} is not a JSON object with a \"text\" string "
                            f"(the file changed since it was indexed); fix it and rerun.") from None


class TfdsDocuments:
    """A TFDS split's examples as documents (one or two text fields), through `tfds.data_source`."""

    def __init__(self, source, fields, count: int):
        self.source, self.fields, self.count, self.skipped = source, tuple(fields), int(count), 0

    def __len__(self):
        return self.count

    def segments(self, i: int) -> tuple[str, ...]:
        from ptft_jax.text.sources import _as_str
        r = self.source[int(i)]
        return tuple(_as_str(r[f]) for f in self.fields)


def doc_tokens(tok, segments_list) -> list[np.ndarray]:
    """Each document's token stream as `pack` concatenates it: every non-empty segment followed by [SEP]."""
    flat = [s for segs in segments_list for s in segs]
    ids = tok.tokenize_batch(flat) if flat else []
    out, i, sep = [], 0, [tok.sep_id]
    for segs in segments_list:
        parts = [p for p in ids[i:i + len(segs)] if len(p)]
        i += len(segs)
        out.append(np.asarray([t for p in parts for t in (*p, *sep)], np.int32))
    return out


class Tokens:
    """Token streams of documents read and tokenised on demand (`docs.segments`)."""

    def __init__(self, docs, tok):
        self.docs, self.tok = docs, tok

    def __call__(self, ids) -> list[np.ndarray]:
        return doc_tokens(self.tok, [self.docs.segments(int(i)) for i in ids])


class MemoryDocuments:
    """Token streams held in memory (data.stream=false): every document of `ids` tokenised once at load."""

    def __init__(self, docs, tok, ids, log=print, chunk=20000):
        self._index = {int(d): k for k, d in enumerate(ids)}
        self._tokens, due = [], _every()
        for a in range(0, len(ids), chunk):
            self._tokens += doc_tokens(tok, [docs.segments(int(i)) for i in ids[a:a + chunk]])
            if due():
                log(f"train: tokenised {len(self._tokens):,} of {len(ids):,} documents")

    def __call__(self, ids) -> list[np.ndarray]:
        return [self._tokens[self._index[int(i)]] for i in ids]


# ---- lanes --------------------------------------------------------------------------------------------------

class _Lane:
    """One row of every batch: its documents' tokens in order, cut into max_len-1 token rows."""

    def __init__(self, lane: int, n: int, batch: int, state):
        self.lane, self.n, self.batch = lane, n, batch
        self.epoch, self.pos, self.skip = (int(v) for v in state)  # the next document to fetch; its used tokens
        self.items = collections.deque()  # [epoch, pos, tokens, offset]
        self.have = self.empty = 0  # tokens held; documents in a row that held none

    def next_doc(self):
        e, p = self.epoch, self.pos
        self.pos += 1
        if self.lane + self.pos * self.batch >= self.n:
            self.epoch, self.pos = self.epoch + 1, 0
        return e, p

    def add(self, e, p, tokens):
        off = min(self.skip, len(tokens))
        self.skip = 0
        self.empty = 0 if len(tokens) else self.empty + 1
        if self.empty > self.n // self.batch + 1:  # a whole epoch of this lane's documents without a token
            raise DataError(f"the training documents of lane {self.lane} hold no tokens (an epoch of them is empty "
                            f"text); check the corpus.")
        self.items.append([e, p, tokens, off])
        self.have += len(tokens) - off

    def take(self, n: int) -> np.ndarray:
        out, self.have = [], self.have - n
        while n:
            item = self.items[0]
            got = item[2][item[3]:item[3] + n]
            out.append(got)
            item[3] += len(got)
            n -= len(got)
            if item[3] == len(item[2]):
                self.items.popleft()
        while self.items and self.items[0][3] == len(self.items[0][2]):
            self.items.popleft()
        return np.concatenate(out) if len(out) > 1 else out[0]

    def state(self) -> tuple[int, int, int]:
        """(epoch, position, tokens used) of the next token."""
        if self.items:
            e, p, _, off = self.items[0]
            return e, p, off
        return self.epoch, self.pos, self.skip


class StreamOrder:
    """What the loop needs of a stream's order: steps per epoch (an estimate: documents x mean tokens per document
    of a sample / tokens per batch) and the batch size."""

    def __init__(self, steps_per_epoch: int, batch_size: int):
        self.steps_per_epoch, self.batch_size = max(1, int(steps_per_epoch)), batch_size


class LaneStream:
    """The training batches of a streamed masked-LM run (see the module docstring).

    `ids`: the training documents' indices in `tokens`' numbering; `tokens(ids)` -> their token streams;
    `masking`: a masking.MLMMasking."""

    def __init__(self, tokens, ids, tok, max_len: int, batch_size: int, seed: int, masking, num_workers: int = 1,
                 prefetch: int = 8, skipped: int = 0, steps_per_epoch: int = 1, streamed: bool = True):
        if len(ids) < batch_size:
            raise DataError(f"data.batch_size {batch_size} is larger than the {len(ids)} training documents; every "
                            f"row of a batch reads its own documents: lower data.batch_size or add documents.")
        self.tokens, self.ids, self.n = tokens, ids, len(ids)
        self.cls_id, self.chunk, self.batch, self.seed = tok.cls_id, max_len - 1, batch_size, int(seed)
        self.masking, self.num_workers, self.prefetch = masking, max(1, int(num_workers)), max(1, int(prefetch))
        self.skipped, self.streamed = int(skipped), streamed
        self.order = StreamOrder(steps_per_epoch, batch_size)
        self._perms = collections.OrderedDict()
        self._lock = threading.Lock()
        self._saved = {}  # step -> this process's lane states before that step (at the steps `keep_at` names)

    def permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._perms:
                dtype = np.uint32 if self.n < 2**32 else np.int64
                self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n).astype(dtype)
                while len(self._perms) > 3:
                    self._perms.popitem(last=False)
            return self._perms[epoch]

    def initial_state(self) -> np.ndarray:
        return np.zeros((self.batch, 3), np.int64)

    def _fill(self, lanes, need: int):
        """Reads and tokenises documents until every lane holds `need` tokens (one batch of reads per round)."""
        while True:
            short = [ln for ln in lanes if ln.have < need]
            if not short:
                return
            wanted = [(ln, *ln.next_doc()) for ln in short]
            docs = [self.ids[int(self.permutation(e)[ln.lane + p * self.batch])] for ln, e, p in wanted]
            for (ln, e, p), t in zip(wanted, self.tokens(docs)):
                ln.add(e, p, t)

    def rows(self, lanes, step: int, count: int):
        """[(batch, lane states after it)] of steps step..step+count-1 for these lanes."""
        self._fill(lanes, count * self.chunk)
        out = []
        for s in range(step, step + count):
            ids = np.empty((len(lanes), self.chunk + 1), np.int32)
            ids[:, 0] = self.cls_id
            for r, ln in enumerate(lanes):
                ids[r, 1:] = ln.take(self.chunk)
            states = np.asarray([ln.state() for ln in lanes], np.int64).reshape(len(lanes), 3)
            out.append((self._mask(ids, [ln.lane for ln in lanes], s), states))
        return out

    def _mask(self, ids, lanes, step):
        ones, zeros = np.ones((1, ids.shape[1]), np.int32), np.zeros((1, ids.shape[1]), np.int32)
        rows = [self.masking.mask({"input_ids": ids[r:r + 1], "token_type_ids": zeros, "attention_mask": ones},
                                  np.random.default_rng([self.seed, 2, int(step), int(lane)]))
                for r, lane in enumerate(lanes)]
        return {k: np.concatenate([m[k] for m in rows]) for k in rows[0]}

    def batches(self, start: int, stop: int, share: slice, state=None, keep_at=()):
        """This process's batch of every step start..stop-1 (lanes `share` of the global `state`, None: a fresh
        run), made ahead on `num_workers` threads; the lane states before each step of `keep_at` are kept for
        `state_at` (a checkpoint's)."""
        state = self.initial_state() if state is None else np.asarray(state, np.int64).reshape(self.batch, 3)
        local = list(range(self.batch))[share]
        groups = [g for g in np.array_split(np.asarray(local), self.num_workers) if len(g)]
        keep_at = set(keep_at)
        if start in keep_at:
            self._saved[start] = state[share].copy()
        return _Batches(self, groups, state, start, stop, keep_at)

    def state_at(self, step: int) -> np.ndarray:
        """This process's lane states before `step` (a step of `keep_at` the iterator reached); older ones drop."""
        with self._lock:
            for s in [s for s in self._saved if s < step]:
                del self._saved[s]
            if step not in self._saved:
                raise RuntimeError(f"the stream kept no lane state for step {step}")
            return self._saved[step]

    def _keep(self, step, states):
        with self._lock:
            self._saved[step] = states


class _Batches:
    """The iterator of LaneStream.batches: one thread per group of lanes, each `prefetch` steps ahead."""

    STEPS_PER_ROUND = 4

    def __init__(self, stream, groups, state, start, stop, keep_at):
        self.stream, self.step, self.stop, self.keep_at = stream, start, stop, keep_at
        self._halt = threading.Event()
        self._queues = [queue.Queue(maxsize=stream.prefetch) for _ in groups]
        self._threads = [threading.Thread(target=self._work, args=(q, [_Lane(int(i), stream.n, stream.batch,
                                                                             state[i]) for i in g]),
                                          daemon=True, name="ptft_text_stream") for q, g in zip(self._queues, groups)]
        for t in self._threads:
            t.start()

    def _work(self, q, lanes):
        try:
            step = self.step
            while step < self.stop and not self._halt.is_set():
                count = min(self.STEPS_PER_ROUND, self.stop - step)
                for item in self.stream.rows(lanes, step, count):
                    while not self._halt.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                step += count
        except BaseException as e:  # noqa: BLE001 - raised in the consumer
            q.put((e, None))

    def __iter__(self):
        return self

    def __next__(self):
        if self.step >= self.stop:
            raise StopIteration
        parts = [q.get() for q in self._queues]
        for batch, _ in parts:
            if isinstance(batch, BaseException):
                self.close()
                raise batch
        self.step += 1
        if self.step in self.keep_at:
            self.stream._keep(self.step, np.concatenate([s for _, s in parts]))
        if len(parts) == 1:
            return parts[0][0]
        return {k: np.concatenate([b[k] for b, _ in parts]) for k in parts[0][0]}

    def close(self):
        self._halt.set()
        for t in self._threads:
            t.join(timeout=5)


@dataclasses.dataclass
class StreamSplit(Split):
    """A training split of documents packed by lanes: `tokens(ids)` gives documents' token streams (read from disk,
    or held in memory), `ids` the training documents, `skipped` the bad documents left out (skip_bad_documents),
    `tokens_per_doc` a sample's mean (for the steps of an epoch)."""
    arrays: dict = dataclasses.field(default_factory=dict)  # none held (empty: no image shape, nothing resident)
    tokens: Any = None
    ids: Any = None
    skipped: int = 0
    tokens_per_doc: float = 1.0
    tokenizer: Any = None
    max_len: int = 128
    streamed: bool = True

    def take(self, indices):
        raise NotImplementedError("a StreamSplit is read by lanes (LaneStream), not by index")

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, int(round(self.size * self.tokens_per_doc / (batch_size * (self.max_len - 1)))))

    def order(self, batch_size: int) -> StreamOrder:
        return StreamOrder(self.steps_per_epoch(batch_size), batch_size)

    def lanes(self, batch_size: int, seed: int, masking, num_workers: int = 1, prefetch: int = 8) -> LaneStream:
        return LaneStream(self.tokens, self.ids, self.tokenizer, self.max_len, batch_size, seed, masking,
                          num_workers, prefetch, self.skipped, self.steps_per_epoch(batch_size), self.streamed)
