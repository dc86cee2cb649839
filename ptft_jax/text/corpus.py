"""An offline English corpus on every machine: the docstrings of the installed Python standard library.

`stdlib_docstrings()` parses (with `ast`, importing nothing) the top-level modules and packages under
sysconfig's stdlib directory, in sorted order, and returns (text, family) pairs: the paragraphs of every module,
class and function docstring (split at blank lines, whitespace collapsed, a paragraph of at most `min_chars`
characters joined to the next, duplicates dropped), family being the top-level module or package name.
Test suites, IDLE, tkinter, codec tables, site-packages and files that fail to parse are skipped.

`pydocs_classification()` is the offline text-classification demo: classify a docstring by its family (email,
asyncio, xml, ...), with a fixed seeded stratified split, as a `TextDataset`.
"""
from __future__ import annotations

import ast
import functools
import os
import sysconfig
import warnings

import numpy as np

from ptft_jax.dataset import TextDataset, stratified_split
from ptft_jax.errors import DataError

FAMILIES = ("email", "asyncio", "xml", "http", "unittest", "logging", "json", "multiprocessing")
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__", "lib2to3", "turtledemo",
              "tkinter", "ensurepip", "venv", "config", "lib-dynload",
              "encodings", "pydoc_data"}  # codec tables and a help-text dump: large to parse, no docstring prose


def _files(root: str):
    """(family, path) for every .py file of the top-level stdlib modules and packages, in sorted order."""
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.endswith(".py") and os.path.isfile(path) and not name.startswith(("_", "test")):
            yield name[:-3], path
        elif os.path.isdir(path) and name not in _SKIP_DIRS and name.isidentifier() and not name.startswith("_") \
                and os.path.isfile(os.path.join(path, "__init__.py")):
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("test"))
                for f in sorted(filenames):
                    if f.endswith(".py") and not f.startswith("test"):
                        yield name, os.path.join(dirpath, f)


_DEFS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _docstrings(source: str):
    """Module, class and function docstrings in source order; walks statement bodies only (not expressions)."""
    tree = ast.parse(source)
    out = []

    def visit(body):
        for node in body:
            if isinstance(node, _DEFS):
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    out.append(doc)
                visit(node.body)
            else:  # if / for / while / try / with blocks may hold definitions
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, ()) or ())
                for handler in getattr(node, "handlers", ()) or ():
                    visit(handler.body)

    doc = ast.get_docstring(tree, clean=True)
    if doc:
        out.append(doc)
    visit(tree.body)
    return out


def _paragraphs(doc: str, min_chars: int):
    """A docstring's paragraphs (split at blank lines, whitespace collapsed); a short one joins the next."""
    pending = ""
    for para in doc.split("\n\n"):
        text = " ".join(para.split())
        pending = f"{pending} {text}".strip() if pending else text
        if len(pending) > min_chars:
            yield pending
            pending = ""


@functools.lru_cache(maxsize=4)
def _collect(root: str, min_chars: int) -> tuple:
    out, seen = [], set()
    for family, path in _files(root):
        try:
            with open(path, encoding="utf-8") as f:
                source = f.read()
            if '"""' not in source and "'''" not in source:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # SyntaxWarnings of invalid escapes in old sources
                docs = list(_docstrings(source))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError, RecursionError):
            continue
        for doc in docs:
            for text in _paragraphs(doc, min_chars):
                if text not in seen:  # dedupe: copied docstrings recur
                    seen.add(text)
                    out.append((text, family))
    return tuple(out)


def stdlib_docstrings(min_chars: int = 80, root: str | None = None) -> list[tuple[str, str]]:
    """[(docstring, family)] in a deterministic order (sorted files, source order within a file)."""
    root = root or sysconfig.get_paths()["stdlib"]
    if not os.path.isdir(root):
        raise DataError(f"the Python standard library directory {root} does not exist.")
    return list(_collect(root, min_chars))


def pydocs_classification(families=FAMILIES, test_fraction: float = 0.2, seed: int = 0, min_chars: int = 80):
    """Docstrings of the listed families as a TextDataset (labels: index in `families`), split stratified."""
    families = tuple(families)
    index = {f: i for i, f in enumerate(families)}
    pairs = [(t, index[f]) for t, f in stdlib_docstrings(min_chars) if f in index]
    counts = np.bincount([y for _, y in pairs], minlength=len(families))
    if len(families) < 2 or counts.min() < 2:
        empty = [f for f, c in zip(families, counts) if c < 2]
        raise DataError(f"pydocs: too few docstrings for families {empty or families}; choose other families.")
    texts = np.array([t for t, _ in pairs], dtype=object)
    labels = np.array([y for _, y in pairs], np.int32)
    (xtr, ytr), (xte, yte) = stratified_split(texts, labels, test_fraction, seed)
    return TextDataset("pydocs", list(xtr), ytr.astype(np.int32), list(xte), yte.astype(np.int32), len(families),
                       families)


def corpus_texts(min_chars: int = 80, exclude_families=()) -> list[str]:
    """The docstrings as plain pretraining texts (optionally leaving out some families, e.g. a task's test set)."""
    ex = set(exclude_families)
    return [t for t, f in stdlib_docstrings(min_chars) if f not in ex]
