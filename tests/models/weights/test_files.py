"""Reading weight files: formats, the 'model' entry and the saved config, wrapper prefixes, shapes without values,
and every unreadable file a user error naming it."""
import pytest
import torch
from safetensors.torch import save_file

from models.weights.errors import WeightsFileError
from models.weights.files import read_checkpoint, read_state_dict, read_tensor_shapes
from utils.errors import UserError

STATE = {"module.temp": torch.tensor(0.07), "text_proj.weight": torch.arange(6.0).view(2, 3),
         "ids": torch.arange(4), "half": torch.ones(2, dtype=torch.bfloat16)}


@pytest.fixture
def files(tmp_path):
    """The same state dict as {'model', 'config'} .th, bare .pth, legacy-format .pt and .safetensors."""
    torch.save({"model": STATE, "config": {"embed_dim": 2}}, tmp_path / "a.th")
    torch.save(STATE, tmp_path / "b.pth")
    torch.save(STATE, tmp_path / "c.pt", _use_new_zipfile_serialization=False)
    save_file(STATE, str(tmp_path / "d.safetensors"))
    return [tmp_path / name for name in ("a.th", "b.pth", "c.pt", "d.safetensors")]


def test_every_format_reads_the_same_state_dict(files):
    for path in files:
        loaded = read_state_dict(path)
        assert sorted(loaded) == ["half", "ids", "temp", "text_proj.weight"], path.name
        assert all(torch.equal(loaded[k], STATE.get(k, STATE.get("module." + k))) for k in loaded), path.name


def test_the_saved_config_comes_with_the_weights(files):
    assert read_checkpoint(files[0])[1] == {"embed_dim": 2}
    assert read_checkpoint(files[1])[1] is None and read_checkpoint(files[3])[1] is None


def test_tensor_shapes_are_read_without_values(files):
    for path in files:
        shapes = read_tensor_shapes(path)
        assert {k: (tuple(v.shape), v.dtype, v.device.type) for k, v in shapes.items()} == {
            "temp": ((), torch.float32, "meta"), "text_proj.weight": ((2, 3), torch.float32, "meta"),
            "ids": ((4,), torch.int64, "meta"), "half": ((2,), torch.bfloat16, "meta")}, path.name


def _unreadable(tmp_path):
    """name -> bytes of files that are not readable weight files."""
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.ones(100)}, str(good))
    data = good.read_bytes()
    return {
        "header_too_large.safetensors": b"\xff" * 8 + b"{}",
        "header_not_json.safetensors": (10).to_bytes(8, "little") + b"{not json}",
        "truncated.safetensors": data[:-50],
        "empty.safetensors": b"",
        "random.pth": bytes(range(256)) * 4,
        "truncated.pth": None,  # made below from a real torch file
        "text.th": b"this is not a checkpoint\n",
    }


def test_unreadable_files_are_user_errors_naming_the_file(tmp_path):
    torch.save(STATE, tmp_path / "whole.pth")
    cases = _unreadable(tmp_path)
    cases["truncated.pth"] = (tmp_path / "whole.pth").read_bytes()[:300]
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        for read in (read_state_dict, read_tensor_shapes):
            with pytest.raises(WeightsFileError, match=name.replace(".", r"\.")) as caught:
                read(path)
            assert isinstance(caught.value, UserError) and "\n" not in str(caught.value), name


def test_missing_and_wrong_content_are_user_errors(tmp_path):
    with pytest.raises(WeightsFileError, match=r"nothere\.th does not exist"):
        read_state_dict(tmp_path / "nothere.th")
    with pytest.raises(WeightsFileError, match="is not a file"):
        read_state_dict(tmp_path)
    torch.save({"weights": [1, 2]}, tmp_path / "bad.pth")
    with pytest.raises(WeightsFileError, match=r"bad\.pth.*entry 'weights' is a list"):
        read_state_dict(tmp_path / "bad.pth")
    torch.save({}, tmp_path / "empty.pth")
    with pytest.raises(WeightsFileError, match=r"empty\.pth.*an empty dict"):
        read_state_dict(tmp_path / "empty.pth")
    save_file({}, str(tmp_path / "none.safetensors"))
    with pytest.raises(WeightsFileError, match=r"none\.safetensors.*no tensor"):
        read_state_dict(tmp_path / "none.safetensors")


def test_a_pickle_with_code_is_refused(tmp_path):
    torch.save({"model": {"w": torch.ones(1)}, "hook": print}, tmp_path / "unsafe.pth")
    with pytest.raises(WeightsFileError, match=r"unsafe\.pth.*weights_only=True"):
        read_state_dict(tmp_path / "unsafe.pth")
