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
A checkpoint path left unused is fine when a rule other than `load` names it. It is an error, naming the first
offending paths with both shapes (every one in a file the error names), when a fresh path matches no rule, when
a `load` path is missing from the checkpoint or has another shape, or when a checkpoint path is left unused and
no rule names it (so nothing is dropped silently). The report records the source checkpoint's path, step and a
content hash, and is written to WORKDIR/graft.json by fine-tuning runs (the console shows it grouped by module:
GraftReport.table).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import tempfile
from typing import Any, Mapping

import jax
import numpy as np

from ptft_jax.checkpoint import InitFrom, Published, load_checkpoint  # noqa: F401 (load_checkpoint: part of this API)
from ptft_jax.config import DEFAULT_RULES, normalize_rules  # noqa: F401 (DEFAULT_RULES: part of this API)
from ptft_jax.errors import CheckpointError
from ptft_jax.files import write_text


class GraftError(CheckpointError):
    """The checkpoint does not fit the fresh model under the rules; the message names the first offending paths
    and the file that lists them all."""


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

    def table(self, verbose: bool = False) -> str:
        """What the graft did, for the console: leaves grouped by module and action in a few lines (e.g.
        `block_0..7/**  load  95 leaves`), or every leaf with both shapes when `verbose` (graft.json has them too).

        A replaced head shows twice, and that is right: the new model's leaves (`init`), then the checkpoint's
        own leaves of the same paths, left unused (named by the `init` rule; of another shape when the number of
        classes changed). Each is labelled as such."""
        lines = [f"graft from {self.source or '<in-memory tree>'} (step {self.step}, sha256 {self.content_hash[:16]})"]
        fresh = [(r["path"], r["action"]) for r in self.rows]
        unused = [(p, "unused") for p, _ in self.skipped]
        if verbose:
            lines.append(f"{'path':<48} {'action':<6} {'shape':<16} checkpoint")
            for r in self.rows:
                lines.append(f"{r['path']:<48} {r['action']:<6} {str(tuple(r['shape'])):<16} "
                             f"{'-' if r['checkpoint_shape'] is None else tuple(r['checkpoint_shape'])}")
            if self.skipped:
                lines.append("checkpoint leaves left unused (a rule names them):")
            for p, shape in self.skipped:
                lines.append(f"{p:<48} {'skip':<6} {'-':<16} {tuple(shape)}")
        else:
            fresh_rows, unused_rows = _grouped(fresh, 7), _grouped(unused, 2)
            width = max((len(r[0]) for r in fresh_rows + unused_rows), default=0)
            lines.append("  the new model's leaves:")
            lines += _format(fresh_rows, width)
            if unused:
                replaced = len({p for p, _ in fresh} & {p for p, _ in unused})
                lines.append("  the checkpoint's leaves left unused (a rule names them" +
                             (f"; {replaced} of them replaced by the new model's own, above):" if replaced else "):"))
                lines += _format(unused_rows, width)
        c = self.counts()
        lines.append(f"loaded {c['load']}, initialised {c['init']}, zeroed {c['zero']}, checkpoint leaves left "
                     f"unused {len(self.skipped)}" + ("" if verbose else " (every leaf: graft.json in the workdir, "
                                                     "or --verbosity=1)"))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["counts"] = self.counts()
        return d


def _grouped(leaves, most: int) -> list[tuple]:
    """(name, action, leaves, per collection) rows, e.g. ('block_0..7/**', 'load', 95, ' (params 57, batch_stats
    38)'), for (collection/path, action) pairs: one per top-level module name (its number stripped) and action,
    at most `most` (the rest summed in the last)."""
    groups: dict = {}
    for path, action in leaves:
        collection, _, rest = path.partition("/")
        top = rest.split("/", 1)[0]
        m = re.fullmatch(r"(.*?)(_?)(\d+)", top)
        stem, number = ((m.group(1) + m.group(2)), int(m.group(3))) if m else (top, None)
        g = groups.setdefault((stem, action), {"numbers": set(), "collections": {}, "nested": False})
        if number is not None:
            g["numbers"].add(number)
        g["nested"] |= "/" in rest
        g["collections"][collection] = g["collections"].get(collection, 0) + 1
    rows = []
    for (stem, action), g in groups.items():
        name = stem + _numbers(sorted(g["numbers"])) + ("/**" if g["nested"] else "")
        by = sorted(g["collections"].items(), key=lambda kv: (kv[0] != "params", kv[0]))
        rows.append((name, action, sum(g["collections"].values()),
                     f" ({', '.join(f'{c} {k}' for c, k in by)})" if len(by) > 1 else ""))
    if len(rows) > most:
        rest = rows[most - 1:]
        by_action: dict = {}
        for _, action, n, _ in rest:
            by_action[action] = by_action.get(action, 0) + n
        rows = rows[:most - 1] + [(f"{len(rest)} more modules", "/".join(by_action), sum(by_action.values()),
                                   f" ({', '.join(f'{a} {n}' for a, n in by_action.items())})")]
    return rows


def _format(rows, width: int) -> list[str]:
    return [f"    {name:<{width}}  {action:<6} {n:>4} {'leaf' if n == 1 else 'leaves'}{split}"
            for name, action, n, split in rows]


def _numbers(numbers: list[int]) -> str:
    """[] -> '', [3] -> '3', [0..7] -> '0..7', [0, 2, 5] -> '0,2,5'."""
    if not numbers:
        return ""
    if len(numbers) > 2 and numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"{numbers[0]}..{numbers[-1]}"
    return ",".join(map(str, numbers))


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


SHOWN_PATHS = 5  # offending paths a GraftError's sentence names; the rest are in its file


def _error(source, problems, errors_file: str | None) -> str:
    """The one sentence of a GraftError: every kind of problem with its first paths (SHOWN_PATHS over all kinds,
    at least one each), and, when some paths are left out of it, the file that lists them all."""
    left, parts, hidden = SHOWN_PATHS, [], 0
    for what, paths in problems:
        shown = paths[:max(left, 1)]
        left -= len(shown)
        hidden += len(paths) - len(shown)
        more = f" and {len(paths) - len(shown)} more" if len(paths) > len(shown) else ""
        parts.append(f"{what}: {', '.join(shown)}{more}")
    where = ""
    if hidden:
        if errors_file is None:
            fd, errors_file = tempfile.mkstemp(prefix="ptft_graft_errors_", suffix=".txt")
            os.close(fd)
        write_text(errors_file, "".join(f"{what}:\n" + "".join(f"  {p}\n" for p in paths) for what, paths in problems))
        where = f"; all {sum(len(p) for _, p in problems)} are listed in {errors_file}"
    return (f"Cannot graft {source or 'the checkpoint'} into this model ({'; '.join(parts)}{where}); "
            f"fix config.graft (rules are (regex, load|init|zero), first match wins) or init_from.")


def content_hash(flat_by_collection: Mapping[str, Mapping[str, Any]]) -> str:
    h = hashlib.sha256()
    for c in sorted(flat_by_collection):
        for path in sorted(flat_by_collection[c]):
            a = np.ascontiguousarray(np.asarray(flat_by_collection[c][path]))
            h.update(f"{c}/{path}:{a.dtype}:{a.shape};".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def read_source(checkpoint, step: int | None = None):
    """(source path, step, {collection: {path: leaf}}, the file's sha256 for published weights) of what graft()
    takes as `checkpoint`; `content_hash` of the third is the report's."""
    source = file_sha256 = None
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = InitFrom.parse(checkpoint, step)
    if isinstance(checkpoint, (InitFrom, Published)):
        file_sha256 = getattr(checkpoint, "sha256", None)
        source, step, checkpoint = checkpoint.restore()
    ckpt = dict(checkpoint)
    if "model_state" in ckpt:  # a saved TrainState
        ckpt = {"params": ckpt["params"], **(ckpt.get("model_state") or {})}
    return source, step, _collections(ckpt), file_sha256


def graft(fresh_variables: Mapping, checkpoint, rules=None, step: int | None = None,
          errors_file: str | None = None):
    """Returns (variables, GraftReport): `fresh_variables` with leaves taken from `checkpoint` by `rules`.

    `checkpoint` is a run's workdir, a checkpoint step directory, `hf:DIR` / `torch:FILE` (published weights), an
    `InitFrom` / `Published`, or a variables-like tree
    ({"params": ..., "batch_stats": ...}, or a raw saved state with "params" and "model_state").
    A GraftError names the first few offending paths; when there are more, all of them go to `errors_file`
    (default: a new temporary file), which the error names.
    """
    rules = normalize_rules(rules)
    source, step, ck, file_sha256 = read_source(checkpoint, step)
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
                         "checkpoint_shape": None if ck_shape is None else list(ck_shape),
                         "dtype": str(np.asarray(value).dtype)})
    skipped, unexplained = [], []
    for c, leaves in ck.items():
        for path, value in sorted(leaves.items()):
            if (c, path) in used:
                continue
            if _rule_for(path, [r for r in rules if r[1] != "load"]) is not None:
                skipped.append((f"{c}/{path}", list(np.shape(value))))
            else:
                unexplained.append(f"{c}/{path} {tuple(np.shape(value))}")
    problems = [(what, paths) for what, paths in (
        ("fresh paths no rule covers", uncovered), ("'load' paths missing from the checkpoint", missing),
        ("shape mismatches", mismatched), ("checkpoint paths left unused that no rule names", unexplained)) if paths]
    if problems:
        raise GraftError(_error(source, problems, errors_file))
    variables = {c: unflatten(leaves) for c, leaves in out.items()}
    report = GraftReport(source, step, content_hash(ck), [list(r) for r in rules], rows, skipped, file_sha256)
    return variables, report
