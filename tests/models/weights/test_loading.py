"""Loading a checkpoint into a model: every missing and unexpected key reported, and a checkpoint that does not fit
the model a one-line user error naming the model it was made for."""
import logging

import pytest
import torch
from torch import nn

from models.cclm import CCLMPretrain
from models.classification import CCLMClassification
from models.nlvr import CCLMNLVR, CCLMNLVRDomain
from models.retrieval import CCLMRetrieval
from models.weights.errors import CheckpointMismatchError
from models.weights.loading import load_state_dict_reporting, missing_weights
# the tiny task models of the other model tests (root: a tiny XLM-R config folder)
from tests.models.test_finetune_models import (CLS_HEAD, TINY_VISION_96, TINY_VISION_160, VOCAB, build,  # noqa: F401
                                               root)
from utils.errors import UserError


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



# --------------------------------------------------------------------------------------------- task checkpoints
# Tiny task models (tests/models/test_finetune_models.py's configs): which checkpoints fit which model.

def _one_line_user_error(caught) -> str:
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in message, message
    return message


def test_zero_shot_retrieval_evaluation_from_a_pretraining_checkpoint(root, tmp_path):
    """Every retrieval weight is in a pre-training checkpoint: --evaluate converts it as fine-tuning would, the
    bias tables included (pre-trained at window 3, evaluated at window 5)."""
    path = tmp_path / "pretrain.pth"
    torch.save({"model": build(CCLMPretrain, root, seed=12, vision=TINY_VISION_96).state_dict()}, path)
    evaluated = build(CCLMRetrieval, root, seed=5, vision=TINY_VISION_160)
    report = evaluated.load_pretrained(path, is_eval=True)
    assert report.missing == [] and report.unexpected == [] and report.initialised == []
    trained = build(CCLMRetrieval, root, seed=6, vision=TINY_VISION_160)
    trained.load_pretrained(path)
    for key, value in trained.state_dict().items():
        assert torch.equal(evaluated.state_dict()[key], value), key


def test_evaluating_a_checkpoint_without_the_task_head_names_what_is_missing(root, tmp_path):
    path = tmp_path / "pretrain.pth"
    torch.save({"model": build(CCLMPretrain, root, seed=12).state_dict()}, path)
    with pytest.raises(CheckpointMismatchError) as caught:
        build(CCLMClassification, root).load_pretrained(path, is_eval=True)
    message = _one_line_user_error(caught)
    assert message.startswith(f"{path}: a CCLM pre-training checkpoint lacks 6 weight(s) of the classification model")
    assert "cls_head.0.bias" in message and "(and 3 more)" in message


def test_nlvr_evaluation_of_a_domain_pretraining_checkpoint_is_one_line(root, tmp_path):
    """The domain step's checkpoint (its own window) has no NLVR head: one line, not a size-mismatch dump."""
    domain = build(CCLMNLVRDomain, root, seed=8, vision=TINY_VISION_96)
    path = tmp_path / "checkpoint_latest.pth"
    torch.save({"model": domain.state_dict(), "config": {}}, path)
    with pytest.raises(CheckpointMismatchError) as caught:
        build(CCLMNLVR, root, vision=TINY_VISION_160).load_pretrained(path, is_eval=True)
    message = _one_line_user_error(caught)
    assert message.startswith(f"{path}: an NLVR domain pre-training checkpoint lacks 6 weight(s) of the nlvr model")
    # fine-tuning NLVR from it is the intended use: the head starts new
    report = build(CCLMNLVR, root, vision=TINY_VISION_160).load_pretrained(path)
    assert report.missing == [] and set(report.initialised) == CLS_HEAD


def test_a_head_of_another_shape_is_one_line(root, tmp_path):
    """An XVNLI checkpoint (3 classes) as the start of NLVR fine-tuning (2 classes)."""
    path = tmp_path / "xvnli.pth"
    torch.save({"model": build(CCLMClassification, root, seed=9).state_dict()}, path)
    with pytest.raises(CheckpointMismatchError) as caught:
        build(CCLMNLVR, root).load_pretrained(path)
    message = _one_line_user_error(caught)
    assert message.startswith(f"{path}: a classification (XVNLI) checkpoint does not fit the nlvr model: "
                              "2 weight(s) have another shape: cls_head.3.weight: file (3, 128) vs model (2, 128)")


def test_a_checkpoint_of_no_cclm_model_is_one_line(root, tmp_path):
    swin = {"vision_encoder." + k: v for k, v in build(CCLMRetrieval, root).vision_encoder.state_dict().items()}
    torch.save(swin, tmp_path / "swin_only.pth")
    with pytest.raises(CheckpointMismatchError) as caught:
        build(CCLMRetrieval, root).load_pretrained(tmp_path / "swin_only.pth")
    assert "swin_only.pth: an unrecognised checkpoint that does not convert to the retrieval model: checkpoint has " \
           "no text encoder keys" in _one_line_user_error(caught)
    torch.save({"lm_head.bias": torch.zeros(VOCAB)}, tmp_path / "lm_head.pth")
    with pytest.raises(CheckpointMismatchError) as caught:
        build(CCLMPretrain, root).load_pretrained(tmp_path / "lm_head.pth")
    assert "lm_head.pth: an unrecognised checkpoint holds none of the pretrain model's weights (first keys: " \
           "lm_head.bias)" in _one_line_user_error(caught)


def test_missing_weights_counts_a_tied_weight_as_loaded():
    model = _Tied()
    assert missing_weights(model, {"emb.weight": torch.ones(4, 2)}) == ["extra.weight", "extra.bias"]
    assert missing_weights(model, {"out.weight": torch.ones(4, 2), "extra.weight": 0, "extra.bias": 0}) == []
