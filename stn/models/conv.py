"""A Conv2d for the first layer behind a spatial transformer.

Behind a transformer the classifier's first convolution must also return the gradient with
respect to its input (it flows on into dθ). For a one-channel input and a 9×9 kernel, oneDNN's
CPU backward-data kernel is slow: on R (64×1×28×28, 48 filters) it took 30 ms a step, more than
the rest of the ST-CNN's step together. The same gradient as one matmul (Wᵀ·dY, the columns of
every output pixel) followed by col2im (F.fold) takes 12 ms, so the CPU path uses that.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _input_grad_by_fold(grad_out: Tensor, weight: Tensor, input_shape: torch.Size, padding: tuple[int, int]) -> Tensor:
    n, c_out, h_out, w_out = grad_out.shape
    c_in, kh, kw = weight.shape[1:]
    cols = torch.matmul(weight.reshape(c_out, c_in * kh * kw).t(), grad_out.reshape(n, c_out, h_out * w_out))
    return F.fold(cols, tuple(input_shape[2:]), (kh, kw), padding=padding)


class _Conv2dFoldBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_out = grad_out.contiguous()
        grad_x = _input_grad_by_fold(grad_out, weight, x.shape, ctx.padding) if need_x else None
        grad_w = grad_b = None
        if need_w or (need_b and ctx.has_bias):
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_out, x, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1], list(ctx.padding),
                [1, 1], False, [0, 0], 1, [False, need_w, need_b and ctx.has_bias])
        return grad_x, grad_w, grad_b, None


class InputGradConv2d(nn.Conv2d):
    """nn.Conv2d (stride 1, no dilation or groups) whose CPU input gradient is a matmul + col2im.

    Same parameters and state_dict as nn.Conv2d; on CUDA, when no input gradient is needed, or under
    autocast (bf16 training: the gradient arrives in bf16, the matmul here is fp32's), it is plain F.conv2d.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or not x.requires_grad or torch.is_autocast_enabled("cpu"):
            return super().forward(x)
        return _Conv2dFoldBackward.apply(x, self.weight, self.bias, self.padding)


def conv_valid(layer: nn.Conv2d, x: Tensor) -> Tensor:
    """`layer`'s convolution of `x` without its padding (a "valid" convolution), through the same path as its
    forward (the fold backward for an InputGradConv2d on the CPU)."""
    if isinstance(layer, InputGradConv2d) and x.device.type == "cpu" and x.requires_grad \
            and not torch.is_autocast_enabled("cpu"):
        return _Conv2dFoldBackward.apply(x, layer.weight, layer.bias, (0, 0))
    return F.conv2d(x, layer.weight, layer.bias)
