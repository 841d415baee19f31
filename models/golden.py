"""The golden fixture: the reference model's weights, inputs and outputs at tiny size, recorded by running the
authors' code (docs/model.md#golden-fixture). It is development-only material, not shipped: the folder is passed
in by the parity check (tools/check_parity.py) and the benchmarks (bench/), which both build our model from it here.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from models.factory import create_model

GOLDEN_FILES = ("tiny_state.pt", "tiny_inputs.pt", "tiny_losses.json", "tiny_outputs.pt", "tiny_grads.pt")


def check_golden_folder(golden: Path) -> None:
    """Raise FileNotFoundError naming every golden file the folder lacks."""
    missing = [name for name in GOLDEN_FILES if not (golden / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{golden}: missing golden file(s) {missing}")


def read_golden_file(path: Path):
    """A golden file's content: json as Python objects, ``.pt`` files with ``weights_only=True``."""
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return torch.load(path, map_location="cpu", weights_only=True)


def find_config(golden: Path) -> Path:
    """The single ``*.yaml`` model config of a golden folder."""
    found = sorted(golden.glob("*.yaml"))
    if len(found) != 1:
        raise FileNotFoundError(f"{golden}: expected exactly one *.yaml model config, found {[p.name for p in found]}")
    return found[0]


def build_golden_model(golden: Path, attn_implementation: str = "sdpa", name: str = "cclm_pretrain"):
    """Our model ``name`` from the folder's config, in eval mode, with the reference weights (``tiny_state.pt``)
    loaded through our checkpoint conversion; an error if any key of the model stays unloaded or is unexpected."""
    from ruamel.yaml import YAML

    config_path = find_config(golden)
    config = YAML(typ="safe").load(config_path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a mapping at the top level")
    config.update(load_text_params=False, load_vision_params=False, attn_implementation=attn_implementation)
    model = create_model(name, config, root=golden)
    report = model.load_pretrained(golden / "tiny_state.pt")
    if report.missing or report.unexpected:
        raise RuntimeError(f"tiny_state.pt did not load cleanly: missing {report.missing}, "
                           f"unexpected {report.unexpected}")
    return model.eval()


def golden_inputs(golden: Path) -> dict[str, dict]:
    """The forward keyword arguments of each recorded batch (``tiny_inputs.pt``: batch name -> kwargs)."""
    return read_golden_file(golden / "tiny_inputs.pt")
