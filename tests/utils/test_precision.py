"""Precision resolution from the config and the original accelerator block."""
import pytest
import torch

from utils.precision import autocast_context, build_grad_scaler, resolve_precision

CPU, GPU = torch.device("cpu"), torch.device("cuda")


def test_explicit_precision_wins():
    assert resolve_precision({"precision": "bf16", "accelerator": {"FP16_OPT_LEVEL": "O0"}}, CPU) == "bf16"


def test_apex_levels_map_onto_amp(monkeypatch):
    assert resolve_precision({"accelerator": {"FP16_OPT_LEVEL": "O0"}}, GPU) == "fp32"
    assert resolve_precision({"accelerator": {"FP16_OPT_LEVEL": "O1"}}, CPU) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision({"accelerator": {"FP16_OPT_LEVEL": "O1"}}, GPU) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision({"accelerator": {"FP16_OPT_LEVEL": "O2"}}, GPU) == "fp16"


def test_bad_precision_names_the_key():
    with pytest.raises(ValueError, match="precision"):
        resolve_precision({"precision": "fp8"}, CPU)


def test_scaler_only_for_fp16():
    assert build_grad_scaler("bf16", {}, CPU) is None
    assert build_grad_scaler("fp32", {}, CPU) is None
    dynamic = build_grad_scaler("fp16", {"accelerator": {"FP16_LOSS_SCALE": "dynamic"}}, CPU)
    assert dynamic is not None
    fixed = build_grad_scaler("fp16", {"accelerator": {"FP16_LOSS_SCALE": 128}}, CPU)
    assert fixed.get_scale() == 128.0


def test_bf16_autocast_on_cpu():
    with autocast_context("bf16", CPU):
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16
    with autocast_context("fp32", CPU):
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32
