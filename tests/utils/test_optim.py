"""Optimiser parameter groups and learning-rate schedules."""
import pytest
import torch
from torch import nn

from utils.optim import build_optimizer, build_scheduler, is_no_decay, param_groups, schedule_factor


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(4, 4)
        self.LayerNorm = nn.LayerNorm(4)
        self.itm_head = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 2))
        self.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
        self.temp = nn.Parameter(torch.tensor(0.07))


def groups_by_name(groups):
    return {name: (g["weight_decay"], g["lr"]) for g in groups for name in g["names"]}


def test_no_decay_rule_is_the_originals():
    assert is_no_decay("encoder.bias") and is_no_decay("LayerNorm.weight")
    assert is_no_decay("layers.0.blocks.0.attn.relative_position_bias_table")  # contains "bias"
    assert not is_no_decay("itm_head.1.weight")  # LayerNorm inside the head is decayed, as in the original
    assert not is_no_decay("temp")


def test_groups_decay_and_multiplier():
    model = Toy()
    init = ["itm_head.0.weight", "itm_head.0.bias", "itm_head.1.weight", "itm_head.1.bias", "itm_head.3.weight",
            "itm_head.3.bias", "temp"]
    g = groups_by_name(param_groups(model, lr=1e-4, weight_decay=0.01, lr_mult=2, init_params=init))
    assert g["encoder.weight"] == (0.01, 1e-4)
    assert g["encoder.bias"] == (0.0, 1e-4)
    assert g["LayerNorm.weight"] == (0.0, 1e-4)
    assert g["relative_position_bias_table"] == (0.0, 1e-4)
    assert g["itm_head.0.weight"] == (0.01, 2e-4)
    assert g["itm_head.1.weight"] == (0.01, 2e-4)
    assert g["itm_head.3.bias"] == (0.0, 2e-4)
    assert g["temp"] == (0.01, 2e-4)


def test_multiplier_applies_under_a_wrapper():
    class Wrapper(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.module = m

    g = groups_by_name(param_groups(Wrapper(Toy()), lr=1.0, weight_decay=0.0, lr_mult=3, init_params=["temp"]))
    assert g["temp"][1] == 3.0 and g["encoder.weight"][1] == 1.0


@pytest.mark.parametrize("step,expected", [(0, 0.0), (5, 0.5), (10, 1.0), (55, 0.5), (100, 0.0), (150, 0.0)])
def test_linear_schedule_values(step, expected):
    assert schedule_factor(step, total_steps=100, warmup_steps=10) == pytest.approx(expected)


def test_cosine_schedule_midpoint():
    assert schedule_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert schedule_factor(100, 100, 10, "cosine") == pytest.approx(0.0, abs=1e-12)


def test_scheduler_scales_each_group_and_fraction_warmup():
    model = Toy()
    opt = build_optimizer(model, {"lr": 1e-3, "weight_decay": 0.01, "lr_mult": 2}, init_params=["temp"])
    sched = build_scheduler(opt, {"sched": "linear", "num_warmup_steps": 0.1}, total_steps=100)  # warm-up 10
    for _ in range(5):
        opt.step()
        sched.step()
    lrs = sorted({g["lr"] for g in opt.param_groups})
    assert lrs == pytest.approx([0.5e-3, 1e-3])
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-8


def test_unknown_optimizer_rejected():
    with pytest.raises(ValueError, match="adamW"):
        build_optimizer(Toy(), {"opt": "sgd", "lr": 1.0})
