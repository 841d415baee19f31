"""Reading weight files: formats, wrapper prefixes."""
import pytest
import torch
from safetensors.torch import save_file

from models.weights.files import load_reference_checkpoint, strip_prefixes


def test_strip_prefixes():
    sd = {"module._orig_mod.a": 1, "_orig_mod.module.b": 2, "c.module.d": 3}
    assert strip_prefixes(sd) == {"a": 1, "b": 2, "c.module.d": 3}


def test_load_reference_checkpoint_formats(tmp_path):
    sd = {"module.temp": torch.tensor(0.07), "text_proj.weight": torch.ones(2, 3)}
    torch.save({"model": sd, "config": {"embed_dim": 2}}, tmp_path / "a.th")
    torch.save(sd, tmp_path / "b.pth")
    save_file(sd, str(tmp_path / "c.safetensors"))
    for name in ("a.th", "b.pth", "c.safetensors"):
        loaded = load_reference_checkpoint(tmp_path / name)
        assert sorted(loaded) == ["temp", "text_proj.weight"], name
    torch.save({"weights": [1, 2]}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth"):
        load_reference_checkpoint(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="nothere.th"):
        load_reference_checkpoint(tmp_path / "nothere.th")
