"""read_state_dict against files torch itself wrote (tests/fixtures/make_torch_resnet.py): torch.save zips and
safetensors, float16 / bfloat16 / strided / offset / 0-d tensors, and a pickled model object refused."""
import os
import shutil

import numpy as np
import pytest

from ptft_jax.errors import CheckpointError
from ptft_jax.interop.state_dict import read_state_dict, sha256

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "torch_resnet")
EXPECTED = dict(np.load(os.path.join(FIX, "sd_tiny.npz")))


@pytest.mark.parametrize("name", ["sd_tiny.pth", "sd_tiny.safetensors"])
def test_reads_what_torch_wrote(name):
    sd = read_state_dict(os.path.join(FIX, name))
    assert sorted(sd) == sorted(EXPECTED)
    for key, want in EXPECTED.items():
        got = sd[key]
        assert isinstance(got, np.ndarray), key
        assert got.dtype == want.dtype and got.shape == want.shape, key
        np.testing.assert_array_equal(got, want, err_msg=key)
    assert sd["half"].dtype == np.float16 and sd["bf16"].dtype == np.float32
    assert sd["count"].shape == () and sd["count"] == 5 and sd["bn.num_batches_tracked"].dtype == np.int64
    assert sd["strided"].shape == (5, 3) and sd["sliced"].shape == (2, 3)


@pytest.mark.parametrize("name", ["sd_tiny.pth", "sd_tiny.safetensors"])
def test_bfloat16_widened_once_jax_is_imported(name):
    """jax registers ml_dtypes' bfloat16 with NumPy, which safetensors.numpy then hands out as such."""
    import jax.numpy  # noqa: F401
    sd = read_state_dict(os.path.join(FIX, name))
    assert sd["bf16"].dtype == np.float32
    np.testing.assert_array_equal(sd["bf16"], EXPECTED["bf16"])


def test_safetensors_under_another_name(tmp_path):
    path = str(tmp_path / "model.bin")
    shutil.copy(os.path.join(FIX, "sd_tiny.safetensors"), path)
    np.testing.assert_array_equal(read_state_dict(path)["fc.weight"], EXPECTED["fc.weight"])


def test_pickled_model_object_refused():
    with pytest.raises(CheckpointError, match=r"Tiny is not part of a state_dict.*state_dict\(\)"):
        read_state_dict(os.path.join(FIX, "sd_model.pth"))


@pytest.mark.parametrize("name", ["resnet18_w4.safetensors", "resnet18_w4.pth"])
@pytest.mark.parametrize("keep", [100, 0.98])
def test_truncated_files(tmp_path, name, keep):
    data = open(os.path.join(FIX, name), "rb").read()
    path = tmp_path / name
    path.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated") as e:
        read_state_dict(str(path))
    assert str(path) in str(e.value) and str(e.value).count(". ") == 0


def test_missing_and_foreign(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(str(tmp_path / "nope.pth"))
    (tmp_path / "notes.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="neither a safetensors file nor a torch.save zip"):
        read_state_dict(str(tmp_path / "notes.pth"))


def test_sha256(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    assert sha256(str(tmp_path / "a")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path):
    """A file whose storages are shorter than its tensors say (crafted or cut) is refused before as_strided reads
    memory outside the storage."""
    import zipfile
    bad = tmp_path / "short.pth"
    with zipfile.ZipFile(os.path.join(FIX, "sd_tiny.pth")) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if "/data/" in item.filename and len(data) > 8:
                data = data[:4]
            dst.writestr(item, data)
    with pytest.raises(CheckpointError, match="reaches element"):
        read_state_dict(str(bad))
