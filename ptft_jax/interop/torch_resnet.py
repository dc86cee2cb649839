"""torchvision / timm ResNet-18/34/50/101 state_dicts in and out of ptft_jax's ResNet (models/resnet.py).

`read(path)` takes a `.safetensors` or `torch.save` file of `model.state_dict()` (torch is never imported),
detects the depth from the keys (`layerI.J.conv3.weight` -> Bottleneck; blocks counted per layer), the width from
`conv1.weight` and the classes from `fc.weight`, checks every shape against that layout, and maps the tensors:
conv OIHW -> HWIO, Linear [out, in] -> [in, out], BatchNorm weight/bias -> params scale/bias and
running_mean/var -> batch_stats mean/var, `downsample.0/1` -> `proj_conv`/`proj_bn`; `num_batches_tracked` is
dropped. `write(path, variables, model)` is the inverse, to a `.safetensors` file that torchvision's
`resnetNN(num_classes=...)` loads with `load_state_dict(strict=True)` (its keys exactly, counters included).

The published weights expect inputs scaled to [0, 1] and normalised with IMAGENET_MEAN / IMAGENET_STD (RGB).
"""
from __future__ import annotations

import re

import numpy as np

from ptft_jax.errors import CheckpointError, UserError
from ptft_jax.interop.imported import Imported
from ptft_jax.interop.state_dict import read_state_dict, sha256

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (blocks per layer, bottleneck) -> registry name
LAYOUTS = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34",
           ((3, 4, 6, 3), True): "resnet50", ((3, 4, 23, 3), True): "resnet101"}
_BY_NAME = {name: layout for layout, name in LAYOUTS.items()}
_BLOCK_KEY = re.compile(r"^layer([1-9][0-9]*)\.([0-9]+)\.")
_PREFIXES = ("module.", "state_dict.", "model.")  # DataParallel, Lightning-style and {"model": sd} wrappers


def _layout(stage_sizes, bottleneck: bool, width: int, num_classes: int):
    """[(torch key, flax collection, flax path, kind, torch shape)] of the whole net, in torchvision's order.
    kind: conv | linear | vector (BatchNorm and bias vectors) | count (num_batches_tracked)."""
    rows = []

    def conv(key, path, o, i, k):
        rows.append((f"{key}.weight", "params", (*path, "kernel"), "conv", (o, i, k, k)))

    def bn(key, path, c):
        rows.append((f"{key}.weight", "params", (*path, "scale"), "vector", (c,)))
        rows.append((f"{key}.bias", "params", (*path, "bias"), "vector", (c,)))
        rows.append((f"{key}.running_mean", "batch_stats", (*path, "mean"), "vector", (c,)))
        rows.append((f"{key}.running_var", "batch_stats", (*path, "var"), "vector", (c,)))
        rows.append((f"{key}.num_batches_tracked", None, None, "count", ()))

    conv("conv1", ("stem_conv",), width, 3, 7)
    bn("bn1", ("stem_bn",), width)
    cin, n = width, 0
    for stage, size in enumerate(stage_sizes):
        f = width * 2 ** stage
        for j in range(size):
            key, blk = f"layer{stage + 1}.{j}", f"block_{n}"
            stride = 2 if stage > 0 and j == 0 else 1
            if bottleneck:
                convs = [(f, cin, 1), (f, f, 3), (4 * f, f, 1)]
            else:
                convs = [(f, cin, 3), (f, f, 3)]
            for c, (o, i, k) in enumerate(convs):
                conv(f"{key}.conv{c + 1}", (blk, f"Conv_{c}"), o, i, k)
                bn(f"{key}.bn{c + 1}", (blk, f"BatchNorm_{c}"), o)
            out = convs[-1][0]
            if stride != 1 or cin != out:
                conv(f"{key}.downsample.0", (blk, "proj_conv"), out, cin, 1)
                bn(f"{key}.downsample.1", (blk, "proj_bn"), out)
            cin, n = out, n + 1
    rows.append(("fc.weight", "params", ("head", "kernel"), "linear", (num_classes, cin)))
    rows.append(("fc.bias", "params", ("head", "bias"), "vector", (num_classes,)))
    return rows


def _few(keys, n=3):
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _strip_prefix(sd: dict, notes: list) -> dict:
    for prefix in _PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            notes.append(f"stripped the key prefix {prefix!r}")
            return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def read(path: str) -> Imported:
    """A torchvision / timm ResNet-18/34/50/101 state_dict (.safetensors, .pth, .pt, .bin) as ptft_jax variables.
    Anything else (another architecture, a damaged file, a pickled model object) is a one-sentence
    CheckpointError."""
    notes: list = []
    sd = _strip_prefix(read_state_dict(path), notes)
    if "conv1.weight" not in sd or "fc.weight" not in sd or not any(_BLOCK_KEY.match(k) for k in sd):
        missing = [k for k in ("conv1.weight", "fc.weight", "layer1.0.conv1.weight") if k not in sd]
        raise CheckpointError(f"{path} is not a torchvision/timm ResNet state_dict: it lacks {', '.join(missing)} "
                              f"(its keys include {_few(sd) or 'nothing'}).")
    counts: dict[int, set] = {}
    for key in sd:
        m = _BLOCK_KEY.match(key)
        if m:
            counts.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    stage_sizes = tuple(len(counts.get(i, ())) for i in range(1, max(counts) + 1))
    bottleneck = "layer1.0.conv3.weight" in sd
    name = LAYOUTS.get((stage_sizes, bottleneck))
    if name is None:
        raise CheckpointError(f"{path} has a ResNet layout of {stage_sizes} {'Bottleneck' if bottleneck else 'Basic'}"
                              f" blocks per layer, not one of resnet18/34/50/101 ((2,2,2,2) or (3,4,6,3) Basic, "
                              f"(3,4,6,3) or (3,4,23,3) Bottleneck).")
    conv1, fc = sd["conv1.weight"], sd["fc.weight"]
    if conv1.ndim != 4 or fc.ndim != 2:
        raise CheckpointError(f"{path} has conv1.weight of shape {conv1.shape} and fc.weight of shape {fc.shape}, "
                              f"not a ResNet's 4-d conv and 2-d Linear.")
    width, num_classes = int(conv1.shape[0]), int(fc.shape[0])
    rows = _layout(stage_sizes, bottleneck, width, num_classes)
    expected = {r[0] for r in rows}
    missing, unknown = expected - set(sd), set(sd) - expected
    missing = {k for k in missing if not k.endswith("num_batches_tracked")}  # optional: older torch lacks them
    if missing or unknown:
        parts = ([f"lacks {_few(missing)}"] if missing else []) + ([f"has unknown keys {_few(unknown)}"]
                                                                    if unknown else [])
        raise CheckpointError(f"{path} does not match torchvision's {name} layout: it {' and '.join(parts)} "
                              f"(another architecture?).")
    variables: dict = {"params": {}, "batch_stats": {}}
    dropped = 0
    for key, collection, fpath, kind, shape in rows:
        if kind == "count":
            dropped += key in sd
            continue
        t = sd[key]
        if tuple(t.shape) != shape:
            raise CheckpointError(f"{path} has {key} of shape {tuple(t.shape)} where torchvision's {name} of width "
                                  f"{width} has {shape} (a wide ResNet or ResNeXt is not supported).")
        a = np.asarray(t, np.float32)
        if kind == "conv":
            a = a.transpose(2, 3, 1, 0)
        elif kind == "linear":
            a = a.T
        node = variables[collection]
        for part in fpath[:-1]:
            node = node.setdefault(part, {})
        node[fpath[-1]] = np.ascontiguousarray(a)
    notes += [f"torchvision {name}, width {width}, {num_classes} classes, from {len(sd)} tensors",
              "conv kernels OIHW -> HWIO, fc [out, in] -> [in, out], BatchNorm running stats -> batch_stats",
              f"dropped {dropped} num_batches_tracked counters",
              f"inputs in [0, 1] normalised with mean {IMAGENET_MEAN} and std {IMAGENET_STD} (RGB)"]
    return Imported(variables=variables, model={"name": name, "width": width, "stem": "imagenet"}, source=path,
                    sha256=sha256(path), kind="resnet", num_classes=num_classes, notes=notes)


def write(path: str, variables: dict, model: dict) -> None:
    """Writes `variables` ({"params", "batch_stats"} of ptft_jax's ResNet named by `model`) as a torchvision
    state_dict in `.safetensors`: torchvision's keys exactly, num_batches_tracked as int64 0 included."""
    from safetensors.numpy import save_file
    if not str(path).endswith(".safetensors"):
        raise UserError(f"{path}: exporting .pth is not supported (it would need torch); write a .safetensors "
                        f"file, which torch reads with safetensors.torch.load_file.")
    name = model.get("name")
    if name not in _BY_NAME:
        raise UserError(f"model.name {name!r} has no torchvision layout; use one of: {', '.join(_BY_NAME)}.")
    if model.get("stem", "imagenet") != "imagenet":
        raise UserError(f"model.stem {model.get('stem')!r} has no torchvision counterpart; only the imagenet stem "
                        f"(7x7/2 conv + max-pool) exports.")
    stage_sizes, bottleneck = _BY_NAME[name]
    stage_sizes = tuple(model.get("stage_sizes", stage_sizes))
    params, stats = variables["params"], variables.get("batch_stats", {})
    width = int(model.get("width", 64))
    num_classes = int(np.shape(params["head"]["kernel"])[1])
    out = {}
    for key, collection, fpath, kind, shape in _layout(stage_sizes, bottleneck, width, num_classes):
        if kind == "count":
            out[key] = np.array(0, np.int64)
            continue
        node = params if collection == "params" else stats
        try:
            for part in fpath:
                node = node[part]
        except (KeyError, TypeError):
            raise UserError(f"variables lack {collection}/{'/'.join(fpath)} for torchvision's {key}; are they "
                            f"those of a {name} of width {width}?") from None
        a = np.asarray(node, np.float32)
        if kind == "conv":
            a = a.transpose(3, 2, 0, 1)
        elif kind == "linear":
            a = a.T
        if a.shape != shape:
            raise UserError(f"{collection}/{'/'.join(fpath)} has shape {a.shape} in torch layout where a {name} of "
                            f"width {width} has {shape}.")
        out[key] = np.ascontiguousarray(a)
    save_file(out, str(path))
