"""The golden fixture's files and our model built from them (the fixture itself is in ../shared)."""
import shutil

import pytest
import torch

from models.golden import (GOLDEN_FILES, build_golden_model, check_golden_folder, find_config, golden_inputs,
                           read_golden_file)


def test_missing_golden_files_are_named(tmp_path):
    (tmp_path / "tiny_state.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"tiny_inputs\.pt.*tiny_grads\.pt"):
        check_golden_folder(tmp_path)


def test_a_golden_folder_has_exactly_one_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"exactly one \*\.yaml.*\[\]"):
        find_config(tmp_path)
    (tmp_path / "a.yaml").write_text("{}")
    assert find_config(tmp_path) == tmp_path / "a.yaml"
    (tmp_path / "b.yaml").write_text("{}")
    with pytest.raises(FileNotFoundError, match="a.yaml"):
        find_config(tmp_path)


def test_golden_files_read_back(tmp_path):
    (tmp_path / "x.json").write_text('{"eval": {"a": 1}}')
    torch.save({"a": {"image": torch.ones(2)}}, tmp_path / "x.pt")
    assert read_golden_file(tmp_path / "x.json") == {"eval": {"a": 1}}
    assert torch.equal(read_golden_file(tmp_path / "x.pt")["a"]["image"], torch.ones(2))


def test_golden_model_loads_every_key_and_computes_the_recorded_image_features(golden_dir):
    check_golden_folder(golden_dir)
    model = build_golden_model(golden_dir)
    assert not model.training
    image = golden_inputs(golden_dir)["a"]["image"][:2]
    expected = read_golden_file(golden_dir / "tiny_outputs.pt")["a.image_feat"][:2]
    with torch.no_grad():
        feat = model.get_image_feat(model.get_vision_embeds(image)[0])
    torch.testing.assert_close(feat, expected, rtol=0, atol=1e-5)


def test_golden_model_as_a_retrieval_model(golden_dir):
    model = build_golden_model(golden_dir, name="cclm_retrieval")
    assert model.task == "retrieval" and not model.training


def test_an_incomplete_golden_state_is_an_error(golden_dir, tmp_path):
    folder = tmp_path / "golden"
    shutil.copytree(golden_dir, folder)
    state = torch.load(folder / "tiny_state.pt", weights_only=True)
    del state["itm_head.3.bias"]
    torch.save(state, folder / "tiny_state.pt")
    with pytest.raises(RuntimeError, match=r"did not load cleanly: missing \['itm_head\.3\.bias'\]"):
        build_golden_model(folder)
    assert set(GOLDEN_FILES) <= {p.name for p in folder.iterdir()}
