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
import zlib

import numpy as np

from ptft_jax.data import augment
from ptft_jax.dataset import Dataset, Split, check_file, check_labels, split_or_refuse
from ptft_jax.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16")
CHUNK = 4096  # images checked at a time


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


def _check_dtype(x: np.ndarray, where: str):
    if x.dtype.kind not in "iuf":
        raise DataError(f"{where}: the images have dtype {x.dtype}; use uint8 0..255 (or integers in 0..255) or "
                        f"float 0..1.")


def check_pixels(x: np.ndarray, where: str):
    """Refuses pixels outside the contract (uint8 0..255, other integers in 0..255, or floats in [0, 1]; no NaN),
    in one sentence naming the range found. Reads CHUNK images at a time, so an mmap'd .npy is never read whole."""
    _check_dtype(x, where)
    if x.dtype == np.uint8 or x.size == 0:
        return
    lo, hi = None, None
    for i in range(0, len(x), CHUNK):
        part = x[i:i + CHUNK]
        if x.dtype.kind == "f" and not np.isfinite(part).all():
            raise DataError(f"{where}: the images hold NaN or infinite pixel values; replace them (np.nan_to_num) "
                            f"or drop those images.")
        lo = part.min() if lo is None else min(lo, part.min())
        hi = part.max() if hi is None else max(hi, part.max())
    if x.dtype.kind == "f" and (lo < 0 or hi > 1):
        raise DataError(f"{where}: float images must be in [0, 1] (found {lo:g}..{hi:g}); divide 0..255 values by "
                        f"255, or pass uint8 0..255.")
    if x.dtype.kind != "f" and (lo < 0 or hi > 255):
        raise DataError(f"{where}: integer images must be in 0..255 (found {lo}..{hi}); rescale them to uint8 "
                        f"0..255 or float 0..1.")


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Pixels that passed `check_pixels` as uint8 (floats in [0, 1] scaled by 255 and rounded)."""
    return np.round(x * 255).astype(np.uint8) if x.dtype.kind == "f" else x.astype(np.uint8)


def _as_images(x: np.ndarray, where: str) -> np.ndarray:
    _check_dtype(x, where)
    if x.ndim not in (2, 3, 4):
        raise DataError(f"{where}: the images have shape {x.shape}; use [N,H,W,C], [N,H,W] or [N,D].")
    x = x[:, None, :, None] if x.ndim == 2 else x[..., None] if x.ndim == 3 else x
    check_pixels(x, where)
    return to_uint8(x)


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


# --- predict: the user's images, read a batch at a time ---------------------------------------------------------

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_NPY, _ZIP = b"\x93NUMPY", (b"PK\x03\x04", b"PK\x05\x06")  # NumPy's .npy magic; a zip (.npz) file's


def predict_images(inputs, shape, size: int | None = None, crop: bool = False):
    """The images to predict as (names, count, read): `read(i, j)` gives images i..j-1 as uint8 [n, *shape].

    `inputs`: an array (uint8 0..255, integers in 0..255 or floats in [0, 1]; [N,H,W,C], one [H,W,C] image,
    [N,H,W] / [H,W] for a one-channel model, or flattened [N, H*W*C]), or the path of an .npy (memory-mapped), an
    .npz (its array `x`, which NumPy reads whole: large sets belong in an .npy), an image file or a folder of images
    (searched recursively). `names` are the files' paths
    relative to the folder (or the file's name), None for arrays. `size` (the run's data.image_size): every image
    is seen as training evaluated it, resized to size x size, after a centre crop of 87.5% of its shorter side
    when `crop` (inception_crop runs). Every problem is found here, before anything is predicted, except a file
    whose image data (not its header) is damaged, which `read` names when it reaches it."""
    h, w, c = shape
    if not isinstance(inputs, (str, os.PathLike)):
        return None, *_array_images(np.asarray(inputs), "The input array", shape, size, crop)
    path = os.fspath(inputs)
    if not os.path.exists(path):
        raise DataError(f"Input {path} does not exist; pass an .npz/.npy of images, an image file or a folder.")
    if os.path.isdir(path):
        files = _image_files(path)
        names = [os.path.relpath(f, path).replace(os.sep, "/") for f in files]
    else:
        with open(path, "rb") as f:
            head = f.read(6)
        if head == _NPY or head[:4] in _ZIP:
            return None, *_array_images(_load_array(path, head == _NPY), path, shape, size, crop)
        if path.lower().endswith((".npy", ".npz")):
            raise DataError(f"Input {path} is not an .npy or .npz file (no NumPy or zip header); save the images "
                            f"with np.save(path, images) or np.savez(path, x=images).")
        files, names = [path], [os.path.basename(path)]
    if c not in _MODES:
        raise DataError(f"The model takes {c}-channel images, which image files do not hold; pass an array or an "
                        f".npy of [N,H,W,{c}] images.")
    for f in files:  # headers only: a file that is not an image is named before anything is predicted
        _read(f, lambda im: im.size)

    def load(file):
        def view(im):
            im = im.convert(_MODES[c])
            if size:
                return _view(np.asarray(im, np.uint8).reshape(im.height, im.width, c), size, crop)
            return np.asarray(im.resize((w, h)), np.uint8).reshape(h, w, c)
        return _read(file, view)

    return names, len(files), lambda i, j: np.stack([load(f) for f in files[i:j]])


def _image_files(root: str) -> list[str]:
    """Every file under `root`, sorted by path (hidden names skipped), or a DataError when there is none."""
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files += [os.path.join(folder, f) for f in names if not f.startswith(".")]
    files.sort(key=lambda f: os.path.relpath(f, root).split(os.sep))
    if not files:
        raise DataError(f"Input folder {root} holds no images; put the images to predict in it.")
    return files


def _load_array(path: str, npy: bool) -> np.ndarray:
    """An .npy memory-mapped (read a batch at a time), or array `x` of an .npz (read whole: a zip member cannot be
    mapped); never unpickled."""
    try:
        if npy:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files:
                raise DataError(f"Input {path} has no array 'x' (it holds {', '.join(z.files) or 'nothing'}); save "
                                f"the images with np.savez(path, x=images).")
            return z["x"]
    except ValueError as e:
        if "object" not in str(e).lower():
            raise DataError(f"Input {path} is a damaged NumPy file ({e}); save the images again.") from None
        raise DataError(f"Input {path} holds Python objects (a pickled or ragged array), which are never loaded "
                        f"(unpickling can run code); save a numeric array of images of one shape.") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"Input {path} is a damaged NumPy file ({type(e).__name__}: {e}); save the images "
                        f"again.") from None


def _array_images(x: np.ndarray, where: str, shape, size, crop):
    """(count, read) of an array of images; its shape and pixel values checked first (see predict_images)."""
    h, w, c = shape
    _check_dtype(x, where)
    if x.size == 0:
        raise DataError(f"{where} holds no images; pass at least one.")
    flat = int(np.prod(shape))
    if x.ndim == 1 and x.size == flat:  # one flattened image
        x = x.reshape(1, *shape)
    elif x.ndim == 2:  # flattened images (or feature vectors), else one grayscale image
        x = x.reshape(-1, *shape) if x.shape[1] == flat else x[None, ..., None] if c == 1 else x
    elif x.ndim == 3:  # one image, else grayscale images without their channel axis
        x = x[None] if x.shape == tuple(shape) or x.shape[-1] == c else x[..., None] if c == 1 else x
    if x.ndim != 4 or x.shape[-1] != c or (not size and x.shape[1:3] != (h, w)):
        trained = f"{c}-channel images" if size else f"images of shape {tuple(shape)}"
        raise DataError(f"{where} has shape {x.shape} but the model was trained on {trained}; pass [N,H,W,C] "
                        f"(or [N,H,W] for one channel) images of that shape.")
    check_pixels(x, where)

    def read(i, j):
        part = to_uint8(np.asarray(x[i:j]))
        return np.stack([_view(image, size, crop) for image in part]) if size else part

    return len(x), read


def _view(image: np.ndarray, size: int, crop: bool) -> np.ndarray:
    """One HxWxC uint8 image as training evaluates it at data.image_size (augment.SizedRecords)."""
    return augment.resize(image, size, augment.centre_box(*image.shape[:2]) if crop else None)
