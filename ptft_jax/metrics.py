"""Run outputs: WORKDIR/metrics.jsonl, and the console (a progress bar on a terminal, plain lines otherwise)."""
from __future__ import annotations

import json
import os
import sys
import time

import jax


def is_main() -> bool:
    return jax.process_index() == 0


class MetricsFile:
    """One JSON object a line: {"step": int, "split": "train"|"test", ...}. Written by process 0 only."""

    def __init__(self, path: str):
        self.path = path

    def truncate_after(self, step: int):
        """Drops lines past `step` (written after the checkpoint a run resumes from)."""
        if not (is_main() and os.path.exists(self.path)):
            return
        keep = [line for line in self.read() if line["step"] <= step]
        with open(self.path + ".tmp", "w") as f:
            for line in keep:
                f.write(json.dumps(line) + "\n")
        os.replace(self.path + ".tmp", self.path)

    def write(self, step: int, split: str, **values):
        if not is_main():
            return
        row = {"step": int(step), "split": split, **{k: float(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

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
