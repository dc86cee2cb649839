"""Grafting: build a model's variables from a fresh init and a pretrained checkpoint, by ordered rules.

    variables, report = ptft_jax.graft(fresh_variables, "runs/digits_pt", [("head/.*", "init"), (".*", "load")])

Each leaf of the fresh variables (params and mutable collections such as batch_stats) has a slash-joined path
inside its collection, e.g. `dense_0/kernel`. The first rule whose regex matches the whole path decides:
  load  take the checkpoint's array (it must exist there with the same shape)
  init  keep the fresh initialisation
  zero  zeros of the fresh shape (for a new head)
  skip  names checkpoint paths to leave unused (e.g. a pretraining head the new model lacks)
  load_or_init  load when the checkpoint has the path (same shape required), else keep the fresh
        initialisation (e.g. BERT's pooler, which a masked-LM checkpoint lacks and a classifier's has)
  load_if_fits  load when the checkpoint has the path with the same shape, else keep the fresh initialisation
        (e.g. a published classifier's head: kept for the same number of classes, new for another)
A checkpoint path left unused is fine when a rule other than `load` names it. It is an error, listing every
offending path with both shapes, when a fresh path matches no rule, when a `load` path is missing from the
checkpoint or has another shape, or when a checkpoint path is left unused and no rule names it (so nothing is
dropped silently). The report records the source checkpoint's path, step and a content
hash, and is written to WORKDIR/graft.json by fine-tuning runs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Any, Mapping

import jax
import numpy as np

from ptft_jax.checkpoint import InitFrom, Published, load_checkpoint  # noqa: F401 (load_checkpoint: part of this API)
from ptft_jax.config import DEFAULT_RULES, normalize_rules  # noqa: F401 (DEFAULT_RULES: part of this API)
from ptft_jax.errors import CheckpointError


class GraftError(CheckpointError):
    """The checkpoint does not fit the fresh model under the rules; the message lists every offending path."""


@dataclasses.dataclass
class GraftReport:
    source: str | None
    step: int | None
    content_hash: str
    rules: list
    rows: list  # [{"path", "action", "shape", "checkpoint_shape"}]
    skipped: list  # checkpoint paths not used, each named by a rule
    file_sha256: str | None = None  # published weights (hf:, torch:): the sha256 of the file read

    def counts(self) -> dict:
        out = {a: 0 for a in ("load", "init", "zero", "skip")}  # what was done (load_or_init: load or init)
        for r in self.rows:
            out[r["action"]] += 1
        out["skip"] = len(self.skipped)
        return out

    def table(self) -> str:
        lines = [f"graft from {self.source or '<in-memory tree>'} (step {self.step}, sha256 {self.content_hash[:16]})",
                 f"{'path':<48} {'action':<6} {'shape':<16} checkpoint"]
        for r in self.rows:
            lines.append(f"{r['path']:<48} {r['action']:<6} {str(tuple(r['shape'])):<16} "
                         f"{'-' if r['checkpoint_shape'] is None else tuple(r['checkpoint_shape'])}")
        for p, shape in self.skipped:
            lines.append(f"{p:<48} {'skip':<6} {'-':<16} {tuple(shape)}")
        c = self.counts()
        lines.append(f"loaded {c['load']}, initialised {c['init']}, zeroed {c['zero']}, "
                     f"checkpoint leaves skipped {len(self.skipped)}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["counts"] = self.counts()
        return d


def flatten(tree) -> dict[str, Any]:
    """{"a": {"b": x}} -> {"a/b": x}: every leaf by its slash-joined tree path. Lists (optax states restored raw)
    give their index as a key; None leaves (empty subtrees) are left out."""
    return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def unflatten(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def _collections(variables: Mapping) -> dict[str, dict]:
    """{collection: {path: leaf}} from {"params": ..., "batch_stats": ...}."""
    return {c: flatten(tree) for c, tree in variables.items() if c != "step"}


def _rule_for(path: str, rules, fresh: bool = False) -> str | None:
    for pattern, action in rules:
        if fresh and action == "skip":
            continue
        if re.fullmatch(pattern, path):
            return action
    return None


def content_hash(flat_by_collection: Mapping[str, Mapping[str, Any]]) -> str:
    h = hashlib.sha256()
    for c in sorted(flat_by_collection):
        for path in sorted(flat_by_collection[c]):
            a = np.ascontiguousarray(np.asarray(flat_by_collection[c][path]))
            h.update(f"{c}/{path}:{a.dtype}:{a.shape};".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def graft(fresh_variables: Mapping, checkpoint, rules=None, step: int | None = None):
    """Returns (variables, GraftReport): `fresh_variables` with leaves taken from `checkpoint` by `rules`.

    `checkpoint` is a run's workdir, a checkpoint step directory, `hf:DIR` / `torch:FILE` (published weights), an
    `InitFrom` / `Published`, or a variables-like tree
    ({"params": ..., "batch_stats": ...}, or a raw saved state with "params" and "model_state").
    """
    rules = normalize_rules(rules)
    source = None
    file_sha256 = None
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = InitFrom.parse(checkpoint, step)
    if isinstance(checkpoint, (InitFrom, Published)):
        file_sha256 = getattr(checkpoint, "sha256", None)
        source, step, checkpoint = checkpoint.restore()
    ckpt = dict(checkpoint)
    if "model_state" in ckpt:  # a saved TrainState
        ckpt = {"params": ckpt["params"], **(ckpt.get("model_state") or {})}
    ck = _collections(ckpt)
    fresh = _collections(fresh_variables)
    uncovered, missing, mismatched = [], [], []
    rows, out = [], {}
    used = set()
    for c, leaves in fresh.items():
        out[c] = {}
        for path, value in leaves.items():
            action = _rule_for(path, rules, fresh=True)
            ck_value = ck.get(c, {}).get(path)
            ck_shape = None if ck_value is None else tuple(np.shape(ck_value))
            shape = tuple(np.shape(value))
            if action is None:
                uncovered.append(f"{c}/{path} {shape}")
                continue
            if action == "load_or_init":
                action = "init" if ck_value is None else "load"
            elif action == "load_if_fits":
                action = "load" if ck_shape == shape else "init"
            if action == "load":
                if ck_value is None:
                    missing.append(f"{c}/{path} {shape}")
                    continue
                if ck_shape != shape:
                    mismatched.append(f"{c}/{path}: fresh {shape} vs checkpoint {ck_shape}")
                    used.add((c, path))  # reported as a mismatch, not again as unused
                    continue
                out[c][path] = np.asarray(ck_value).astype(np.asarray(value).dtype, copy=False)
                used.add((c, path))
            elif action == "zero":
                out[c][path] = np.zeros(shape, np.asarray(value).dtype)
            else:
                out[c][path] = value
            rows.append({"path": f"{c}/{path}", "action": action, "shape": list(shape),
                         "checkpoint_shape": None if ck_shape is None else list(ck_shape)})
    skipped, unexplained = [], []
    for c, leaves in ck.items():
        for path, value in sorted(leaves.items()):
            if (c, path) in used:
                continue
            if _rule_for(path, [r for r in rules if r[1] != "load"]) is not None:
                skipped.append((f"{c}/{path}", list(np.shape(value))))
            else:
                unexplained.append(f"{c}/{path} {tuple(np.shape(value))}")
    problems = []
    if uncovered:
        problems.append(f"fresh paths no rule covers: {', '.join(uncovered)}")
    if missing:
        problems.append(f"'load' paths missing from the checkpoint: {', '.join(missing)}")
    if mismatched:
        problems.append(f"shape mismatches: {', '.join(mismatched)}")
    if unexplained:
        problems.append(f"checkpoint paths left unused that no rule names: {', '.join(unexplained)}")
    if problems:
        raise GraftError(f"Cannot graft {source or 'the checkpoint'} into this model ({'; '.join(problems)}); "
                         f"fix config.graft (rules are (regex, load|init|zero), first match wins) or init_from.")
    variables = {c: unflatten(leaves) for c, leaves in out.items()}
    report = GraftReport(source, step, content_hash(ck), [list(r) for r in rules], rows, skipped, file_sha256)
    return variables, report
