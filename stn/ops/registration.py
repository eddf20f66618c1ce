"""Fake (meta) implementations and autograd for the compiled ops.

Every compiled op comes as a pair: stn::<name>_forward(a, b, *args) and
stn::<name>_backward(grad, a, b, *args, need_a, need_b) -> (da, db), where a gradient that
was not asked for comes back as an empty tensor. The fake implementations let torch.compile
trace the ops; `differentiable(name)` is the pair as one differentiable function.

Autograd is registered in C++ (csrc/autograd.cpp) rather than here, as torch.library.register_autograd
or a torch.autograd.Function: no Python runs for it in a step, 12.5 µs less host time per forward+backward
than the Function (itself ~15 µs faster than register_autograd); host time is what a GPU step at batch
256 waits on (its kernels take ~20 µs).
"""
from __future__ import annotations

from typing import Callable

import torch

_done = False


def _register_fakes(name: str, forward_fake) -> None:
    torch.library.register_fake(f"stn::{name}_forward")(forward_fake)

    @torch.library.register_fake(f"stn::{name}_backward")
    def _backward_fake(grad_output, a, b, *rest):
        need_a, need_b = rest[-2:]
        da = torch.empty_like(a, memory_format=torch.contiguous_format) if need_a else a.new_empty(0)
        db = torch.empty_like(b, memory_format=torch.contiguous_format) if need_b else b.new_empty(0)
        return da, db


def differentiable(name: str) -> Callable:
    """stn::<name>_forward, differentiable: csrc/autograd.cpp attaches stn::<name>_backward to it under the
    Autograd key (the extension must be loaded)."""
    return getattr(torch.ops.stn, f"{name}_forward")


class ReLUMaxPool2dFunction(torch.autograd.Function):
    """stn::relu_max_pool2d_forward with its backward: the forward's uint8 map of winners is all it keeps."""

    @staticmethod
    def forward(ctx, input):
        out, which = torch.ops.stn.relu_max_pool2d_forward(input)
        ctx.save_for_backward(which)
        ctx.input_size = list(input.shape)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        (which,) = ctx.saved_tensors
        return torch.ops.stn.relu_max_pool2d_backward(grad_output, which, ctx.input_size)


def _format_of(t) -> torch.memory_format:
    last = t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.channels_last if last else torch.contiguous_format


def _register_layer_fakes() -> None:
    @torch.library.register_fake("stn::relu_max_pool2d_forward")
    def _forward_fake(input):
        n, c, h, w = input.shape
        out = input.new_empty((n, c, h // 2, w // 2)).contiguous(memory_format=_format_of(input))
        return out, torch.empty_like(out, dtype=torch.uint8)

    @torch.library.register_fake("stn::relu_max_pool2d_backward")
    def _backward_fake(grad_output, which, input_size):
        return grad_output.new_empty(input_size).contiguous(memory_format=_format_of(which))

    @torch.library.register_fake("stn::homography_points")
    def _points_fake(matrix, basis, eps):
        n, r, p = matrix.shape[0], matrix.shape[1], basis.shape[0]
        return matrix.new_empty((n, p, r - 1)), matrix.new_empty((n, p)), matrix.new_empty((n, p), dtype=torch.bool)

    @torch.library.register_fake("stn::homography_points_backward")
    def _points_backward_fake(grad, points, inv, held):
        n, p, d = grad.shape
        return grad.new_empty((n, d + 1, p))

    @torch.library.register_fake("stn::fold")
    def _fold_fake(columns, output_size, kernel_size, padding):
        c = columns.shape[1] // (kernel_size[0] * kernel_size[1])
        return columns.new_empty((columns.shape[0], c, *output_size), dtype=torch.promote_types(columns.dtype, torch.float32))


def register() -> None:
    global _done
    if _done:
        return
    _done = True
    _register_fakes(
        "sample",
        lambda input, grid, mode, align_corners: input.new_empty((input.shape[0], input.shape[1], *grid.shape[1:-1])),
    )
    _register_fakes(
        "affine_sample",
        lambda input, theta, out_size, align_corners: input.new_empty((input.shape[0], input.shape[1], *out_size)),
    )
    _register_layer_fakes()
