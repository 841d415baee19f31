"""Loading a state dict with every missing and unexpected key reported."""
import logging

import pytest
import torch
from torch import nn

from models.weights.loading import load_state_dict_reporting


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(4, 2)
        self.out = nn.Linear(2, 4, bias=False)
        self.out.weight = self.emb.weight
        self.extra = nn.Linear(2, 2)


def test_load_state_dict_reporting_names_keys(caplog):
    model = _Tied()
    sd = {"emb.weight": torch.ones(4, 2), "extra.weight": torch.ones(2, 2), "stray.weight": torch.ones(1)}
    with caplog.at_level(logging.WARNING):
        report = load_state_dict_reporting(model, sd, what="toy")
    assert report.missing == ["extra.bias"]  # out.weight is tied to the loaded emb.weight
    assert report.unexpected == ["stray.weight"]
    assert "extra.bias" in caplog.text and "stray.weight" in caplog.text
    assert torch.equal(model.out.weight, torch.ones(4, 2))
    with pytest.raises(KeyError, match="extra.bias"):
        load_state_dict_reporting(model, sd, what="toy", strict=True)
    assert load_state_dict_reporting(model, sd, ignore_missing=("extra.",)).missing == []
    with pytest.raises(RuntimeError, match="toy"):
        load_state_dict_reporting(model, {"emb.weight": torch.ones(5, 2)}, what="toy")

