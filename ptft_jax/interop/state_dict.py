"""PyTorch state_dicts as NumPy arrays, without torch: `.safetensors` through `safetensors.numpy`, and the zip
pickles `torch.save` writes (`.bin`, `.pth`, `.pt`) through a restricted unpickler.

Why our own reader for the pickles: the only well-kept one is torch itself (gigabytes, and `torch.load` of an
untrusted file can run code unless weights_only). The unpickler here resolves only the handful of globals a
state_dict of tensors uses (tensor rebuilds, storages, OrderedDict); any other global is refused, so a file can
never run code, and tensors are read straight from the archive's storage records into NumPy.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import pickle
import zipfile

import numpy as np

from ptft_jax.errors import CheckpointError

_STORAGE_DTYPES = {"DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
                   "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
                   "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
                   "BoolStorage": np.bool_}
_TORCH_DTYPES = {"float64": np.float64, "float32": np.float32, "float16": np.float16, "bfloat16": "bfloat16",
                 "int64": np.int64, "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8,
                 "bool": np.bool_}


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """{key: array} of a state_dict file (.safetensors, or a torch.save zip: .bin / .pth / .pt); bfloat16 tensors
    come back as float32. A damaged or foreign file is a CheckpointError naming it."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} does not exist; point the init_from path at the weights file.")
    if path.endswith(".safetensors") or _looks_like_safetensors(path):
        return _read_safetensors(path)
    if zipfile.is_zipfile(path):
        return _read_torch_zip(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"PK\x03\x04":  # a zip's first record, but no directory at its end: cut short
        raise CheckpointError(f"{path} is a truncated zip archive (its end is missing); download or copy it again.")
    raise CheckpointError(f"{path} is neither a safetensors file nor a torch.save zip archive (torch >= 1.6), or "
                          f"it is truncated; re-save it with torch.save(model.state_dict(), path) or as .safetensors.")


def _looks_like_safetensors(path: str) -> bool:
    """A safetensors file under another name (`model.bin`): an 8-byte header length, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 27)


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open
    try:
        out, header = {}, None
        with safe_open(path, framework="numpy") as f:
            for key in f.keys():
                try:
                    out[key] = f.get_tensor(key)
                    if out[key].dtype.name == "bfloat16":  # ml_dtypes' (once jax is imported): widened too
                        out[key] = out[key].astype(np.float32)
                except TypeError:  # bfloat16, which NumPy lacks: the raw bytes, widened to float32
                    header = header or _safetensors_header(path)
                    out[key] = _bf16(path, header, key)
        return out
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0][:200]}); it may "
                              f"be truncated: download it again.") from None


def _safetensors_header(path: str):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return 8 + n, json.loads(f.read(n))


def _bf16(path: str, header, key) -> np.ndarray:
    start, meta = header
    begin, end = meta[key]["data_offsets"]
    with open(path, "rb") as f:
        f.seek(start + begin)
        raw = np.frombuffer(f.read(end - begin), np.uint16)
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(meta[key]["shape"])


class _Storage:
    def __init__(self, dtype, key):
        self.dtype, self.key = dtype, key


def _tensor(storage, offset, size, stride, *rest):
    return ("tensor", storage, int(offset), tuple(size), tuple(stride))


def _parameter(data, *rest):
    return data


class _Unpickler(pickle.Unpickler):
    ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
               ("torch._utils", "_rebuild_tensor_v2"): _tensor, ("torch._utils", "_rebuild_tensor"): _tensor,
               ("torch._utils", "_rebuild_parameter"): _parameter,
               ("torch._tensor", "_rebuild_from_type_v2"): lambda fn, cls, args, state: fn(*args)}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "torch" and name in _TORCH_DTYPES:
            return _TORCH_DTYPES[name]
        if module == "torch.storage" and name == "UntypedStorage":
            return np.uint8
        if module == "torch._tensor" and name == "Tensor" or module == "torch.nn.parameter" and name == "Parameter":
            return object
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a state_dict of tensors")

    def persistent_load(self, pid):
        kind, dtype, key, _location, _numel = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        return _Storage(dtype, str(key))


def _read_torch_zip(path: str) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if pkl is None:
                raise CheckpointError(f"{path} is a zip archive but not one torch.save wrote (no data.pkl).")
            prefix = pkl[: -len("data.pkl")]
            with z.open(pkl) as f:
                tree = _Unpickler(f).load()
            out = {}
            for key, value in _flat(tree):
                if isinstance(value, tuple) and value and value[0] == "tensor":
                    out[key] = _array(z, prefix, *value[1:])
            return out
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path} cannot be read as a state_dict of tensors ({e}); save the model's "
                              f"state_dict() (not the model object), or convert it to .safetensors.") from None


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flat(v, f"{prefix}{k}" if not prefix else f"{prefix}.{k}")
    else:
        yield prefix, tree


def _array(z, prefix, storage, offset, size, stride):
    dtype = storage.dtype
    raw = z.read(f"{prefix}data/{storage.key}")
    if dtype == "bfloat16":
        flat = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        flat = np.frombuffer(raw, dtype)
    itemsize = flat.dtype.itemsize
    # Checked before as_strided, which reads wherever it is told: a crafted file could point past its storage.
    if any(n < 0 for n in size) or any(s < 0 for s in stride) or len(size) != len(stride) or offset < 0:
        raise ValueError(f"tensor {storage.key} has a negative or mismatched size / stride / offset")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= len(flat):
        raise ValueError(f"tensor {storage.key} reaches element {last} of a storage of {len(flat)}")
    if not size:
        return np.array(flat[offset])  # a 0-d array, not a NumPy scalar
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=[s * itemsize for s in stride])
    return np.array(view)
