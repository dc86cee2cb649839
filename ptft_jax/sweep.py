"""Sweeps: a config file's `get_sweep()` lists override dicts; each member runs in WORKDIR/<its name>.

    def get_sweep():
        return sweep.product(sweep.axis("optim.lr", [0.01, 0.001]),
                             [{"finetune.strategy": "full"}, {"finetune.strategy": "linear_probe"}])

A member's folder name is made from its overrides (`lr=0.001-strategy=linear_probe`: last key components, only
characters no shell needs quoted) unless it has a `_name` key; its member.json holds the overrides in full.
WORKDIR/sweep.json lists the members. Finished members (a member.json with their overrides) are skipped, interrupted
ones resume from their checkpoint. The report ranks members on their validation split (test only where none is).
"""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
import re
import shlex
import sys

import ptft_jax
from ptft_jax.config import import_config_module
from ptft_jax.errors import ConfigError
from ptft_jax.files import write_json, write_text
from ptft_jax.metrics import MetricsFile, is_main, plot_sweep


def axis(key: str, values) -> list[dict]:
    """One axis: [{key: v} for v in values]."""
    return [{key: v} for v in values]


def product(*axes: list[dict]) -> list[dict]:
    """Every combination of the axes' members (a grid). A part with `_name` names its share of the member."""
    out = []
    for combo in itertools.product(*axes):
        member = {k: v for d in combo for k, v in d.items() if k != "_name"}
        if any("_name" in d for d in combo):
            member["_name"] = "-".join(str(d["_name"]) if "_name" in d else member_name(d, member) for d in combo)
        out.append(member)
    return out


def grid(axes: dict) -> list[dict]:
    """grid({"optim.lr": [0.1, 0.01], "train.seed": [0, 1]}) -> 4 members."""
    return product(*(axis(k, v) for k, v in axes.items()))


def zip_(axes: dict) -> list[dict]:
    """zip_({"optim.lr": [0.1, 0.01], "train.epochs": [5, 10]}) -> 2 members, paired in order."""
    lengths = {len(v) for v in axes.values()}
    if len(lengths) > 1:
        raise ConfigError(f"sweep.zip_ needs lists of one length; got lengths {sorted(lengths)}.")
    return [dict(zip(axes, values)) for values in zip(*axes.values())]


MAX_NAME = 100  # longer names end in a hash of the overrides
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")  # what a folder name may hold: nothing a shell would need quoted
_WILDCARD = re.compile(r"\.[*+?]")  # `.*` in a finetune.lr_mults pattern: says nothing in a name


def _text(value) -> str:
    """A value as name text: ("dense_.*", 0.1) -> dense_x0.1 (a pattern and its factor), lists joined by `+`."""
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], (int, float)) \
                and not isinstance(value[1], bool):
            return f"{_text(value[0])}x{_text(value[1])}"
        return "+".join(_text(v) for v in value)
    if isinstance(value, dict):
        return "+".join(f"{k}={_text(v)}" for k, v in value.items())
    return _UNSAFE.sub("_", _WILDCARD.sub("", str(value)))


def _short_key(key: str, keys) -> str:
    """A key's last component (`lr` for `optim.lr`) unless another key of the sweep ends the same way."""
    last = key.rsplit(".", 1)[-1]
    return key if sum(k.rsplit(".", 1)[-1] == last for k in set(keys)) > 1 else last


def _digest(overrides: dict) -> str:
    return hashlib.sha256(_canonical(overrides).encode()).hexdigest()[:8]


def _canonical(overrides: dict) -> str:
    """The overrides as member.json holds them (tuples as lists), as one comparable string."""
    over = {k: v for k, v in overrides.items() if k != "_name"}
    return json.dumps(json.loads(json.dumps(over, default=str)), sort_keys=True)


def _with_digest(name: str, overrides: dict) -> str:
    return f"{name[:MAX_NAME - 9]}-{_digest(overrides)}"


def member_name(overrides: dict, keys=None) -> str:
    """A member's folder name: `lr=0.01-lr_mults=dense_x0.1` for {"optim.lr": 0.01, "finetune.lr_mults":
    [("dense_.*", 0.1)]}, or its `_name`; only [A-Za-z0-9._=+-], so that no shell needs it quoted. `keys`: every
    key of the sweep, to tell `optim.lr` from `finetune.lr` where both occur. member.json has the full overrides."""
    if "_name" in overrides:
        name = str(overrides["_name"])
    else:
        keys = list(keys or overrides)
        name = "-".join(f"{_short_key(k, keys)}={_text(v)}" for k, v in overrides.items())
    name = _UNSAFE.sub("_", name).lstrip(".-") or "base"
    return _with_digest(name, overrides) if len(name) > MAX_NAME else name


def load_members(spec: str) -> list[tuple[str, dict]]:
    """(name, overrides) for each member of the config file's get_sweep()."""
    module = import_config_module(spec.partition(":")[0])
    if not hasattr(module, "get_sweep"):
        raise ConfigError(f"Config file {spec.partition(':')[0]!r} has no get_sweep(); define one returning a list "
                          f"of override dicts (see ptft_jax/sweep.py).")
    members = module.get_sweep()
    if not isinstance(members, (list, tuple)) or not all(isinstance(m, dict) for m in members) or not members:
        raise ConfigError("get_sweep() must return a non-empty list of override dicts.")
    keys = [k for m in members for k in m if k != "_name"]
    names = [member_name(m, keys) for m in members]
    # Distinct members whose overrides read alike (`dense_.*` and `dense_.+`): a hash of the overrides tells them apart.
    names = [_with_digest(n, m) if names.count(n) > 1 and "_name" not in m else n for n, m in zip(names, members)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"Sweep members share the names {', '.join(dupes)}; give them distinct overrides or _name.")
    return [(n, {k: v for k, v in m.items() if k != "_name"}) for n, m in zip(names, members)]


SWEEP_FILE = "sweep.json"  # written by run() at its start: what makes a folder a sweep's for report()


def run(spec: str, workdir: str, overrides=(), log=print) -> list[dict]:
    """Runs every member one after another; returns the report rows. A member is finished when a folder of the
    workdir holds its member.json: under its name, or under an older name for the same overrides."""
    members = load_members(spec)
    os.makedirs(workdir, exist_ok=True)
    if is_main():
        write_json(os.path.join(workdir, SWEEP_FILE), {
            "config": spec, "overrides": list(overrides),
            "members": [{"name": n, "overrides": m} for n, m in members]}, default=str)
    finished = _finished_by_overrides(workdir)
    for i, (name, member) in enumerate(members):
        sub = os.path.join(workdir, name)
        if os.path.exists(os.path.join(sub, "member.json")):
            log(f"sweep member {i + 1}/{len(members)} {name}: finished, skipped")
            continue
        if _canonical(member) in finished:
            log(f"sweep member {i + 1}/{len(members)} {name}: finished as {finished[_canonical(member)]}, skipped")
            continue
        log(f"sweep member {i + 1}/{len(members)} {name}")
        config = ptft_jax.load_config(spec, list(overrides))
        config = ptft_jax.apply_overrides(config, member)
        result = ptft_jax.train(config, sub, log=log)
        write_json(os.path.join(sub, "member.json"), {"name": name, "overrides": member, "result": result},
                   default=str)
    return report(workdir, log=log)


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _finished_by_overrides(workdir: str) -> dict:
    """{the canonical overrides: the folder} of every finished member (folders named before a renaming too)."""
    out = {}
    for name in sorted(os.listdir(workdir)):
        m = _read_json(os.path.join(workdir, name, "member.json"))
        if isinstance(m, dict) and isinstance(m.get("overrides"), dict):
            out.setdefault(_canonical(m["overrides"]), name)
    return out


def commands(spec: str, workdir: str, overrides=()) -> list[str]:
    """One launch command per member, for any scheduler."""
    out = []
    for name, member in load_members(spec):
        args = [sys.executable, "launch.py", f"--config={spec}", f"--workdir={os.path.join(workdir, name)}"]
        args += [f"--config.{o}" for o in overrides]
        args += [f"--config.{k}={v!r}" if not isinstance(v, str) else f"--config.{k}={v}" for k, v in member.items()]
        out.append(" ".join(shlex.quote(a) for a in args))
    return out


_METRICS = ("accuracy", "f1", "macro_f1", "loss", "step")


def _member_folders(workdir: str) -> list[str]:
    """The members' folders: those sweep.json names and those holding a member.json (a sweep of an older ptft_jax:
    those holding a metrics.jsonl too). A folder with neither file is not a sweep's."""
    if not os.path.isdir(workdir):
        raise ConfigError(f"{workdir} is not a sweep workdir (it does not exist); run the sweep first.")
    subs = sorted(n for n in os.listdir(workdir) if os.path.isdir(os.path.join(workdir, n)))
    done = [n for n in subs if os.path.exists(os.path.join(workdir, n, "member.json"))]
    marker = _read_json(os.path.join(workdir, SWEEP_FILE))
    if not isinstance(marker, dict) and not done:
        raise ConfigError(f"{workdir} is not a sweep workdir (no {SWEEP_FILE}, no member.json in its folders); "
                          f"pass the --workdir of a --sweep run.")
    if isinstance(marker, dict):
        named = {m.get("name") for m in marker.get("members", []) if isinstance(m, dict)}
        started = [n for n in subs if n in named]
    else:
        started = [n for n in subs if os.path.exists(os.path.join(workdir, n, "metrics.jsonl"))]
    return sorted(set(done) | set(started))


def _ranked_metric(spec) -> tuple[str, bool]:
    """("accuracy", True) from train.keep_best "val/accuracy" (":min" / ":max" to say; else a loss is minimised)."""
    name, _, direction = str(spec or "val/accuracy").partition(":")
    metric = name.rpartition("/")[2] or "accuracy"
    return metric, (direction == "max") if direction in ("min", "max") else "loss" not in metric


def _member_row(workdir: str, name: str, metric: str, maximize: bool) -> dict:
    sub = os.path.join(workdir, name)
    m = _read_json(os.path.join(sub, "member.json"))
    rows = MetricsFile(os.path.join(sub, "metrics.jsonl"), tensorboard=False).read()
    tests = [r for r in rows if r["split"] == "test"]
    vals = [r[metric] for r in rows if r["split"] == "val" and r.get(metric) is not None]
    last = tests[-1] if tests else (m or {}).get("result") or {}
    best = (max if maximize else min)(vals) if vals else None
    return {"member": name, "status": "finished" if m else "unfinished", f"val_{metric}": best,
            **{f"test_{k}": last.get(k) for k in _METRICS}}


def report(workdir: str, log=print) -> list[dict]:
    """The members' final metrics (F1 too where the task has it), best first: Markdown to `log`, CSV and a PNG of
    the members' curves in the workdir.

    Members are ranked by the best value among their validation rows of the metric `train.keep_best` names
    (default val/accuracy; a loss lowest first), and the chosen member's test figures are the result: choosing by
    test figures would report an optimistic result. Without validation rows the test split ranks them, and a line
    says so."""
    names = _member_folders(workdir)
    specs = [((_read_json(os.path.join(workdir, n, "config.json")) or {}).get("train") or {}).get("keep_best")
             for n in names]
    metric, maximize = _ranked_metric(next((s for s in specs if s), None))
    rows = [_member_row(workdir, n, metric, maximize) for n in names]
    if not rows:
        raise ConfigError(f"{workdir} holds no sweep members yet; run the sweep first.")
    val_col = f"val_{metric}"
    by_val = any(r[val_col] is not None for r in rows)
    if by_val:
        sign = -1.0 if maximize else 1.0
        rows.sort(key=lambda r: (r["status"] != "finished", r[val_col] is None, sign * (r[val_col] or 0.0)))
    else:
        rows.sort(key=lambda r: (r["status"] != "finished", -(r["test_accuracy"] or 0.0)))
    extra = [f"test_{k}" for k in ("f1", "macro_f1") if any(r.get(f"test_{k}") is not None for r in rows)]
    cols = ["member", "status", *([val_col] if by_val else []), "test_accuracy", *extra, "test_loss", "test_step"]
    rows = [{c: r.get(c) for c in cols} for r in rows]
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    best = rows[0]
    if by_val:
        lines.append(f"best by val {metric}: {best['member']} (val {metric} {fmt(best[val_col])}, test accuracy "
                     f"{fmt(best['test_accuracy'])})")
    else:
        lines.append("The ranking used the test split because no validation split was configured.")
    log("\n".join(lines))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols)
    writer.writeheader()
    writer.writerows(rows)
    write_text(os.path.join(workdir, "results.csv"), buf.getvalue())
    split, curve = ("val", metric) if by_val else ("test", "accuracy")
    plot_sweep(workdir, [r["member"] for r in rows], os.path.join(workdir, "sweep.png"), split, curve)
    return rows
