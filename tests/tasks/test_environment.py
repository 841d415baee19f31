"""Starting weights: --evaluate never evaluates weights that the checkpoint did not fill."""
from types import SimpleNamespace

import pytest

from utils.config import ConfigError
from tasks.environment import load_starting_weights


class FakeModel:
    task = "classification"

    def __init__(self, missing=(), initialised=()):
        self.report = SimpleNamespace(missing=list(missing), initialised=list(initialised))
        self.loaded = []

    def load_pretrained(self, path, is_eval=False):
        self.loaded.append((path, is_eval))
        return self.report


def test_evaluate_without_a_checkpoint_is_an_error():
    with pytest.raises(ConfigError, match="--evaluate needs --checkpoint"):
        load_starting_weights(FakeModel(), {"evaluate": True})


def test_evaluate_with_a_checkpoint_that_lacks_the_head_is_an_error():
    model = FakeModel(initialised=["cls_head.0.weight", "cls_head.0.bias"])
    with pytest.raises(ConfigError, match=r"x.th does not hold these weights .*cls_head.0.weight, cls_head.0.bias"):
        load_starting_weights(model, {"evaluate": True, "checkpoint": "x.th"})
    assert model.loaded == [("x.th", True)]
    with pytest.raises(ConfigError, match="itm_head.0.weight"):
        load_starting_weights(FakeModel(missing=["itm_head.0.weight"]), {"evaluate": True, "checkpoint": "x.th"})


def test_fine_tuning_may_start_a_new_head_and_warns_without_a_checkpoint(caplog):
    model = FakeModel(initialised=["cls_head.0.weight"])
    load_starting_weights(model, {"checkpoint": "cclm_4m.th"})  # a new task head on a pre-trained model: fine
    assert model.loaded == [("cclm_4m.th", False)]
    with caplog.at_level("WARNING"):
        load_starting_weights(FakeModel(), {})
    assert "no --checkpoint" in caplog.text
