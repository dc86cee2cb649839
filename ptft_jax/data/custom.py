"""The user's own images, no TFDS: `npz:PATH` and `folder:PATH[@HxW]` (text files: ptft_jax/text/sources.py).

npz:PATH     arrays `x` (images) and `y` (labels), optionally `x_test` and `y_test`; without them the examples are
             split (stratified) by data.test_fraction and data.split_seed. `x` may be uint8 (or any integers in
             0..255) or float in [0, 1] (stored as round(x * 255)); shaped [N,H,W,C], [N,H,W] (one channel) or
             [N,D] (features, stored as [N,1,D,1] images, which the MLP flattens back to D inputs).
folder:PATH  one subfolder per class (sorted names -> labels 0..k-1) holding PNG/JPEG/BMP/GIF/WebP files (only
             the files directly inside it); or `train/` and `test/` subfolders, each holding such class subfolders,
             used as the splits. Images become RGB ("L" when every image is grayscale) and are resized to the most
             common size in the folder, or to HxW given as `folder:PATH@HxW` (e.g. folder:/data/pets@32x32).
Labels must be integers 0..k-1 with at least one example of each (an empty class is an error unless
data.classes leaves it out). Every problem raises a `DataError` naming the file.
"""
from __future__ import annotations

import collections
import os
import re
import zipfile

import numpy as np

from ptft_jax.dataset import Dataset, Split, check_file, check_labels, split_or_refuse
from ptft_jax.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16")


def load_images(source: str, cfg) -> Dataset:
    """`npz:PATH` or `folder:PATH[@HxW]` as a `Dataset` of uint8 [N,H,W,C] images and int32 labels."""
    kind, _, path = source.partition(":")
    return load_npz(path, cfg) if kind == "npz" else load_folder(path, cfg)


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
    path = check_file(path)
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
        (xtr, ytr), (xte, yte) = split_or_refuse(path, x, y, cfg.test_fraction, cfg.split_seed)
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
    path = check_file(path, folder=True)
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
        (xtr, ytr), (xte, yte) = split_or_refuse(path, x, y, cfg.test_fraction, cfg.split_seed)
    return _dataset(os.path.basename(os.path.normpath(path)), xtr, ytr, xte, yte, len(names), tuple(names))


def read_images(path: str, image_shape) -> np.ndarray:
    """uint8 images [N,H,W,C] from an .npz (array `x`), a .npy, an image file, or a folder of images, image files
    converted and resized to `image_shape`."""
    from PIL import Image
    if not os.path.exists(path):
        raise DataError(f"Input {path} does not exist; pass an .npz/.npy of images, an image file or a folder.")
    h, w, c = image_shape

    def load_image(p):
        try:
            with Image.open(p) as im:
                im = im.convert("L" if c == 1 else "RGB").resize((w, h))
                return np.asarray(im, np.uint8).reshape(h, w, c)
        except OSError as e:
            raise DataError(f"Input image {p} cannot be read ({e}); pass a PNG or JPEG file.") from None

    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if not f.startswith("."))
        if not files:
            raise DataError(f"Input folder {path} holds no images.")
        return np.stack([load_image(os.path.join(path, f)) for f in files])
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z:
                raise DataError(f"Input {path} has no array named 'x'; save the images as x=...")
            return z["x"]
    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    return load_image(path)[None]


def predict_images(inputs, shape) -> np.ndarray:
    """Images to predict as uint8 [N, *shape]: a path (`read_images`), or an array of uint8 or [0, 1] floats, one
    image or many, in the shape trained on or flattened."""
    x = read_images(inputs, shape) if isinstance(inputs, (str, os.PathLike)) else np.asarray(inputs)
    if x.ndim == len(shape):
        x = x[None]
    if np.issubdtype(x.dtype, np.floating):
        x = np.round(np.clip(x, 0, 1) * 255)
    x = x.reshape((-1, *shape)) if x[0].size == int(np.prod(shape)) else x
    if tuple(x.shape[1:]) != shape:
        raise DataError(f"Inputs have shape {tuple(x.shape[1:])} but the model was trained on {shape}.")
    return x.astype(np.uint8)
