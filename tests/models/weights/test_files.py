"""Reading weight files: formats, the 'model' entry, wrapper prefixes, errors naming the file."""
import pytest
import torch
from safetensors.torch import save_file

from models.weights.files import read_state_dict


def test_read_state_dict_formats(tmp_path):
    sd = {"module.temp": torch.tensor(0.07), "text_proj.weight": torch.ones(2, 3)}
    torch.save({"model": sd, "config": {"embed_dim": 2}}, tmp_path / "a.th")
    torch.save(sd, tmp_path / "b.pth")
    save_file(sd, str(tmp_path / "c.safetensors"))
    for name in ("a.th", "b.pth", "c.safetensors"):
        loaded = read_state_dict(tmp_path / name)
        assert sorted(loaded) == ["temp", "text_proj.weight"], name
    torch.save({"weights": [1, 2]}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth"):
        read_state_dict(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="nothere.th"):
        read_state_dict(tmp_path / "nothere.th")
