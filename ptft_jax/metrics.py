"""Run outputs: WORKDIR/metrics.jsonl, and the console (a progress bar on a terminal, plain lines otherwise).

TensorBoard event files are written with tensorboardX, on purpose: TensorBoard's own writer needs TensorFlow,
which the core never imports, and flax's / clu's metric writers pull it in too."""
from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np

from ptft_jax.files import atomic, write_text


def is_main() -> bool:
    return jax.process_index() == 0


def f1_scores(tp, fp, fn) -> dict:
    """F1 from per-class counts [C]: `f1` of class 1 for two classes (GLUE's MRPC/QQP convention: 1 = positive),
    else `macro_f1`, the mean over the classes that occur in the labels or the predictions."""
    tp, fp, fn = (np.asarray(v, np.float64) for v in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-12), 0.0)
    if len(tp) == 2:
        return {"f1": float(f1[1])}
    present = denom > 0
    return {"macro_f1": float(f1[present].mean()) if present.any() else 0.0}


class MetricsFile:
    """One JSON object a line: {"step": int, "split": "train"|"test", ...}, mirrored to TensorBoard event files in
    WORKDIR/tb (tags `train/loss`, `test/accuracy`, ...). Written by process 0 only."""

    def __init__(self, path: str, tensorboard: bool = True):
        self.path = path
        self.tensorboard = tensorboard
        self._tb = None

    def _writer(self):
        if self._tb is None and self.tensorboard:
            try:
                from tensorboardX import SummaryWriter  # writes event files without TensorFlow
            except ImportError:  # a trimmed environment: metrics.jsonl still has everything
                self.tensorboard = False
                return None
            self._tb = SummaryWriter(os.path.join(os.path.dirname(self.path), "tb"), flush_secs=10)
        return self._tb

    def close(self):
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def truncate_after(self, step: int):
        """Drops lines past `step` (written after the checkpoint a run resumes from)."""
        if not (is_main() and os.path.exists(self.path)):
            return
        keep = [line for line in self.read() if line["step"] <= step]
        write_text(self.path, "".join(json.dumps(line) + "\n" for line in keep))

    def write(self, step: int, split: str, **values):
        if not is_main():
            return
        row = {"step": int(step), "split": split, **{k: float(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        writer = self._writer()
        if writer is not None:
            for k, v in row.items():
                if k not in ("step", "split"):
                    writer.add_scalar(f"{split}/{k}", v, int(step))

    def read(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]


class Console:
    """Progress for a long loop: a tqdm bar on a terminal, plain periodic lines when not a TTY."""

    def __init__(self, total: int, start: int, enabled: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled and is_main()
        self.total, self.start = total, start
        self.t0 = time.perf_counter()
        self.bar = None
        if self.enabled and self.stream.isatty():
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=start, file=self.stream, unit="step", dynamic_ncols=True)

    def update(self, step: int, steps_per_s: float, **values):
        if not self.enabled:
            return
        shown = " | ".join(f"{k} {v:.4f}" for k, v in values.items())
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(f"{shown} | {steps_per_s:.1f} steps/s")
        else:
            eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float("inf")
            print(f"step {step}/{self.total} | {shown} | {steps_per_s:.1f} steps/s | eta {_fmt(eta)}",
                  file=self.stream, flush=True)

    def line(self, text: str):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _fmt(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def params_by_module(params) -> str:
    """'dense_0 200,960 | dense_1 32,896 | head 1,290'."""
    parts = []
    for name, sub in params.items():
        parts.append(f"{name} {sum(int(x.size) for x in jax.tree.leaves(sub)):,}")
    return " | ".join(parts)


def plot_curves(metrics_path: str, png_path: str) -> str | None:
    """Loss and accuracy against step, train and test, as a PNG (headless matplotlib)."""
    if not is_main():
        return None
    rows = MetricsFile(metrics_path, tensorboard=False).read()
    try:
        import matplotlib
    except ImportError:
        return None
    if not rows:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for split, style in (("train", "-"), ("test", "o-")):
            pts = [(r["step"], r[key]) for r in rows if r["split"] == split and key in r]
            if pts:
                ax.plot(*zip(*pts), style, label=split, markersize=3)
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(os.path.basename(os.path.dirname(os.path.abspath(metrics_path))))
    fig.tight_layout()
    with atomic(png_path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return png_path


def plot_sweep(workdir: str, members, png_path: str, split: str = "test", metric: str = "accuracy") -> str | None:
    """One metric of one split (test accuracy unless told: the one a sweep's report ranks by) against step for
    every member of a sweep, in one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name in members:
        rows = MetricsFile(os.path.join(workdir, name, "metrics.jsonl"), tensorboard=False).read()
        pts = [(r["step"], r[metric]) for r in rows if r["split"] == split and r.get(metric) is not None]
        if pts:
            ax.plot(*zip(*pts), "o-", label=name, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{split} {metric.replace('_', ' ')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic(png_path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return png_path
