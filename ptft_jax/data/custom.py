"""The user's own data, no TFDS: `npz:PATH`, `folder:PATH[@HxW]` (images) and `csv:PATH`, `jsonl:PATH` (text).

npz:PATH     arrays `x` (images) and `y` (labels), optionally `x_test` and `y_test`; without them the examples are
             split (stratified) by data.test_fraction and data.split_seed. `x` may be uint8 (or any integers in
             0..255) or float in [0, 1] (stored as round(x * 255)); shaped [N,H,W,C], [N,H,W] (one channel) or
             [N,D] (features, stored as [N,1,D,1] images, which the MLP flattens back to D inputs).
folder:PATH  one subfolder per class (sorted names -> labels 0..k-1) holding PNG/JPEG/BMP/GIF/WebP files (only
             the files directly inside it); or `train/` and `test/` subfolders, each holding such class subfolders,
             used as the splits. Images become RGB ("L" when every image is grayscale) and are resized to the most
             common size in the folder, or to HxW given as `folder:PATH@HxW` (e.g. folder:/data/pets@32x32).
csv:/jsonl:  text classification rows (`load_text`): a CSV with a header row and `text` and `label` columns, or
             one JSON object per line with "text" and "label" keys; an optional `text_b` column / key makes
             sentence pairs ([CLS] text [SEP] text_b [SEP], token type 1 for the second segment). Labels are class
             indices 0..k-1 or names (sorted names -> 0..k-1).

Labels must be integers 0..k-1 with at least one example of each (an empty class is an error unless
data.classes leaves it out). Every problem raises a `DataError` naming the file.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os
import re
import zipfile

import numpy as np

from ptft_jax.data.sources import Dataset, Split, stratified_split
from ptft_jax.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16")


@dataclasses.dataclass
class TextDataset:
    name: str
    train_texts: list
    train_labels: np.ndarray  # int32 [N]
    test_texts: list
    test_labels: np.ndarray
    num_classes: int
    class_names: tuple | None = None
    train_pairs: list | None = None  # the second segments of sentence pairs, or None for single texts
    test_pairs: list | None = None


def load_images(source: str, cfg) -> Dataset:
    """`npz:PATH` or `folder:PATH[@HxW]` as a `Dataset` of uint8 [N,H,W,C] images and int32 labels."""
    kind, _, path = source.partition(":")
    return load_npz(path, cfg) if kind == "npz" else load_folder(path, cfg)


def _check_file(path: str, folder: bool = False) -> str:
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise DataError(f"{path} does not exist; check the path in data.source.")
    if folder and not os.path.isdir(path):
        raise DataError(f"{path} is not a folder; folder: needs a folder with one subfolder per class.")
    if not folder and os.path.isdir(path):
        raise DataError(f"{path} is a folder, not a file; use folder:{path} for an image folder.")
    if not folder and os.path.getsize(path) == 0:
        raise DataError(f"{path} is an empty file; write the data into it.")
    return path


def check_labels(y, where: str, num_classes: int | None = None, classes=None) -> tuple[np.ndarray, int]:
    """Labels as int32 and the number of classes (max label + 1, from the training labels when not given)."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{where}: the labels have shape {y.shape}, not [N]; store one class index per example.")
    if not np.issubdtype(y.dtype, np.integer) and not (
            np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
        raise DataError(f"{where}: the labels are not integers (dtype {y.dtype}); store class indices 0..k-1.")
    if len(y) and y.min() < 0:
        raise DataError(f"{where}: negative label {int(y.min())}; labels must be class indices 0..k-1.")
    y = y.astype(np.int64)
    if num_classes is None:
        present = np.unique(y)  # sorted, so the first i with present[i] != i is a missing class
        num_classes = int(present[-1]) + 1 if len(present) else 0
        if classes is None:
            empty = np.flatnonzero(present != np.arange(len(present)))[:1].tolist()
        else:  # data.classes keeps only some labels: only those need examples
            empty = [c for c in map(int, classes) if c not in set(present.tolist())]
        if empty:
            raise DataError(f"{where}: empty class {empty[0]} (no example has label {empty[0]}, labels go up to "
                            f"{num_classes - 1}); renumber the labels 0..k-1 without gaps.")
    elif len(y) and y.max() >= num_classes:
        raise DataError(f"{where}: label {int(y.max())} is outside the {num_classes} classes of the training "
                        f"labels; use only labels 0..{num_classes - 1}.")
    return y.astype(np.int32), num_classes


def _split(path: str, x, y, test_fraction: float, seed: int):
    counts = collections.Counter(np.asarray(y).tolist())
    if counts and min(counts.values()) < 2:
        c = min(counts, key=counts.get)
        raise DataError(f"{path}: class {c} has only 1 example, too few for a stratified train/test split; "
                        f"add examples or give a test split.")
    try:
        return stratified_split(x, y, test_fraction, seed)
    except ValueError as e:
        reason = str(e).split(". ")[0].rstrip(".")
        raise DataError(f"{path}: cannot split into train and test with data.test_fraction={test_fraction} "
                        f"({reason}); change data.test_fraction or give a test split.") from None


def _dataset(name, xtr, ytr, xte, yte, num_classes, class_names=None) -> Dataset:
    # Per-channel statistics from a histogram of the uint8 values: exact, and no float copy of the images.
    channels = xtr.shape[-1]
    flat = xtr.reshape(-1, channels)
    values = np.arange(256, dtype=np.float64)
    mean, std = np.zeros(channels), np.zeros(channels)
    for c in range(channels):
        hist = np.bincount(flat[:, c], minlength=256).astype(np.float64)
        mean[c] = hist @ values / hist.sum()
        std[c] = np.sqrt(hist @ (values - mean[c]) ** 2 / hist.sum())
    mean, std = mean / 255.0, np.maximum(std / 255.0, 1e-3)
    return Dataset(name, Split(len(ytr), {"image": xtr, "label": ytr}), Split(len(yte), {"image": xte, "label": yte}),
                   num_classes, tuple(float(m) for m in mean), tuple(float(s) for s in std), class_names)


def _as_images(x: np.ndarray, where: str) -> np.ndarray:
    if x.dtype.kind not in "uif":
        raise DataError(f"{where}: the images have dtype {x.dtype}; store uint8 0..255 or float 0..1.")
    if x.ndim not in (2, 3, 4):
        raise DataError(f"{where}: the images have shape {x.shape}; use [N,H,W,C], [N,H,W] or [N,D].")
    x = x[:, None, :, None] if x.ndim == 2 else x[..., None] if x.ndim == 3 else x
    if x.dtype.kind == "f":
        if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
            raise DataError(f"{where}: float images must be in [0, 1] (found {np.nanmin(x):g}..{np.nanmax(x):g}); "
                            f"scale them or store uint8 0..255.")
        return np.round(x * 255).astype(np.uint8)
    if x.size and (x.min() < 0 or x.max() > 255):
        raise DataError(f"{where}: integer images must be in 0..255 (found {x.min()}..{x.max()}); "
                        f"scale them or store float 0..1.")
    return x.astype(np.uint8)


def load_npz(path: str, cfg) -> Dataset:
    """An .npz with `x`, `y` and optionally `x_test`, `y_test` (see the module docstring)."""
    path = _check_file(path)
    unreadable = DataError(f"{path} is not a readable .npz file; save it with np.savez(path, x=x, y=y).")
    try:
        f = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise unreadable from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds a single array, not an .npz archive; save it with np.savez(path, x=x, y=y).")
    try:
        with f:
            a = {k: f[k] for k in ("x", "y", "x_test", "y_test") if k in f.files}
            found = ", ".join(f.files) or "nothing"
    except ValueError:  # allow_pickle=False refuses object arrays
        raise DataError(f"{path} holds object arrays (ragged shapes?), which cannot be loaded safely; "
                        f"save x and y as regular numeric arrays of one shape.") from None
    except (OSError, EOFError, zipfile.BadZipFile):
        raise unreadable from None
    missing = [k for k in ("x", "y") if k not in a]
    if not missing and ("x_test" in a) != ("y_test" in a):
        missing = ["y_test" if "x_test" in a else "x_test"]
    if missing:
        raise DataError(f"{path} has no array {missing[0]!r} (it holds {found}); save it with "
                        f"np.savez(path, x=images, y=labels[, x_test=..., y_test=...]).")
    x = _as_images(a["x"], f"{path} (x)")
    if len(x) == 0:
        raise DataError(f"{path}: x holds no examples; save some images in it.")
    y, num_classes = check_labels(a["y"], f"{path} (y)", classes=cfg.classes)
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} examples but y has {len(y)}; give one label per image.")
    if "x_test" in a:
        xte = _as_images(a["x_test"], f"{path} (x_test)")
        yte, _ = check_labels(a["y_test"], f"{path} (y_test)", num_classes)
        if len(xte) != len(yte):
            raise DataError(f"{path}: x_test has {len(xte)} examples but y_test has {len(yte)}; give one label "
                            f"per image.")
        if xte.shape[1:] != x.shape[1:]:
            raise DataError(f"{path}: x_test images are {xte.shape[1:]} but x images are {x.shape[1:]}; give "
                            f"both the same shape.")
        (xtr, ytr) = (x, y)
    else:
        (xtr, ytr), (xte, yte) = _split(path, x, y, cfg.test_fraction, cfg.split_seed)
    name = os.path.splitext(os.path.basename(path))[0]
    return _dataset(name, xtr, ytr, xte, yte, num_classes)


def _class_files(root: str, names=None) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names (sorted subfolders of root, unless given) and (file, label) of their images."""
    found = sorted(d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    if not found:
        raise DataError(f"{root} has no class subfolders; put each class's images in its own subfolder "
                        f"({root}/CLASS/IMAGE.png).")
    names = names or found
    files = []
    for d in found:
        if d not in names:
            raise DataError(f"{root}/{d} is a class outside the classes of the training folder ({', '.join(names)}); "
                            f"rename or remove it.")
        folder = os.path.join(root, d)
        images = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not images:
            raise DataError(f"{folder} is an empty class (no PNG/JPEG/BMP/GIF/WebP files); add images or remove it.")
        files += [(os.path.join(folder, f), names.index(d)) for f in images]
    return names, files


def _read(file: str, fn):
    from PIL import Image
    try:
        with Image.open(file) as im:
            return fn(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{file} is not a readable image ({str(e).rstrip('.')}); replace or delete it.") from None


def load_folder(spec: str, cfg) -> Dataset:
    """An image folder, `PATH` or `PATH@HxW` (see the module docstring)."""
    m = re.fullmatch(r"(.*)@(\d+)x(\d+)", spec)
    path, size = (m.group(1), (int(m.group(3)), int(m.group(2)))) if m else (spec, None)  # PIL sizes are (W, H)
    path = _check_file(path, folder=True)
    if size is not None and min(size) == 0:
        raise DataError(f"folder:{spec} asks for a zero image size; give a positive @HxW.")
    tr, te = os.path.join(path, "train"), os.path.join(path, "test")
    if os.path.isdir(tr) != os.path.isdir(te):
        raise DataError(f"{path} has only one of the train/ and test/ subfolders; add the other or rename it.")
    if os.path.isdir(tr):
        names, train_files = _class_files(tr)
        test_files = _class_files(te, names)[1]
    else:
        names, train_files = _class_files(path)
        test_files = []
    files = [f for f, _ in train_files + test_files]
    heads = [_read(f, lambda im: (im.mode, im.size)) for f in files]
    mode = "L" if all(h[0] in _GRAY_MODES for h in heads) else "RGB"
    size = size or collections.Counter(h[1] for h in heads).most_common(1)[0][0]
    x = np.stack([_read(f, lambda im: np.asarray(im.convert(mode).resize(size), np.uint8)) for f in files])
    x = x[..., None] if x.ndim == 3 else x
    y = np.asarray([c for _, c in train_files + test_files], np.int32)
    n = len(train_files)
    if test_files:
        (xtr, ytr), (xte, yte) = (x[:n], y[:n]), (x[n:], y[n:])
    else:
        (xtr, ytr), (xte, yte) = _split(path, x, y, cfg.test_fraction, cfg.split_seed)
    return _dataset(os.path.basename(os.path.normpath(path)), xtr, ytr, xte, yte, len(names), tuple(names))


def _read_rows(path: str, fmt: str) -> list[tuple[str, object, str | None]]:
    """(text, label, text_b or None) of every row."""
    rows = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            if fmt == "csv":
                reader = csv.DictReader(f)
                cols = reader.fieldnames or []
                if "text" not in cols or "label" not in cols:
                    raise DataError(f"{path} has no 'text' and 'label' columns in its header row (found: "
                                    f"{', '.join(cols) or 'none'}); name the columns text,label.")
                rows = [(r["text"], r["label"], reader.line_num, r.get("text_b")) for r in reader]
            else:
                for i, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path} line {i} is not valid JSON ({e.msg}); write one JSON object "
                                        f"per line.") from None
                    if not isinstance(r, dict) or "text" not in r or "label" not in r:
                        raise DataError(f"{path} line {i} is not an object with 'text' and 'label' keys; write "
                                        f'{{"text": ..., "label": ...}} on each line.')
                    rows.append((r["text"], r["label"], i, r.get("text_b")))
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; save it as UTF-8.") from None
    except csv.Error as e:
        raise DataError(f"{path} is not a readable CSV file ({e}); check its quoting.") from None
    for text, label, i, _ in rows:
        if not isinstance(text, str) or label is None or label == "" or isinstance(label, (bool, float, list, dict)):
            raise DataError(f"{path} line {i} has no text or a missing or invalid label; give a string text "
                            f"and an integer or string label.")
    if not rows:
        raise DataError(f"{path} holds no rows; add text,label examples.")
    if any(b is not None for *_, b in rows):
        for _, _, i, b in rows:
            if not isinstance(b, str):
                raise DataError(f"{path} line {i} has no text_b though other rows do; give every row a string "
                                f"text_b (sentence pairs) or none.")
    return [(t, l, b) for t, l, _, b in rows]


def load_text(path: str, test_fraction: float = 0.2, split_seed: int = 0) -> TextDataset:
    """Text classification rows from `[csv:|jsonl:]PATH` (a `.jsonl`/`.ndjson` name means JSONL, else CSV)."""
    fmt, sep, rest = path.partition(":")
    if sep and fmt in ("csv", "jsonl"):
        path = rest
    else:
        fmt = "jsonl" if path.lower().endswith((".jsonl", ".ndjson")) else "csv"
    path = _check_file(path)
    rows = _read_rows(path, fmt)
    texts = [t for t, _, _ in rows]
    pairs = [b for _, _, b in rows] if rows[0][2] is not None else None
    raw = [str(l).strip() for _, l, _ in rows]
    if all(re.fullmatch(r"-?\d+", l) for l in raw):
        labels, num_classes = check_labels(np.asarray([int(l) for l in raw]), path)
        class_names = None
    else:
        class_names = tuple(sorted(set(raw)))
        index = {c: i for i, c in enumerate(class_names)}
        labels = np.asarray([index[l] for l in raw], np.int32)
        num_classes = len(class_names)
    (tri, trl), (tei, tel) = _split(path, np.arange(len(texts)), labels, test_fraction, split_seed)
    name = os.path.splitext(os.path.basename(path))[0]
    pick = lambda seq, idx: None if seq is None else [seq[i] for i in idx]  # noqa: E731
    return TextDataset(name, pick(texts, tri), np.asarray(trl, np.int32), pick(texts, tei), np.asarray(tel, np.int32),
                       num_classes, class_names, pick(pairs, tri), pick(pairs, tei))
