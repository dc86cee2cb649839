"""Model selection on the validation split: the best evaluation so far, the evaluations since, early stopping.

`Selection` is rebuilt from metrics.jsonl's validation rows up to the step a run resumes from, so a resumed run
knows its best step and its count without evaluations since the best as an uninterrupted one would, and keeps
no state of its own beside the log. The best checkpoint itself lives in WORKDIR/best (train.keep_best).
"""
from __future__ import annotations

from ptft_jax.config import selection


class Selection:
    """By `spec` ("val/accuracy", "val/loss:min", ...; None: val/accuracy, higher is better)."""

    def __init__(self, spec: str | None, early_stop: int | None = None, rows=()):
        self.spec = spec or "val/accuracy"
        self.metric, self.mode = selection(spec)
        self.early_stop = int(early_stop) if early_stop else None
        self.best_value, self.best_step, self.since = None, None, 0
        for row in rows:
            if row.get("split") == "val" and self.metric in row:
                self.update(row["step"], row)

    def update(self, step: int, ev: dict) -> bool:
        """Counts the evaluation `ev` of `step`; True when it is the best so far."""
        value = float(ev[self.metric])
        better = self.best_value is None or (value > self.best_value if self.mode == "max" else value < self.best_value)
        if better:
            self.best_value, self.best_step, self.since = value, int(step), 0
        else:
            self.since += 1
        return better

    @property
    def stop(self) -> bool:
        """Whether train.early_stop evaluations in a row brought no improvement."""
        return self.early_stop is not None and self.since >= self.early_stop

    def describe(self) -> str:
        if self.best_step is None:
            return f"no {self.spec} yet"
        return f"best {self.spec} {self.best_value:.4f} at step {self.best_step}"
