"""The masked-LM text stream (ptft_jax/text/stream.py) on generated corpora: `python -m bench.text_pipeline`.

A seeded generator writes corpora of 50 MB and 500 MB (--sizes) of words drawn Zipf-like (p ~ 1/rank^1.1) from a
fixed vocabulary of 20,000 made-up words, ~12 words a line, ~200 words a document, a blank line between documents,
into a temporary folder (deleted at the end). A WordPiece vocabulary is trained once on 20,000 documents of the
first corpus (timed, reported). Each (size, workers) cell then runs in its own subprocess, so that its peak RSS
(VmHWM; also VmRSS once the tokenizer is loaded and at the end) is its own: index the
corpus (no cache), split it, build the lanes (batch 256 x 128, BERT-base's), time the first batch, then the next
--steps batches (steady tokens/s = (steps - 4) x 256 x 128 / time, a lower bound: with a prefetch of one batch
each worker may hold up to 4 batches made before the clock starts). "1 worker": one lane thread and
RAYON_NUM_THREADS=1 (the tokenizer's own pool), i.e. one core; "N workers": N lane threads and the tokenizer's
default pool, over the machine's cores. Per-core rates are those divided by the cores used; the issue's target is
per-core x 16 >= 704,000 tokens/s (BERT-base at 5,500 sequences/s x 128 on an H200).

`python -m bench --only text_pipeline` runs the same as a row of the main table (bench/run.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, MAX_LEN, TARGET = 256, 128, 704_000


def make_corpus(path: str, mb: float, seed: int = 0, words: int = 20_000) -> int:
    """Writes about `mb` MB of generated text to `path`; returns the bytes written."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = np.array(["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(words)], dtype=object)
    p = 1.0 / np.arange(1, words + 1) ** 1.1
    p /= p.sum()
    seps = np.array([" ", "\n", "\n\n"], dtype=object)  # ~12 words a line, ~200 a document
    written, target = 0, int(mb * 2**20)
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            n = 1_000_000
            text = "".join((vocab[rng.choice(words, n, p=p)] + seps[rng.choice(3, n, p=[0.912, 0.083, 0.005])])
                           .tolist())
            f.write(text)
            written += len(text)
    return written


def rss_now_mb(field: str = "VmRSS") -> float:
    """This process's resident set now (VmRSS) or its peak (VmHWM), MB. (getrusage's ru_maxrss would do for the
    peak but for fork + exec: Linux keeps the parent's high-water mark in the child's, here the ~135 MB of the
    process that generated the corpora.)"""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def measure(folder: str, vocab: str, workers: int, steps: int) -> dict:
    """One cell, in this process: see the module docstring."""
    from ptft_jax.text.masking import MLMMasking
    from ptft_jax.text.stream import FileDocuments, LaneStream, Tokens, _Batches
    from ptft_jax.text.tokenizer import WordPieceTokenizer
    tok = WordPieceTokenizer.load(vocab)
    rss0 = rss_now_mb()
    t0 = time.perf_counter()
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".txt"))
    docs = FileDocuments(files, jsonl=False, log=lambda *_: None)
    t_index = time.perf_counter() - t0
    ids = np.arange(len(docs), dtype=np.uint32)  # (the training documents: all of them here)
    lanes = LaneStream(Tokens(docs, tok), ids, tok, MAX_LEN, BATCH, 0, MLMMasking(tok, MAX_LEN, 0),
                       num_workers=workers, prefetch=1)
    it = lanes.batches(0, steps + 1, slice(None))
    next(it)
    t_first = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(steps):
        next(it)
    steady = time.perf_counter() - t1
    it.close()
    # When the first batch came, each worker may have made up to `ahead` more (a round of batches, one queued):
    # those are not counted, so the rate is a lower bound.
    ahead = 1 + _Batches.STEPS_PER_ROUND - 1
    return dict(documents=len(docs), index_s=t_index, first_batch_s=t_first,
                tokens_per_s=(steps - ahead) * BATCH * MAX_LEN / steady, steady_s=steady,
                rss_mb=rss_now_mb("VmHWM"), rss_start_mb=rss0,
                rss_end_mb=rss_now_mb())


def cell(folder, vocab, workers, steps, one_core: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if one_core:
        env["RAYON_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-m", "bench.text_pipeline", "--measure", folder, "--vocab", vocab,
                          "--workers", str(workers), "--steps", str(steps)], capture_output=True, text=True,
                         env=env, cwd=ROOT, check=False)
    if out.returncode:
        raise RuntimeError(f"measuring {folder} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(sizes=(50, 500), steps: int = 80, workers: int | None = None, log=print) -> dict:
    """Every (size, 1 worker | N workers) cell; the corpora are deleted afterwards."""
    from ptft_jax.text.stream import FileDocuments
    from ptft_jax.text.tokenizer import WordPieceTokenizer
    cores = os.cpu_count() or 1
    workers = workers or cores
    tmp = tempfile.mkdtemp(prefix="ptft_text_bench_")
    rows, info = [], {}
    try:
        folders = []
        for mb in sizes:
            folder = os.path.join(tmp, f"{mb}mb")
            os.makedirs(folder)
            t = time.perf_counter()
            make_corpus(os.path.join(folder, "corpus.txt"), mb)
            log(f"generated {mb} MB in {time.perf_counter() - t:.1f} s")
            folders.append(folder)
        docs = FileDocuments([os.path.join(folders[0], "corpus.txt")], jsonl=False)
        sample = [docs.segments(int(i))[0] for i in np.random.default_rng(3).permutation(len(docs))[:20_000]]
        t = time.perf_counter()
        tok = WordPieceTokenizer.train(sample, vocab_size=30522)
        info["tokenizer_train_s"] = time.perf_counter() - t
        info["tokenizer_sample_documents"] = len(sample)
        vocab = tok.save(os.path.join(tmp, "tokenizer"))
        for mb, folder in zip(sizes, folders):
            for n, one in ((1, True), (workers, False)):
                r = cell(folder, vocab, n, steps, one)
                r.update(size_mb=mb, workers=n, cores=1 if one else cores)
                r["tokens_per_s_per_core"] = r["tokens_per_s"] / r["cores"]
                log(f"{mb} MB, {n} worker(s): {json.dumps({k: round(v, 2) for k, v in r.items()})}")
                rows.append(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = [r for r in rows if r["size_mb"] == sizes[0]]
    for r in rows:
        same = next(b for b in base if b["workers"] == r["workers"])
        r["rss_vs_smallest"] = r["rss_mb"] / same["rss_mb"]
    info.update(cores=cores, load_avg_1min=os.getloadavg()[0])
    return dict(rows=rows, info=info)


def table(result) -> str:
    lines = ["| corpus | workers (cores) | documents | index s | first batch s | tokens/s | tokens/s per core "
             "| x16 cores | peak RSS MB | RSS vs smallest | VmRSS start -> end MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['size_mb']} MB | {r['workers']} ({r['cores']}) | {r['documents']:,} | {r['index_s']:.2f} "
                     f"| {r['first_batch_s']:.2f} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s_per_core']:,.0f} | "
                     f"{16 * r['tokens_per_s_per_core']:,.0f} | {r['rss_mb']:,.0f} | {r['rss_vs_smallest']:.2f}x | "
                     f"{r['rss_start_mb']:,.0f} -> {r['rss_end_mb']:,.0f} |")
    return "\n".join(lines)


def run_rows(w, a):
    """bench/run.py's runner: one row per cell (steps/s = batches/s of 256 x 128)."""
    result = run(tuple(w["sizes_mb"]), w["steps"])
    rows = [dict(impl=f"ptft_jax text stream, {r['size_mb']} MB, {r['workers']} worker(s) ({r['cores']} core(s))",
                 compile_s=r["first_batch_s"], steps_per_s=r["tokens_per_s"] / (BATCH * MAX_LEN),
                 flops_per_step=None, peak_bytes=None, params=None) for r in result["rows"]]
    cells = "; ".join(f"{r['size_mb']} MB / {r['workers']} worker(s): first batch {r['first_batch_s']:.2f} s, "
                      f"{r['tokens_per_s_per_core']:,.0f} tokens/s per core (x16 {16 * r['tokens_per_s_per_core']:,.0f}"
                      f"), peak RSS {r['rss_mb']:,.0f} MB ({r['rss_vs_smallest']:.2f}x)" for r in result["rows"])
    note = ("text_pipeline: bench/text_pipeline.py (compile s = time to the first batch, from an unindexed corpus; "
            f"steps/s = batches of 256 x 128 per s): {cells}")
    return rows, dict(note=note)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="50,500", help="corpus sizes in MB, comma-separated")
    p.add_argument("--steps", type=int, default=80, help="batches timed after the first")
    p.add_argument("--workers", type=int, default=None, help="the N of 'N workers' (default: the CPU count)")
    p.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    p.add_argument("--vocab", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.vocab, args.workers or 1, args.steps)))
        return
    result = run(tuple(float(s) if "." in s else int(s) for s in args.sizes.split(",")), args.steps, args.workers)
    print(json.dumps(result["info"]))
    print(table(result))


if __name__ == "__main__":
    main()
