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

    def truncate_after(self, step: int, warn=None):
        """Drops lines past `step` (written after the checkpoint a run resumes from) and damaged lines."""
        if not (is_main() and os.path.exists(self.path)):
            return
        keep = [line for line in self.read(warn) if line["step"] <= step]
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

    def read(self, warn=None) -> list[dict]:
        """The rows; a line that is not a row (a crash or a full disk mid-write leaves half a line) is dropped,
        and `warn` (if given) is told which."""
        if not os.path.exists(self.path):
            return []
        rows = []
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict) or not isinstance(row.get("step"), int) or "split" not in row:
                        raise ValueError("not a metrics row")
                except ValueError:
                    if warn:
                        warn(f"warning: {self.path} line {number} is damaged ({line.strip()[:60]!r}); dropped it")
                    continue
                rows.append(row)
        return rows


class SteadyRate:
    """Steps/s of steady training: the steps of the calls counted over the seconds the clock ran. The loop pauses it
    for what is not training (a call that compiles, evaluating, saving), so that the ETA it gives does not count
    a 10 s compile as 10 s of every later step. jax runs calls asynchronously: the caller waits for the device
    before pause() and before reading rate(), else the time of queued steps is lost or misplaced."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.steps, self.seconds = 0, 0.0
        self._since = None  # when the clock last resumed; None while paused

    def resume(self):
        if self._since is None:
            self._since = self.clock()

    def pause(self):
        if self._since is not None:
            self.seconds += self.clock() - self._since
            self._since = None

    def count(self, steps: int):
        self.steps += steps

    def rate(self) -> float | None:
        """Steps/s so far; None before any counted step."""
        seconds = self.seconds + (self.clock() - self._since if self._since is not None else 0.0)
        return self.steps / seconds if self.steps and seconds > 0 else None


class Console:
    """Progress for a long loop: a tqdm bar on a terminal, else about `lines` plain lines per run (one every
    1/`lines` of its steps, and the last), so a log file stays short; notices and evaluation lines always show.

    Speed and ETA are the caller's steady training rate (SteadyRate), not tqdm's own (which would count compiles
    and evaluations)."""

    def __init__(self, total: int, start: int, enabled: bool = True, stream=None, lines: int = 20):
        self.stream = stream or sys.stderr
        self.enabled = enabled and is_main()
        self.total, self.start = total, start
        self.every = max(1, -(-(total - start) // max(1, lines)))  # steps between plain lines, rounded up
        self.next_line = start + self.every
        self.bar = None
        if self.enabled and self.stream.isatty():
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=start, file=self.stream, unit="step", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    def update(self, step: int, steps_per_s: float | None, **values):
        """The progress at `step`: `values` (loss, acc) and the steady rate (None: not measured yet)."""
        if not self.enabled:
            return
        shown = " | ".join([f"{k} {v:.4f}" for k, v in values.items()] + [_speed(self.total - step, steps_per_s)])
        if self.bar is not None:
            self.bar.set_postfix_str(shown, refresh=False)
            self.bar.update(step - self.bar.n)
        elif step >= self.next_line or step == self.total:
            self.next_line = self.start + ((step - self.start) // self.every + 1) * self.every
            print(f"step {step}/{self.total} | {shown}", file=self.stream, flush=True)

    def line(self, text: str):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def notice(self, text: str):
        """A line saying what the loop waits on (e.g. `compiling the train step...`)."""
        self.line(text)

    def before_first_call(self, fn, text: str):
        """`fn` that shows the notice `text` when first called (e.g. an evaluation, which compiles then)."""
        called = []

        def call(*args, **kwargs):
            if not called:
                called.append(True)
                self.notice(text)
            return fn(*args, **kwargs)
        return call

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None  # later lines (the final evaluation's notice) print plainly


def _speed(remaining: int, steps_per_s: float | None) -> str:
    """'5012.3 steps/s | eta 12s', or 'eta ?' before the rate is measured."""
    if not steps_per_s:
        return "eta ?"
    return f"{steps_per_s:.1f} steps/s | eta {_fmt(remaining / steps_per_s)}"


def _fmt(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def params_by_module(params) -> str:
    """'dense_0 200,960 | dense_1 32,896 | head 1,290'."""
    parts = []
    for name, sub in params.items():
        parts.append(f"{name} {sum(int(x.size) for x in jax.tree.leaves(sub)):,}")
    return " | ".join(parts)


def plot_curves(metrics_path: str, png_path: str) -> str | None:
    """Loss and accuracy against step, train and test, and the learning rate (train rows' `lr`, when logged), as a
    PNG (headless matplotlib)."""
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
    keys = ("loss", "accuracy") + (("lr",) if any("lr" in r for r in rows) else ())
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6))
    for ax, key in zip(axes, keys):
        for split, style in (("train", "-"), ("val", "s-"), ("test", "o-")):
            pts = [(r["step"], r[key]) for r in rows if r["split"] == split and key in r]
            if pts:
                ax.plot(*zip(*pts), style, label=split, markersize=3)
        ax.set_xlabel("step")
        ax.set_title("learning rate" if key == "lr" else key)
        ax.grid(alpha=0.3)
        if key != "lr":
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
