"""Sweeps: a config file's `get_sweep()` lists override dicts; each member runs in WORKDIR/<its name>.

    def get_sweep():
        return sweep.product(sweep.axis("optim.lr", [0.01, 0.001]),
                             [{"finetune.strategy": "full"}, {"finetune.strategy": "linear_probe"}])

A member's name is made from its overrides (`optim.lr=0.001,finetune.strategy=linear_probe`) unless it has a
`_name` key. Finished members (WORKDIR/NAME/member.json) are skipped, interrupted ones resume from their checkpoint.
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
from ptft_jax.metrics import MetricsFile, plot_sweep


def axis(key: str, values) -> list[dict]:
    """One axis: [{key: v} for v in values]."""
    return [{key: v} for v in values]


def product(*axes: list[dict]) -> list[dict]:
    """Every combination of the axes' members (a grid). A part with `_name` names its share of the member."""
    out = []
    for combo in itertools.product(*axes):
        member = {k: v for d in combo for k, v in d.items() if k != "_name"}
        if any("_name" in d for d in combo):
            member["_name"] = ",".join(str(d["_name"]) if "_name" in d else member_name(d) for d in combo)
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


def _text(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ";".join(_text(v) for v in value) + "]"
    return str(value)


def member_name(overrides: dict) -> str:
    if "_name" in overrides:
        name = str(overrides["_name"])
    else:
        name = ",".join(f"{k}={_text(v)}" for k, v in overrides.items())
    name = re.sub(r"[^A-Za-z0-9._=,;+\-\[\]]", "_", name) or "base"
    if len(name) > 150:
        name = name[:130] + "-" + hashlib.sha256(name.encode()).hexdigest()[:12]
    return name


def load_members(spec: str) -> list[tuple[str, dict]]:
    """(name, overrides) for each member of the config file's get_sweep()."""
    module = import_config_module(spec.partition(":")[0])
    if not hasattr(module, "get_sweep"):
        raise ConfigError(f"Config file {spec.partition(':')[0]!r} has no get_sweep(); define one returning a list "
                          f"of override dicts (see ptft_jax/sweep.py).")
    members = module.get_sweep()
    if not isinstance(members, (list, tuple)) or not all(isinstance(m, dict) for m in members) or not members:
        raise ConfigError("get_sweep() must return a non-empty list of override dicts.")
    named = [(member_name(m), {k: v for k, v in m.items() if k != "_name"}) for m in members]
    names = [n for n, _ in named]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"Sweep members share the names {', '.join(dupes)}; give them distinct overrides or _name.")
    return named


def run(spec: str, workdir: str, overrides=(), log=print) -> list[dict]:
    """Runs every member one after another; returns the report rows."""
    members = load_members(spec)
    os.makedirs(workdir, exist_ok=True)
    for i, (name, member) in enumerate(members):
        sub = os.path.join(workdir, name)
        if os.path.exists(os.path.join(sub, "member.json")):
            log(f"sweep member {i + 1}/{len(members)} {name}: finished, skipped")
            continue
        log(f"sweep member {i + 1}/{len(members)} {name}")
        config = ptft_jax.load_config(spec, list(overrides))
        config = ptft_jax.apply_overrides(config, member)
        result = ptft_jax.train(config, sub, log=log)
        write_json(os.path.join(sub, "member.json"), {"name": name, "overrides": member, "result": result},
                   default=str)
    return report(workdir, log=log)


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


def report(workdir: str, log=print) -> list[dict]:
    """The members' final metrics (F1 too where the task has it), best test accuracy first: Markdown to `log`, CSV
    and a PNG comparing the members' test accuracy curves in the workdir."""
    rows = []
    if not os.path.isdir(workdir):
        raise ConfigError(f"{workdir} is not a sweep workdir (it does not exist); run the sweep first.")
    for name in sorted(os.listdir(workdir)):
        sub = os.path.join(workdir, name)
        member_path = os.path.join(sub, "member.json")
        if os.path.exists(member_path):
            with open(member_path) as f:
                m = json.load(f)
            rows.append({"member": name, "status": "finished", **{f"test_{k}": m["result"].get(k)
                                                                  for k in _METRICS}})
        elif os.path.exists(os.path.join(sub, "metrics.jsonl")):
            tests = [r for r in MetricsFile(os.path.join(sub, "metrics.jsonl")).read() if r["split"] == "test"]
            last = tests[-1] if tests else {}
            rows.append({"member": name, "status": "unfinished", **{f"test_{k}": last.get(k) for k in _METRICS}})
    if not rows:
        raise ConfigError(f"{workdir} holds no sweep members yet; run the sweep first.")
    rows.sort(key=lambda r: (r["status"] != "finished", -(r["test_accuracy"] or 0.0)))
    extra = [f"test_{k}" for k in ("f1", "macro_f1") if any(r.get(f"test_{k}") is not None for r in rows)]
    cols = ["member", "status", "test_accuracy", *extra, "test_loss", "test_step"]
    rows = [{c: r.get(c) for c in cols} for r in rows]
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    log("\n".join(lines))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols)
    writer.writeheader()
    writer.writerows(rows)
    write_text(os.path.join(workdir, "results.csv"), buf.getvalue())
    plot_sweep(workdir, [r["member"] for r in rows], os.path.join(workdir, "sweep.png"))
    return rows
