"""The CPU fast paths: same values as the stock ops (softmax within one bf16 ulp; dropout: rate, scale, gradient)."""
import pytest
import torch

from models.fast_ops import fast_dropout, host_checkable, softmax_last_dim


@pytest.mark.parametrize("shape", [(6, 4, 40, 40), (32, 1, 49, 49), (5, 3, 50), (7, 16)])
def test_softmax_last_dim_matches_the_stock_softmax_in_bf16(shape):
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 5).bfloat16().requires_grad_()
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1)).bfloat16()
    ours, stock = softmax_last_dim(x), torch.softmax(x, dim=-1)
    assert ours.dtype == torch.bfloat16
    exact = torch.softmax(x.detach().double(), dim=-1)
    # Both are float32 results rounded to bf16: within half a unit in the last place of the exact value.
    half_ulp = exact.abs() * 2.0 ** -8 + 1e-30
    assert ((ours.detach().double() - exact).abs() <= half_ulp).all()
    assert ((ours.detach().double() - stock.detach().double()).abs() <= 2 * half_ulp).all()
    (ours_grad,) = torch.autograd.grad(ours, x, grad)
    expected = ours.detach().double() * (grad.double() - (grad.double() * ours.detach().double()).sum(-1, True))
    torch.testing.assert_close(ours_grad.double(), expected, atol=2e-2, rtol=2e-2)


def test_softmax_last_dim_is_the_stock_op_where_that_is_fast():
    for x in (torch.randn(3, 40), torch.randn(3, 64).bfloat16(), torch.randn(3, 128).bfloat16()):
        assert torch.equal(softmax_last_dim(x), torch.softmax(x, dim=-1))


def test_fast_dropout_rate_scale_and_gradient():
    x = torch.ones(200_000)
    y = fast_dropout(x, 0.1)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.005
    scale = 1 / (1 - round(0.1 * 32768) / 32768)  # the rate is a multiple of 1/32768
    assert torch.allclose(y[kept], torch.full((int(kept.sum()),), scale))
    assert fast_dropout(x, 0.1, training=False) is x and fast_dropout(x, 0.0) is x
    leaf = torch.randn(1000, requires_grad=True)
    out = fast_dropout(leaf, 0.3)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(leaf.grad, (out != 0).float() * (1 / (1 - round(0.3 * 32768) / 32768)))


def test_fast_dropout_in_bf16_scales_in_float_maths():
    x = torch.ones(50_000, dtype=torch.bfloat16)
    y = fast_dropout(x, 0.1)
    kept = y[y != 0]
    assert y.dtype == torch.bfloat16 and abs(kept.numel() / x.numel() - 0.9) < 0.01
    assert torch.equal(kept, torch.full_like(kept, 1 / (1 - round(0.1 * 32768) / 32768)))


def test_host_checkable_only_for_cpu_values_outside_compilation():
    assert host_checkable(torch.tensor([1, 2]))
    assert not host_checkable(torch.tensor([], dtype=torch.long))
    assert not host_checkable(torch.empty(3, device="meta"))
    seen = []
    torch.compile(lambda t: seen.append(host_checkable(t)) or t + 1, backend="eager")(torch.tensor([1]))
    assert seen == [False]
