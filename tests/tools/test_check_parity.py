"""The parity command on the shared golden fixture, and its comparison helpers on constructed misses."""
import pytest
import torch

from tools.check_parity import Tally, check_grads, check_losses, check_tensors, main


def test_parity_on_the_golden_fixture(golden_dir, capsys):
    assert main([str(golden_dir)]) == 0
    out = capsys.readouterr().out
    assert "PARITY OK: losses 12/12, tensors 6/6, grads 36/36" in out
    assert "[FAIL]" not in out


@pytest.mark.slow
def test_parity_with_the_eager_kernel(golden_dir, capsys):
    assert main([str(golden_dir), "--attn", "eager"]) == 0
    losses = [line for line in capsys.readouterr().out.splitlines() if ".loss_" in line]
    assert len(losses) == 12 and all(line.startswith("[PASS]") for line in losses)


def test_loss_check_flags_a_miss_and_a_missing_loss(capsys):
    tally = Tally()
    check_losses("x", {"loss_itc": torch.tensor(1.0), "loss_itm": torch.tensor(2.0)},
                 {"loss_itc": 1.0 + 1e-4, "loss_mlm": 3.0}, tally)
    assert (tally.passed, tally.total) == (0, 3)
    assert capsys.readouterr().out.count("[FAIL]") == 3


def test_tensor_check_uses_the_absolute_tolerance(capsys):
    tally = Tally()
    ours = {"feat": torch.zeros(3), "cls": torch.zeros(2)}
    check_tensors("a", ours, {"a.feat": torch.full((3,), 5e-6), "a.cls": torch.full((2,), 2e-5),
                              "a.other": torch.zeros(1), "b.feat": torch.zeros(3)}, tally)
    assert (tally.passed, tally.total) == (1, 3)


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.temp = torch.nn.Parameter(torch.tensor(1.0))
        self.vision_encoder = torch.nn.Module()
        self.vision_encoder.window_size = 7


def test_grad_check_uses_the_relative_norm_tolerance(capsys):
    model = _Model()
    model.temp.grad = torch.tensor(1.001)
    tally = Tally()
    check_grads("a", model, {"temp": torch.tensor(1.0)}, tally)
    assert (tally.passed, tally.total) == (1, 1)
    model.temp.grad = torch.tensor(1.006)
    check_grads("a", model, {"temp": torch.tensor(1.0), "text_proj.weight": torch.ones(2)}, tally)
    assert (tally.passed, tally.total) == (1, 3)
