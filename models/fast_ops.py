"""Fast paths shared by the encoders and the losses.

Two CPU versions of elementwise steps of attention that ATen runs slowly at our shapes; both give the same values as
the stock op (dropout: the same distribution); bench/RESULTS.md has the figures.
- :func:`softmax_last_dim`: ATen's CPU softmax over a short bf16/fp16 row (the text's 40-50 keys, Swin's 49) takes
  up to twice as long as over float32. Here the float32 kernel reads the bf16 input and its result is rounded once to
  bf16: as accurate as the bf16 kernel (the two differ by at most one unit in the last place); the backward is ATen's
  own, which is fast in bf16.
- :func:`fast_dropout`: ATen's CPU ``bernoulli_`` is about twice as slow as drawing the mask from random bits.

And :func:`host_checkable`, which keeps input checks from stalling a GPU or breaking a compiled graph.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_REDUCED_FLOATS = (torch.bfloat16, torch.float16)


def host_checkable(tensor: torch.Tensor) -> bool:
    """Whether a value check may read ``tensor`` on the host: not when empty, on the meta device, inside
    torch.compile (reading values breaks the graph) or on CUDA, where it would stall the stream at every call (the
    gather kernels assert on out-of-range indices themselves)."""
    return bool(tensor.numel()) and tensor.device.type == "cpu" and not torch.compiler.is_compiling()


class _SoftmaxViaFloat(torch.autograd.Function):
    """Softmax over the last dim computed by the float32 kernel, returned (and saved) in the input's dtype."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = torch.softmax(x, dim=-1, dtype=torch.float32).to(x.dtype)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return torch._softmax_backward_data(grad.contiguous(), out, -1, out.dtype)


def softmax_last_dim(x: torch.Tensor) -> torch.Tensor:
    """``x.softmax(-1)``; on CPU a bf16/fp16 input with short rows goes through the (faster) float32 kernel."""
    if (x.device.type != "cpu" or x.dtype not in _REDUCED_FLOATS or not _slow_reduced_row(x.shape[-1])
            or torch.compiler.is_compiling()):
        return x.softmax(dim=-1)
    return _SoftmaxViaFloat.apply(x)


def _slow_reduced_row(length: int) -> bool:
    """Row lengths at which ATen's bf16 softmax loses to the float32 kernel plus a cast (measured: 16, 40, 48, 49,
    50; not 32, 64 or longer rows, where the bf16 kernel vectorises fully)."""
    return length < 64 and length % 32 != 0


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout. On CPU the keep mask is made from 15 random bits per element (the rate is rounded to a
    multiple of 1/32768), about twice as fast as ATen's CPU ``bernoulli_``, which made dropout ~14% of a tiny
    training step; elsewhere (and under torch.compile) ``F.dropout``."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or torch.compiler.is_compiling() or not 0.0 < p < 1.0:
        return F.dropout(x, p, training)
    threshold = round(p * 32768)
    # random_() on int64 draws 63 bits: four 16-bit lanes, the sign bit of the last always 0, so keep 15 per lane.
    bits = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_()
    keep = (bits.view(torch.int16)[:x.numel()].view(x.shape) & 0x7FFF) >= threshold
    scale = 1.0 / (1.0 - threshold / 32768)
    keep = keep.view(torch.uint8).to(x.dtype)  # the same 0/1; ATen's uint8 -> float cast is ~5x faster than bool's
    if x.dtype == torch.float32:
        return x * keep.mul_(scale)
    return x * keep * scale  # scale in float maths: 1/(1-p) is inexact in bf16


class FastDropout(nn.Dropout):
    """``nn.Dropout`` running :func:`fast_dropout` (the text encoder's layers use it in place of ``nn.Dropout``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)
