"""A Conv2d for the first layer behind a spatial transformer.

Behind a transformer the classifier's first convolution must also return the gradient with
respect to its input (it flows on into dθ). For a one-channel input and a 9×9 kernel, oneDNN's
CPU backward-data kernel is slow: on R (64×1×28×28, 48 filters) it took 30 ms a step, more than
the rest of the ST-CNN's step together. The same gradient as one matmul (Wᵀ·dY, the columns of
every output pixel) followed by col2im (`stn.ops.fold`, F.fold's values in one pass) takes 12 ms, so the CPU
path uses that, in fp32 and under bf16 autocast alike.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops


# Samples per matmul + col2im in the input gradient: each holds its columns (k² values per output pixel)
# at most ~2 MB, in L2. All at once, a TC CNN's 64 × 81 × 52² columns (44 MB) went through memory: 64 ×
# 1 × 60² bf16, 85 ms as one matmul + fold (oneDNN's bf16 backward-data: 85 ms too), 27 ms in chunks of 4.
CHUNK_BYTES = 2 << 20


def _input_grad_by_fold(grad_out: Tensor, weight: Tensor, input_shape: torch.Size, padding: tuple[int, int],
                        columns_dtype: torch.dtype | None = None) -> Tensor:
    """d input (N, C_in, H, W) in fp32 or wider: the columns Wᵀ·dY, col2im-summed in fp32. The columns come in
    `columns_dtype` (default grad_out's dtype). Under autocast grad_out is bf16, and by default each column is one
    fp32-accumulated dot product over C_out rounded to bf16; with float32 the products of the bf16
    values are summed in fp32 with no rounding before col2im, which matters where the k² columns that meet at an
    input pixel nearly cancel (a rounding of 2⁻⁹ of each column can then exceed their sum)."""
    n, c_out, h_out, w_out = grad_out.shape
    c_in, kh, kw = weight.shape[1:]
    dtype = columns_dtype or grad_out.dtype
    # no .contiguous(): a channels-last dY reshapes to (n, C_out, HW) as a view with the channels innermost, which
    # the matmul reads as a transposed operand, the same products bit for bit (R's 64 × 46 × 20² bf16 chunks:
    # 2.38 -> 2.01 ms with the fold; 64 × 39 × 52²: 15.8 -> 10.6 ms, the copy gone)
    # W rounded to dY's dtype first (bf16 under autocast, as the forward used it), then widened: exact products
    w_t = weight.to(grad_out.dtype).to(dtype).reshape(c_out, c_in * kh * kw).t()
    per_sample = c_in * kh * kw * h_out * w_out * w_t.element_size()
    chunk = max(1, CHUNK_BYTES // max(per_sample, 1))
    parts = [ops.fold(torch.matmul(w_t, g.to(dtype).reshape(len(g), c_out, h_out * w_out)), input_shape[2:], (kh, kw),
                      padding) for g in grad_out.split(chunk)]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


class _Conv2dFoldBackward(torch.autograd.Function):
    """F.conv2d whose input gradient is `_input_grad_by_fold` (its columns in `columns_dtype`). Under CPU autocast the
    convolution runs in the autocast dtype (bf16) as F.conv2d would, and the gradients return in the inputs' own
    dtypes."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int],
                columns_dtype: torch.dtype | None = None) -> Tensor:
        ctx.dtypes = (x.dtype, weight.dtype, bias.dtype if bias is not None else None)
        if torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias, ctx.columns_dtype = padding, bias is not None, columns_dtype
        with torch.autocast("cpu", enabled=False):
            return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        grad_out = grad_out.to(x.dtype)
        grad_x = _input_grad_by_fold(grad_out, weight, x.shape, ctx.padding, ctx.columns_dtype).to(x_dtype) if need_x else None
        grad_w = grad_b = None
        if need_w or (need_b and ctx.has_bias):
            # in the layout the output came in (channels-last in training): oneDNN's bf16 weight gradient
            # took 7.8 ms channels-first against 1.5 ms channels-last (R, 64 × 1 × 30², 38 filters)
            layout = torch.channels_last if grad_out.is_contiguous(memory_format=torch.channels_last) \
                else torch.contiguous_format
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_out, x.contiguous(memory_format=layout), weight.contiguous(memory_format=layout),
                [weight.shape[0]] if ctx.has_bias else None, [1, 1], list(ctx.padding), [1, 1], False, [0, 0], 1,
                [False, need_w, need_b and ctx.has_bias])
            grad_w = grad_w.to(w_dtype) if grad_w is not None else None
            grad_b = grad_b.to(b_dtype) if grad_b is not None else None
        return grad_x, grad_w, grad_b, None, None


class InputGradConv2d(nn.Conv2d):
    """nn.Conv2d (stride 1, no dilation or groups) whose CPU input gradient is a matmul + col2im.

    Same parameters and state_dict as nn.Conv2d; on CUDA, or when no input gradient is needed, it is plain
    F.conv2d. Under CPU autocast (bf16 training) it convolves in bf16 like F.conv2d; oneDNN's bf16
    backward-data kernel for one input channel is as slow as its fp32 one (R's 64 × 1 × 28², 48 filters:
    17 ms against 5 here, on an AMD EPYC). `columns_dtype` (an attribute, not in the state_dict; None: the
    gradient's dtype) is the dtype of the matmul's columns (`_input_grad_by_fold`): Table 5's e() sets float32
    (docs/CHOICES.md, bf16 section).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        self.columns_dtype: torch.dtype | None = None

    def folds(self, x: Tensor) -> bool:
        """Whether a convolution of `x` takes the matmul + col2im input gradient."""
        return x.device.type == "cpu" and x.requires_grad

    def forward(self, x: Tensor) -> Tensor:
        if not self.folds(x):
            return super().forward(x)
        return _Conv2dFoldBackward.apply(x, self.weight, self.bias, self.padding, self.columns_dtype)


def conv_valid(layer: nn.Conv2d, x: Tensor) -> Tensor:
    """`layer`'s convolution of `x` without its padding (a "valid" convolution), through the same path as its
    forward (the fold backward for an InputGradConv2d on the CPU)."""
    if isinstance(layer, InputGradConv2d) and layer.folds(x):
        return _Conv2dFoldBackward.apply(x, layer.weight, layer.bias, (0, 0), layer.columns_dtype)
    return F.conv2d(x, layer.weight, layer.bias)


class ReLUMaxPool2d(nn.MaxPool2d):
    """ReLU, then nn.MaxPool2d(2), as one op (`stn.ops.relu_max_pool2d`: on the CPU one pass each way, the same
    values and gradients as the two layers). Models use it through `relu_max_pool()`."""

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: Tensor) -> Tensor:
        return ops.relu_max_pool2d(x)


def relu_max_pool() -> list[nn.Module]:
    """The layers that stand where `nn.ReLU(inplace=True), nn.MaxPool2d(2)` stood: an nn.Identity keeps the
    later layers' indices, and so the state_dict keys of checkpoints written before the fusion."""
    return [nn.Identity(), ReLUMaxPool2d()]
