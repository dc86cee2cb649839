"""torchvision ResNet state_dicts into ptft_jax's ResNet and back (interop/torch_resnet.py), against logits torch
computed (tests/fixtures/make_torch_resnet.py: narrow torchvision ResNet-18/50 layouts, width 4, 10 classes)."""
import os
import shutil

import flax
import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from ptft_jax import models
from ptft_jax.errors import CheckpointError, UserError
from ptft_jax.interop import torch_resnet
from ptft_jax.interop.state_dict import read_state_dict, sha256

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "torch_resnet")
NETS = {"resnet18_w4": "resnet18", "resnet50_w4": "resnet50"}


def one_sentence(e):
    msg = str(e.value)
    assert msg.endswith(".") and ". " not in msg and "\n" not in msg, msg
    return msg


def build(imp):
    return models.build(dict(**imp.model), imp.num_classes)


@pytest.mark.parametrize("ext", ["safetensors", "pth"])
@pytest.mark.parametrize("fixture", sorted(NETS))
def test_logits_match_torch(fixture, ext):
    path = os.path.join(FIX, f"{fixture}.{ext}")
    imp = torch_resnet.read(path)
    assert imp.model == {"name": NETS[fixture], "width": 4, "stem": "imagenet"}
    assert imp.num_classes == 10 and imp.kind == "resnet" and imp.source == path and imp.sha256 == sha256(path)
    assert any("num_batches_tracked" in n for n in imp.notes)
    ref = np.load(os.path.join(FIX, f"{fixture}_logits.npz"))
    logits = build(imp).apply(imp.variables, ref["x"].transpose(0, 2, 3, 1), train=False)
    assert logits.shape == (2, 10)
    np.testing.assert_allclose(np.asarray(logits), ref["logits"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("fixture", sorted(NETS))
def test_tree_is_the_models(fixture):
    imp = torch_resnet.read(os.path.join(FIX, f"{fixture}.safetensors"))
    shapes = jax.eval_shape(build(imp).init, jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))
    want = {k: v.shape for k, v in flax.traverse_util.flatten_dict(shapes).items()}
    got = {k: v.shape for k, v in flax.traverse_util.flatten_dict(imp.variables).items()}
    assert got == want


@pytest.mark.parametrize("fixture", sorted(NETS))
def test_write_read_round_trip(fixture, tmp_path):
    src = os.path.join(FIX, f"{fixture}.safetensors")
    imp = torch_resnet.read(src)
    out = str(tmp_path / "out.safetensors")
    torch_resnet.write(out, imp.variables, imp.model)
    written, original = read_state_dict(out), read_state_dict(src)
    assert list(written) == list(original)  # torchvision's keys, in its order
    for key, value in original.items():
        assert written[key].shape == value.shape and written[key].dtype == value.dtype, key
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(written[key], value, err_msg=key)
    again = torch_resnet.read(out)
    assert again.model == imp.model and again.num_classes == imp.num_classes
    a, b = (flax.traverse_util.flatten_dict(x.variables) for x in (imp, again))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["resnet34", "resnet101"])
def test_depth_detection_of_the_other_layouts(name, tmp_path):
    """resnet34 / resnet101: ptft_jax's own tree written out (width 2) and read back."""
    model = models.build({"name": name, "width": 2}, 3)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))
    variables = jax.tree.map(lambda s: np.random.default_rng(0).normal(size=s.shape).astype(np.float32), shapes)
    out = str(tmp_path / f"{name}.safetensors")
    torch_resnet.write(out, variables, {"name": name, "width": 2, "stem": "imagenet"})
    imp = torch_resnet.read(out)
    assert imp.model["name"] == name and imp.model["width"] == 2 and imp.num_classes == 3
    blocks, last_of_layer3 = {"resnet34": (16, "layer3.5"), "resnet101": (33, "layer3.22")}[name]
    layer3 = {k.split(".")[1] for k in read_state_dict(out) if k.startswith("layer3.")}
    assert max(int(j) for j in layer3) == int(last_of_layer3.split(".")[1])
    assert f"block_{blocks - 1}" in imp.variables["params"] and f"block_{blocks}" not in imp.variables["params"]


def _edited(tmp_path, edit):
    sd = read_state_dict(os.path.join(FIX, "resnet18_w4.safetensors"))
    edit(sd)
    path = str(tmp_path / "edited.safetensors")
    save_file(sd, path)
    return path


def test_not_a_resnet():
    with pytest.raises(CheckpointError, match="not a torchvision/timm ResNet state_dict.*conv1.weight") as e:
        torch_resnet.read(os.path.join(FIX, "sd_tiny.safetensors"))
    one_sentence(e)


def test_unknown_and_missing_keys(tmp_path):
    path = _edited(tmp_path, lambda sd: sd.update({"layer1.0.se.fc1.weight": np.zeros((2, 4), np.float32)}))
    with pytest.raises(CheckpointError, match="unknown keys layer1.0.se.fc1.weight") as e:
        torch_resnet.read(path)
    one_sentence(e)
    path = _edited(tmp_path, lambda sd: sd.pop("layer2.0.downsample.0.weight"))
    with pytest.raises(CheckpointError, match="lacks layer2.0.downsample.0.weight") as e:
        torch_resnet.read(path)
    one_sentence(e)


def test_other_block_counts(tmp_path):
    path = _edited(tmp_path, lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("layer4.1.")])
    with pytest.raises(CheckpointError, match=r"\(2, 2, 2, 1\) Basic blocks") as e:
        torch_resnet.read(path)
    one_sentence(e)


def test_wrong_shapes(tmp_path):
    path = _edited(tmp_path, lambda sd: sd.update({"layer1.0.conv2.weight": np.zeros((4, 2, 3, 3), np.float32)}))
    with pytest.raises(CheckpointError, match=r"layer1.0.conv2.weight of shape \(4, 2, 3, 3\)") as e:
        torch_resnet.read(path)
    one_sentence(e)


def test_prefix_stripped(tmp_path):
    path = _edited(tmp_path, lambda sd: [sd.update({f"module.{k}": sd.pop(k)}) for k in list(sd)])
    imp = torch_resnet.read(path)
    assert imp.model["name"] == "resnet18" and any("module." in n for n in imp.notes)


def test_truncated_safetensors(tmp_path):
    data = open(os.path.join(FIX, "resnet50_w4.safetensors"), "rb").read()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as e:
        torch_resnet.read(str(path))
    one_sentence(e)


def test_pickled_model_object(tmp_path):
    path = str(tmp_path / "model.pth")
    shutil.copy(os.path.join(FIX, "sd_model.pth"), path)
    with pytest.raises(CheckpointError, match=r"not part of a state_dict.*state_dict\(\)") as e:
        torch_resnet.read(path)
    one_sentence(e)


def test_write_refuses_pth_and_other_models(tmp_path):
    imp = torch_resnet.read(os.path.join(FIX, "resnet18_w4.safetensors"))
    with pytest.raises(UserError, match="use .safetensors|write a .safetensors") as e:
        torch_resnet.write(str(tmp_path / "out.pth"), imp.variables, imp.model)
    one_sentence(e)
    assert not (tmp_path / "out.pth").exists()
    with pytest.raises(UserError, match="cifar") as e:
        torch_resnet.write(str(tmp_path / "out.safetensors"), imp.variables, {**imp.model, "stem": "cifar"})
    one_sentence(e)
    with pytest.raises(UserError, match="resnet50 of width 4") as e:
        torch_resnet.write(str(tmp_path / "out.safetensors"), imp.variables, {**imp.model, "name": "resnet50"})
    one_sentence(e)


def test_constants():
    assert torch_resnet.IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert torch_resnet.IMAGENET_STD == (0.229, 0.224, 0.225)


def test_bn_unbiased_var_matches_torch_running_stats():
    """torch BatchNorm2d(momentum=0.1) after two training batches (bn_stats.npz) against ours (momentum 0.9)."""
    from ptft_jax.models.resnet import BatchNorm
    ref = np.load(os.path.join(FIX, "bn_stats.npz"))
    xs = ref["x"].transpose(0, 1, 3, 4, 2)  # [batches, N, C, H, W] -> [batches, N, H, W, C]
    got = {}
    for unbiased in (True, False):
        bn = BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5, unbiased_var=unbiased)
        variables = bn.init(jax.random.PRNGKey(0), xs[0])
        for x in xs:
            y, updates = bn.apply(variables, x, mutable=["batch_stats"])
            variables = {**variables, **updates}
            # normalised with the biased batch variance either way
            biased = x.var(axis=(0, 1, 2))
            np.testing.assert_allclose(y, (x - x.mean(axis=(0, 1, 2))) / np.sqrt(biased + 1e-5), atol=1e-5)
        got[unbiased] = variables["batch_stats"]
    np.testing.assert_allclose(got[True]["mean"], ref["mean"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[True]["var"], ref["var"], rtol=1e-6, atol=1e-6)
    assert np.abs(got[False]["var"] - ref["var"]).max() > 1e-3  # the default keeps flax's biased variance


def test_bn_unbiased_var_reaches_every_resnet_norm():
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    out = {}
    for unbiased in (True, False):
        model = models.build({"name": "resnet18", "width": 2, "bn_unbiased_var": unbiased}, 3)
        variables = model.init(jax.random.PRNGKey(0), x)
        out[unbiased] = model.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(out[True][0], out[False][0], atol=1e-5)  # the same forward pass
    stats_t, stats_f = (flax.traverse_util.flatten_dict(out[u][1]["batch_stats"]) for u in (True, False))
    n_stem = 2 * 16 * 16  # the stem BatchNorm sees [2, 16, 16, C] (7x7/2 conv of 32x32)
    ratio = (stats_t[("stem_bn", "var")] - 0.9) / (stats_f[("stem_bn", "var")] - 0.9)
    np.testing.assert_allclose(ratio, n_stem / (n_stem - 1), rtol=1e-4)
    n_last = 2 * 1 * 1  # the last block's BatchNorms see [2, 1, 1, C]: n / (n - 1) = 2
    last = ("block_7", "BatchNorm_1", "var")
    np.testing.assert_allclose((stats_t[last] - 0.9) / (stats_f[last] - 0.9), n_last / (n_last - 1), rtol=1e-4)
